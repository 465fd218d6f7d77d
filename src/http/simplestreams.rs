//! The simplestreams files MAAS publishes, generated from the catalog: an index
//! (`index:1.0`) pointing at one products file (`products:1.0`, content id
//! `maas:v2:download`) that lists every complete set with its items.

use serde_json::{Map, Value, json};

use crate::catalog::{NodeKind, Tree};

/// The content id of the products file.
pub const CONTENT_ID: &str = "maas:v2:download";

/// The products file's path below the mirror root.
pub const PRODUCTS_PATH: &str = "streams/v1/maas:v2:download.json";

fn product_name(os: &str, arch: &str, subarch: &str, series: &str) -> String {
    format!("maas:boot:{os}:{arch}:{subarch}:{series}")
}

/// `streams/v1/index.json`.
pub fn index(tree: &Tree, updated: &str) -> Value {
    let mut products: Vec<String> = tree
        .sets()
        .iter()
        .map(|s| product_name(&s.os, &s.arch, &s.subarch, &s.series))
        .collect();
    products.dedup();
    json!({
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
    })
}

/// `streams/v1/maas:v2:download.json`: products by name, versions, items by file
/// name with ftype, path (relative to the mirror root), sha256 and size.
pub fn products(tree: &Tree, updated: &str) -> Value {
    let mut products = Map::new();
    for set in tree.sets() {
        let name = product_name(&set.os, &set.arch, &set.subarch, &set.series);
        let product = products.entry(name).or_insert_with(|| {
            json!({
                "os": set.os,
                "arch": set.arch,
                "subarch": set.subarch,
                "release": set.series,
                "label": set.label,
                "versions": {},
            })
        });
        let mut items = Map::new();
        for (fname, ino) in &set.files {
            let Some(node) = tree.get(*ino) else { continue };
            let NodeKind::File(f) = &node.kind else {
                continue;
            };
            items.insert(
                fname.clone(),
                json!({
                    "ftype": f.filetype,
                    "path": node.path.trim_start_matches('/'),
                    "sha256": f.sha256,
                    "size": f.size,
                }),
            );
        }
        if let Some(versions) = product.get_mut("versions").and_then(Value::as_object_mut) {
            versions.insert(set.version.clone(), json!({ "items": items }));
        }
    }
    json!({
        "content_id": CONTENT_ID,
        "datatype": "image-downloads",
        "format": "products:1.0",
        "updated": updated,
        "products": products,
    })
}
