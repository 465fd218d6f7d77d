//! The simplestreams files a MAAS 3.4 region publishes, generated from the catalog
//! with the same content and formatting: an index (`index:1.0`) pointing at one
//! products file (`products:1.0`, content id `maas:v2:download`) that lists every
//! resource with a complete set.
//!
//! A rack relies on fields beyond the path: `kflavor` (the `generic` kernel link),
//! `bootloader-type` (where bootloaders go), `subarches` (what the image
//! supports), `rolling` (the `*-rolling` link) and `label` (the link directory),
//! so every one MAAS emits is emitted here.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::catalog::{NodeKind, SetInfo, Tree};
use crate::maas::python_json_pretty;

/// The content id of the products file.
pub const CONTENT_ID: &str = "maas:v2:download";

/// The products file's path below the mirror root.
pub const PRODUCTS_PATH: &str = "streams/v1/maas:v2:download.json";

fn product_name(set: &SetInfo) -> String {
    format!(
        "maas:boot:{}:{}:{}:{}",
        set.os, set.arch, set.subarch, set.series
    )
}

/// `updated` as MAAS writes it: an RFC 2822 date with `+0000`, not `GMT`.
pub fn updated(http_date: &str) -> String {
    match http_date.strip_suffix(" GMT") {
        Some(d) => format!("{d} +0000"),
        None => http_date.to_string(),
    }
}

/// The complete sets of each product, products in the order of their resource ids.
fn by_product(tree: &Tree) -> Vec<(String, Vec<&SetInfo>)> {
    let mut products: BTreeMap<String, Vec<&SetInfo>> = BTreeMap::new();
    for set in tree.sets() {
        products.entry(product_name(set)).or_default().push(set);
    }
    let mut list: Vec<(String, Vec<&SetInfo>)> = products.into_iter().collect();
    list.sort_by_key(|(name, sets)| {
        (
            sets.iter().map(|s| s.resource.id).min().unwrap_or(0),
            name.clone(),
        )
    });
    list
}

/// `streams/v1/index.json` as MAAS formats it (sorted keys, indent 1).
pub fn index(tree: &Tree, updated: &str) -> String {
    let products: Vec<String> = by_product(tree).into_iter().map(|(n, _)| n).collect();
    let doc = json!({
        "format": "index:1.0",
        "updated": updated,
        "index": {
            CONTENT_ID: {
                "datatype": "image-downloads",
                "path": PRODUCTS_PATH,
                "updated": updated,
                "format": "products:1.0",
                "products": products,
            }
        }
    });
    python_json_pretty(&doc, 1)
}

/// `streams/v1/maas:v2:download.json` as MAAS formats it (sorted keys, indent 4).
pub fn products(tree: &Tree, updated: &str) -> String {
    python_json_pretty(&products_value(tree, updated), 4)
}

/// The products document: per product the resource's columns and `extra`, the
/// label of its newest complete set (by id), and every complete set as a version
/// whose items carry ftype, path, sha256, size and the file's `extra`.
pub fn products_value(tree: &Tree, updated: &str) -> Value {
    let mut products = Map::new();
    for (name, sets) in by_product(tree) {
        let Some(newest) = sets.iter().max_by_key(|s| s.set_id) else {
            continue;
        };
        let resource = &newest.resource;
        let mut product = Map::new();
        let mut put = |k: &str, v: Value| {
            product.insert(k.to_string(), v);
        };
        put("versions", Value::Object(Map::new()));
        put("subarch", json!(newest.subarch));
        put("label", json!(newest.label));
        put("version", json!(newest.series));
        put("arch", json!(newest.arch));
        put("release", json!(newest.series));
        put("os", json!(newest.os));
        if let Some(k) = &resource.kflavor {
            put("kflavor", json!(k));
        }
        if let Some(b) = &resource.bootloader_type {
            put("bootloader-type", json!(b));
        }
        if resource.rolling {
            put("rolling", json!(true));
        }
        for (k, v) in &resource.extra {
            product.insert(k.clone(), v.clone());
        }
        let mut versions = Map::new();
        for set in &sets {
            versions.insert(set.version.clone(), json!({ "items": items(tree, set) }));
        }
        product.insert("versions".into(), Value::Object(versions));
        products.insert(name, Value::Object(product));
    }
    json!({
        "content_id": CONTENT_ID,
        "datatype": "image-downloads",
        "format": "products:1.0",
        "updated": updated,
        "products": products,
    })
}

fn items(tree: &Tree, set: &SetInfo) -> Map<String, Value> {
    let mut items = Map::new();
    for (fname, ino) in &set.files {
        let Some(node) = tree.get(*ino) else { continue };
        let NodeKind::File(f) = &node.kind else {
            continue;
        };
        let mut item = Map::new();
        item.insert("ftype".into(), json!(f.filetype));
        item.insert("path".into(), json!(node.path.trim_start_matches('/')));
        item.insert("sha256".into(), json!(f.sha256));
        item.insert("size".into(), json!(f.size));
        for (k, v) in set.file_extra.get(fname).into_iter().flatten() {
            item.insert(k.clone(), v.clone());
        }
        items.insert(fname.clone(), Value::Object(item));
    }
    items
}
