//! pgbootfs against the tables of every MAAS version it supports (the project's
//! own fixtures under schema/), the rows MAAS writes, the stream files MAAS 3.4's
//! region serves (golden files in tests/fixtures/maas-golden), and a round trip
//! through the real `sstream-mirror`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::{Value, json};

use crate::common::http::Server;
use crate::common::store::*;
use crate::common::*;

/// The tables of one range of MAAS versions.
#[derive(Clone, Copy, Debug)]
struct Era {
    name: &'static str,
    ddl: &'static str,
    /// ALTERs applied after `ddl` (MAAS 2.0 is 1.7 plus largefile.size).
    extra_ddl: &'static str,
    /// kflavor, bootloader_type and rolling exist.
    kflavor: bool,
    /// base_image exists.
    base_image: bool,
    /// `extra` is jsonb.
    jsonb: bool,
}

const ERAS: [Era; 5] = [
    Era {
        name: "maas-1.7",
        ddl: include_str!("../schema/maas-1.7.sql"),
        extra_ddl: "",
        kflavor: false,
        base_image: false,
        jsonb: false,
    },
    Era {
        name: "maas-2.0",
        ddl: include_str!("../schema/maas-1.7.sql"),
        extra_ddl: "ALTER TABLE maasserver_largefile ADD COLUMN size bigint NOT NULL",
        kflavor: false,
        base_image: false,
        jsonb: false,
    },
    Era {
        name: "maas-2.1",
        ddl: include_str!("../schema/maas-2.1.sql"),
        extra_ddl: "",
        kflavor: true,
        base_image: false,
        jsonb: false,
    },
    Era {
        name: "maas-3.3",
        ddl: SCHEMA,
        extra_ddl: "",
        kflavor: true,
        base_image: true,
        jsonb: false,
    },
    Era {
        name: "maas-3.4",
        ddl: include_str!("../schema/maas-3.4.sql"),
        extra_ddl: "",
        kflavor: true,
        base_image: true,
        jsonb: true,
    },
];

/// A database of `era`'s tables; returns its conninfo.
fn era_db(pg: &Cluster, era: &Era) -> String {
    let db = pg.create_db(&era.name.replace(['-', '.'], "_"));
    let mut c = pg.client(&era.name.replace(['-', '.'], "_"));
    c.batch_execute(era.ddl).unwrap();
    c.batch_execute(era.extra_ddl).unwrap();
    db
}

/// One item of a hand-written stream: (product, version, item name, item attributes, bytes).
type StreamItem = (&'static str, &'static str, &'static str, Value, Vec<u8>);

/// A products:1.0 source as images.maas.io publishes one: an ubuntu product with
/// a non-generic kflavor (and a title; and a `manifest` item MAAS does not know),
/// a rolling product labelled candidate, and a UEFI bootloader product.
fn write_stream(dir: &Path, with_title: bool) -> Vec<(String, Vec<u8>)> {
    let mut jammy = json!({
        "os": "ubuntu", "arch": "amd64", "release": "jammy", "version": "22.04",
        "subarch": "hwe-22.04", "kflavor": "lowlatency", "label": "stable",
        "subarches": "generic,hwe-22.04", "krel": "jammy", "support_eol": "2027-04-21",
    });
    if with_title {
        jammy["os_title"] = json!("Ubuntu");
        jammy["release_title"] = json!("22.04 LTS");
    }
    let products = json!({
        "com.ubuntu.maas.stable:v3:boot:22.04:amd64:hwe-22.04-lowlatency": jammy,
        "com.ubuntu.maas.stable:v3:boot:24.04:amd64:ga-24.04": {
            "os": "ubuntu", "arch": "amd64", "release": "noble", "version": "24.04",
            "subarch": "ga-24.04", "kflavor": "generic", "label": "candidate",
            "subarches": "generic,ga-24.04", "rolling": true,
        },
        "com.ubuntu.maas.stable:1:grub-efi-signed:uefi:amd64": {
            "os": "grub-efi-signed", "arch": "amd64", "bootloader-type": "uefi",
            "label": "stable", "arches": "amd64",
        },
    });
    let items: Vec<StreamItem> = vec![
        (
            "com.ubuntu.maas.stable:v3:boot:22.04:amd64:hwe-22.04-lowlatency",
            "20240315",
            "boot-kernel",
            json!({"ftype": "boot-kernel", "kpackage": "linux-lowlatency-hwe-22.04",
                   "path": "jammy/amd64/20240315/hwe-22.04/lowlatency/boot-kernel"}),
            bytes(201, 70_000),
        ),
        (
            "com.ubuntu.maas.stable:v3:boot:22.04:amd64:hwe-22.04-lowlatency",
            "20240315",
            "boot-initrd",
            json!({"ftype": "boot-initrd", "kpackage": "linux-lowlatency-hwe-22.04",
                   "path": "jammy/amd64/20240315/hwe-22.04/lowlatency/boot-initrd"}),
            bytes(202, 90_000),
        ),
        (
            "com.ubuntu.maas.stable:v3:boot:22.04:amd64:hwe-22.04-lowlatency",
            "20240315",
            "manifest",
            json!({"ftype": "manifest", "path": "jammy/amd64/20240315/squashfs.manifest"}),
            b"linux-lowlatency 6.5\n".to_vec(),
        ),
        (
            "com.ubuntu.maas.stable:v3:boot:24.04:amd64:ga-24.04",
            "20240601",
            "boot-kernel",
            json!({"ftype": "boot-kernel", "kpackage": "linux-generic",
                   "path": "noble/amd64/20240601/ga-24.04/generic/boot-kernel"}),
            bytes(203, 60_000),
        ),
        (
            "com.ubuntu.maas.stable:v3:boot:24.04:amd64:ga-24.04",
            "20240601",
            "squashfs",
            json!({"ftype": "squashfs", "path": "noble/amd64/20240601/squashfs"}),
            bytes(204, 300_000),
        ),
        (
            "com.ubuntu.maas.stable:1:grub-efi-signed:uefi:amd64",
            "20210819.0",
            "grub2-signed",
            json!({"ftype": "archive.tar.xz", "src_package": "grub2-signed",
                   "src_release": "focal", "src_version": "1.187.6+2.06-2ubuntu14.4",
                   "path": "bootloaders/uefi/amd64/20210819.0/grub2-signed.tar.xz"}),
            bytes(205, 40_000),
        ),
    ];
    let mut products = products;
    let mut written = Vec::new();
    for (product, version, name, attrs, data) in items {
        let mut item = attrs;
        item["sha256"] = json!(sha256_hex(&data));
        item["size"] = json!(data.len());
        let path = item["path"].as_str().unwrap().to_string();
        fs::create_dir_all(dir.join(&path).parent().unwrap()).unwrap();
        fs::write(dir.join(&path), &data).unwrap();
        let p = products[product].as_object_mut().unwrap();
        let versions = p.entry("versions").or_insert_with(|| json!({}));
        let v = versions
            .as_object_mut()
            .unwrap()
            .entry(version)
            .or_insert_with(|| json!({"items": {}}));
        v["items"][name] = item;
        written.push((path, data));
    }
    let updated = "Fri, 27 Nov 2026 00:00:00 +0000";
    let names: Vec<String> = products.as_object().unwrap().keys().cloned().collect();
    fs::create_dir_all(dir.join("streams/v1")).unwrap();
    let doc = json!({
        "content_id": "com.ubuntu.maas:stable:v3:download", "format": "products:1.0",
        "datatype": "image-downloads", "updated": updated, "products": products,
    });
    fs::write(
        dir.join("streams/v1/com.ubuntu.maas:stable:v3:download.json"),
        doc.to_string(),
    )
    .unwrap();
    let index = json!({
        "format": "index:1.0", "updated": updated,
        "index": {"com.ubuntu.maas:stable:v3:download": {
            "datatype": "image-downloads",
            "path": "streams/v1/com.ubuntu.maas:stable:v3:download.json",
            "format": "products:1.0", "updated": updated, "products": names,
        }},
    });
    fs::write(dir.join("streams/v1/index.json"), index.to_string()).unwrap();
    written
}

/// The resource rows as `name|architecture|rtype|extra|kflavor|bootloader|rolling|base`
/// (`-` for a column the schema lacks), sorted by name and architecture.
fn resource_rows(c: &mut postgres::Client, era: &Era) -> Vec<String> {
    let opt = |has: bool, col: &str| {
        if has {
            format!("coalesce(r.{col}::text, 'NULL')")
        } else {
            "'-'".to_string()
        }
    };
    let sql = format!(
        "SELECT r.name || '|' || r.architecture || '|' || r.rtype || '|' || r.extra::text || '|' \
                || {} || '|' || {} || '|' || {} || '|' || {} \
         FROM maasserver_bootresource r ORDER BY r.name, r.architecture",
        opt(era.kflavor, "kflavor"),
        opt(era.kflavor, "bootloader_type"),
        opt(era.kflavor, "rolling"),
        opt(era.base_image, "base_image"),
    );
    c.query(&sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `extra` written by MAAS: text byte for byte on text schemas; on jsonb the
/// server's own rendering of the same object.
fn extra_text(era: &Era, python: &str) -> String {
    if era.jsonb {
        let v: Value = serde_json::from_str(python).unwrap();
        // jsonb orders keys by length, then bytes, and renders `": "` and `", "`.
        let mut keys: Vec<(&String, &Value)> = v.as_object().unwrap().iter().collect();
        keys.sort_by(|a, b| (a.0.len(), a.0).cmp(&(b.0.len(), b.0)));
        let parts: Vec<String> = keys.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        format!("{{{}}}", parts.join(", "))
    } else {
        python.to_string()
    }
}

fn expected_resources(era: &Era) -> Vec<String> {
    let cols = |kflavor: &str, bootloader: &str, rolling: &str, base: &str| {
        if era.kflavor {
            format!(
                "{kflavor}|{bootloader}|{rolling}|{}",
                if era.base_image { base } else { "-" }
            )
        } else {
            "-|-|-|-".to_string()
        }
    };
    vec![
        format!(
            "grub-efi-signed/uefi|amd64/generic|0|{}|{}",
            extra_text(era, "{}"),
            cols("NULL", "uefi", "false", "")
        ),
        format!(
            "myimage|amd64/generic|2|{}|{}",
            extra_text(era, r#"{"subarches": "generic", "title": "My Image"}"#),
            cols("NULL", "NULL", "false", "ubuntu/noble")
        ),
        format!(
            "ubuntu/jammy|amd64/hwe-22.04-lowlatency|0|{}|{}",
            extra_text(
                era,
                r#"{"subarches": "generic,hwe-22.04", "title": "Ubuntu 22.04 LTS"}"#
            ),
            cols("lowlatency", "NULL", "false", "")
        ),
        format!(
            "ubuntu/noble|amd64/ga-24.04|0|{}|{}",
            extra_text(era, r#"{"subarches": "generic,ga-24.04"}"#),
            cols("generic", "NULL", "true", "")
        ),
    ]
}

/// Set and file rows: `name|version|label|filename|filetype|extra|sha256|total_size`.
fn file_rows(c: &mut postgres::Client) -> Vec<String> {
    c.query(
        "SELECT r.name || '|' || s.version || '|' || s.label || '|' || f.filename || '|' \
                || f.filetype || '|' || f.extra::text || '|' || lf.sha256 || '|' || lf.total_size \
         FROM maasserver_bootresourcefile f \
         JOIN maasserver_largefile lf ON lf.id = f.largefile_id \
         JOIN maasserver_bootresourceset s ON s.id = f.resource_set_id \
         JOIN maasserver_bootresource r ON r.id = s.resource_id ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn expected_files(era: &Era, data: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let f = |name: &str, version: &str, label: &str, file: &str, ftype: &str, extra: &str| {
        let d = &data[file];
        format!(
            "{name}|{version}|{label}|{}|{ftype}|{}|{}|{}",
            file.rsplit('/').next().unwrap(),
            extra_text(era, extra),
            sha256_hex(d),
            d.len()
        )
    };
    let mut rows = vec![
        f(
            "grub-efi-signed/uefi",
            "20210819.0",
            "stable",
            "bootloaders/uefi/amd64/20210819.0/grub2-signed.tar.xz",
            "archive.tar.xz",
            r#"{"src_package": "grub2-signed", "src_release": "focal", "src_version": "1.187.6+2.06-2ubuntu14.4"}"#,
        ),
        f(
            "myimage",
            "20240301",
            "uploaded",
            "custom/amd64/generic/myimage/20240301/root-tgz",
            "root-tgz",
            "{}",
        ),
        f(
            "ubuntu/jammy",
            "20240315",
            "stable",
            "jammy/amd64/20240315/hwe-22.04/lowlatency/boot-initrd",
            "boot-initrd",
            r#"{"kpackage": "linux-lowlatency-hwe-22.04"}"#,
        ),
        f(
            "ubuntu/jammy",
            "20240315",
            "stable",
            "jammy/amd64/20240315/hwe-22.04/lowlatency/boot-kernel",
            "boot-kernel",
            r#"{"kpackage": "linux-lowlatency-hwe-22.04"}"#,
        ),
        f(
            "ubuntu/noble",
            "20240601",
            "candidate",
            "noble/amd64/20240601/ga-24.04/generic/boot-kernel",
            "boot-kernel",
            r#"{"kpackage": "linux-generic"}"#,
        ),
        f(
            "ubuntu/noble",
            "20240601",
            "candidate",
            "noble/amd64/20240601/squashfs",
            "squashfs",
            "{}",
        ),
    ];
    rows.sort();
    rows
}

#[test]
fn every_command_on_every_schema_writes_and_reads_rows_as_maas() {
    let fuse = fuse_or_skip("every_command_on_every_schema_writes_and_reads_rows_as_maas");
    let pg = Cluster::start();
    let mirror = SrcTree::new();
    let mut data: BTreeMap<String, Vec<u8>> =
        write_stream(mirror.path(), true).into_iter().collect();
    let upload = SrcTree::new();
    let custom = "custom/amd64/generic/myimage/20240301/root-tgz";
    let root_tgz = bytes(206, 120_000);
    upload.add(custom, &root_tgz);
    data.insert(custom.to_string(), root_tgz.clone());
    // An upload onto a resource the mirror syncs: MAAS's next sync would delete it.
    let clash = SrcTree::new();
    clash.add("ubuntu/amd64/ga-24.04/noble/20240701/squashfs", b"mine");
    for era in &ERAS {
        let db = era_db(&pg, era);
        let mut c = pg.client(&era.name.replace(['-', '.'], "_"));
        let out = pgbootfs_ok(&db, &["import", mirror.path().to_str().unwrap()]);
        assert!(out.contains("3 version(s) new"), "{}: {out}", era.name);
        let out = pgbootfs_ok(
            &db,
            &[
                "import",
                upload.path().to_str().unwrap(),
                "--title",
                "My Image",
                "--base-image",
                "ubuntu/noble",
            ],
        );
        assert!(out.contains("1 version(s) new"), "{}: {out}", era.name);
        assert_eq!(
            resource_rows(&mut c, era),
            expected_resources(era),
            "{}",
            era.name
        );
        assert_eq!(
            file_rows(&mut c),
            expected_files(era, &data),
            "{}",
            era.name
        );
        let before = counts(&mut c);
        let err = pgbootfs_fails(&db, &["import", clash.path().to_str().unwrap()]);
        assert!(
            err.contains("synced from a simplestreams source"),
            "{}: {err}",
            era.name
        );
        assert_eq!(counts(&mut c), before, "{}: nothing written", era.name);
        // A second run changes nothing.
        let out = pgbootfs_ok(&db, &["import", mirror.path().to_str().unwrap()]);
        assert!(out.contains("3 unchanged"), "{}: {out}", era.name);
        assert_eq!(resource_rows(&mut c, era), expected_resources(era));

        let ls = pgbootfs_ok(&db, &["ls"]);
        for path in [
            "grub-efi-signed/amd64/generic/uefi/20210819.0",
            "ubuntu/amd64/hwe-22.04-lowlatency/jammy/20240315",
            "ubuntu/amd64/ga-24.04/noble/20240601",
            "custom/amd64/generic/myimage/20240301",
        ] {
            assert!(ls.contains(path), "{}: {path} in\n{ls}", era.name);
        }
        pgbootfs_ok(&db, &["verify"]);

        let srv = Server::start(&db, &[]);
        let r = srv.get("/MAAS/images-stream/streams/v1/maas:v2:download.json", &[]);
        assert_eq!(r.status, 200, "{}", era.name);
        let doc: Value = serde_json::from_slice(&r.body).unwrap();
        let p = &doc["products"];
        let jammy = &p["maas:boot:ubuntu:amd64:hwe-22.04-lowlatency:jammy"];
        assert_eq!(jammy["subarches"], "generic,hwe-22.04", "{}", era.name);
        assert_eq!(jammy["title"], "Ubuntu 22.04 LTS");
        assert_eq!(
            jammy["versions"]["20240315"]["items"]["boot-kernel"]["kpackage"],
            "linux-lowlatency-hwe-22.04"
        );
        let grub = &p["maas:boot:grub-efi-signed:amd64:generic:uefi"];
        assert_eq!(
            grub["versions"]["20210819.0"]["items"]["grub2-signed.tar.xz"]["src_package"],
            "grub2-signed"
        );
        let noble = &p["maas:boot:ubuntu:amd64:ga-24.04:noble"];
        assert_eq!(noble["label"], "candidate");
        if era.kflavor {
            assert_eq!(jammy["kflavor"], "lowlatency", "{}", era.name);
            assert_eq!(grub["bootloader-type"], "uefi");
            assert_eq!(noble["rolling"], true);
            assert_eq!(noble["kflavor"], "generic");
        } else {
            // Nothing to say on tables without the columns.
            assert!(jammy.get("kflavor").is_none() && noble.get("rolling").is_none());
        }
        let kernel = &data["jammy/amd64/20240315/hwe-22.04/lowlatency/boot-kernel"];
        let r = srv.get(
            "/ubuntu/amd64/hwe-22.04-lowlatency/jammy/20240315/boot-kernel",
            &[],
        );
        assert_eq!((r.status, &r.body), (200, kernel), "{}", era.name);
        let r = srv.get(&format!("/boot-resources/{}/", sha256_hex(kernel)), &[]);
        assert_eq!((r.status, &r.body), (200, kernel), "{}", era.name);
        drop(srv);

        if fuse {
            let mnt = Mount::start(&db, &[]);
            let got = fs::read(mnt.path(custom)).unwrap();
            assert_eq!(got, root_tgz, "{}", era.name);
        }

        let out = pgbootfs_ok(&db, &["remove", "custom/amd64/generic/myimage"]);
        assert!(out.contains("removed 1 version(s)"), "{}: {out}", era.name);
        assert_eq!(counts(&mut c).resources, 3, "{}", era.name);
        assert_consistent(&mut c);
    }
}

/// Loads the golden rows (every column, ids included) into a database of `era`'s
/// tables. The large objects are empty: only the stream files are compared.
fn load_golden_rows(c: &mut postgres::Client, era: &Era) {
    c.batch_execute(era.ddl).unwrap();
    let rows: Value = serde_json::from_str(include_str!("fixtures/maas-golden/rows.json")).unwrap();
    let ty = if era.jsonb { "jsonb" } else { "text" };
    for r in rows.as_array().unwrap() {
        c.execute(
            &format!(
                "INSERT INTO maasserver_bootresource (id, created, updated, rtype, name, \
                 architecture, extra, kflavor, bootloader_type, rolling, base_image) \
                 VALUES ($1::int8, now(), now(), $2::int4, $3, $4, $5::text::{ty}, $6, $7, $8, '')"
            ),
            &[
                &r["id"].as_i64(),
                &(r["rtype"].as_i64().unwrap() as i32),
                &r["name"].as_str(),
                &r["architecture"].as_str(),
                &r["extra"].as_str(),
                &r["kflavor"].as_str(),
                &r["bootloader_type"].as_str(),
                &r["rolling"].as_bool(),
            ],
        )
        .unwrap();
        for s in r["sets"].as_array().unwrap() {
            c.execute(
                "INSERT INTO maasserver_bootresourceset (id, created, updated, version, label, \
                 resource_id) VALUES ($1::int8, now(), now(), $2, $3, $4::int8)",
                &[
                    &s["id"].as_i64(),
                    &s["version"].as_str(),
                    &s["label"].as_str(),
                    &r["id"].as_i64(),
                ],
            )
            .unwrap();
            for f in s["files"].as_array().unwrap() {
                c.execute(
                    &format!(
                        "WITH lf AS (INSERT INTO maasserver_largefile (id, created, updated, \
                         sha256, total_size, content, size) VALUES ($1::int8, now(), now(), $2, \
                         $3, lo_from_bytea(0, ''), $4) RETURNING id) \
                         INSERT INTO maasserver_bootresourcefile (id, created, updated, filename, \
                         filetype, extra, largefile_id, resource_set_id) SELECT $1::int8, now(), \
                         now(), $5, $6, $7::text::{ty}, lf.id, $8::int8 FROM lf"
                    ),
                    &[
                        &f["id"].as_i64(),
                        &f["sha256"].as_str(),
                        &f["total_size"].as_i64(),
                        &f["size"].as_i64(),
                        &f["filename"].as_str(),
                        &f["filetype"].as_str(),
                        &f["extra"].as_str(),
                        &s["id"].as_i64(),
                    ],
                )
                .unwrap();
            }
        }
    }
}

/// `text` with the value of every `"updated": "..."` replaced by `X`.
fn without_updated(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"updated\": \"") {
        let start = at + "\"updated\": \"".len();
        out.push_str(&rest[..start]);
        out.push('X');
        let end = rest[start..].find('"').unwrap();
        rest = &rest[start + end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn streams_equal_what_maas_34_serves_for_the_same_rows() {
    let pg = Cluster::start();
    for era in [&ERAS[3], &ERAS[4]] {
        let name = era.name.replace(['-', '.'], "_");
        let db = pg.create_db(&name);
        load_golden_rows(&mut pg.client(&name), era);
        let srv = Server::start(&db, &[]);
        for (path, golden) in [
            (
                "/MAAS/images-stream/streams/v1/index.json",
                include_str!("fixtures/maas-golden/region-index.json"),
            ),
            (
                "/MAAS/images-stream/streams/v1/maas:v2:download.json",
                include_str!("fixtures/maas-golden/region-download.json"),
            ),
        ] {
            let r = srv.get(path, &[]);
            assert_eq!(r.status, 200);
            let got = String::from_utf8(r.body.clone()).unwrap();
            assert_eq!(
                without_updated(&got),
                without_updated(golden.trim_end()),
                "{}: {path} byte for byte",
                era.name
            );
            // `updated` is an RFC 2822 date with +0000, as MAAS writes it.
            let doc: Value = serde_json::from_str(&got).unwrap();
            let updated = doc["updated"].as_str().unwrap();
            assert!(updated.ends_with(" +0000"), "{updated}");
            assert!(httpdate::parse_http_date(&updated.replace("+0000", "GMT")).is_ok());
        }
    }
}

/// The products document of a served store without its `updated` stamps.
fn served_products(db: &str) -> Value {
    let srv = Server::start(db, &[]);
    let r = srv.get("/streams/v1/maas:v2:download.json", &[]);
    assert_eq!(r.status, 200);
    let mut doc: Value = serde_json::from_slice(&r.body).unwrap();
    doc["updated"] = Value::Null;
    doc
}

#[test]
fn a_mirror_of_the_served_stream_imports_to_the_same_stream() {
    let pg = Cluster::start();
    let src = SrcTree::new();
    // MAAS keeps a title only from os_title/release_title, which its region does
    // not serve: a source with them could not come back the same, from MAAS either.
    write_stream(src.path(), false);
    let first = pg.create_db("first");
    pgbootfs_ok(&first, &["import", src.path().to_str().unwrap()]);
    let srv = Server::start(&first, &[]);
    let out = SrcTree::new();
    let mirror = out.path().join("mirror");
    let res = std::process::Command::new(sstream_mirror())
        .arg(srv.url("/MAAS/images-stream/streams/v1/index.json"))
        .arg(&mirror)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    drop(srv);
    let second = pg.create_db("second");
    let out = pgbootfs_ok(&second, &["import", mirror.to_str().unwrap()]);
    assert!(out.contains("3 version(s) new"), "{out}");
    let a = served_products(&first);
    let b = served_products(&second);
    assert_eq!(a, b);
    assert_eq!(
        a["products"]["maas:boot:ubuntu:amd64:ga-24.04:noble"]["rolling"],
        true
    );
    let mut c1 = pg.client("first");
    let mut c2 = pg.client("second");
    assert_eq!(
        resource_rows(&mut c1, &ERAS[3]),
        resource_rows(&mut c2, &ERAS[3])
    );
    assert_eq!(file_rows(&mut c1), file_rows(&mut c2));
}

#[test]
fn boot_resources_by_sha256_with_ranges_etags_and_404s() {
    let (pg, mut c) = store();
    let data = bytes(300, 250_000);
    let unfinished = bytes(301, 10_000);
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/noble", "amd64/generic", "20240601");
    m.file(s, "squashfs", &data);
    let s2 = m.set("ubuntu/noble", "amd64/generic", "20240701");
    m.file_partial(s2, "squashfs", &unfinished, Some(10));
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let sha = sha256_hex(&data);
    for path in [
        format!("/boot-resources/{sha}/"),
        format!("/MAAS/boot-resources/{sha}/"),
        format!("/boot-resources/{}/", sha.to_uppercase()),
    ] {
        let r = srv.get(&path, &[]);
        assert_eq!((r.status, &r.body), (200, &data), "{path}");
        assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
    }
    let path = format!("/boot-resources/{sha}/");
    let r = srv.get(&path, &["Range: bytes=1000-1999"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[1000..2000]);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes 1000-1999/{}", data.len()).as_str())
    );
    let etag = r.header("ETag").unwrap().to_string();
    let via_path = srv.get("/ubuntu/amd64/generic/noble/20240601/squashfs", &[]);
    assert_eq!(via_path.header("ETag"), Some(etag.as_str()), "same ETag");
    let r = srv.get(&path, &[&format!("If-None-Match: {etag}")]);
    assert_eq!((r.status, r.body.len()), (304, 0));
    let r = srv.req("HEAD", &path, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Length"),
        Some(data.len().to_string().as_str())
    );
    for missing in [
        format!("/boot-resources/{}/", sha256_hex(&unfinished)),
        format!("/boot-resources/{}/", sha256_hex(b"nothing")),
        "/boot-resources/not-a-hash/".to_string(),
    ] {
        assert_eq!(srv.get(&missing, &[]).status, 404, "{missing}");
    }
}

#[test]
fn a_custom_image_base_and_title_are_as_maas_upload_sets_them() {
    let (pg, mut c) = store();
    let db = pg.conninfo("postgres");
    // The region's commissioning release, as MAAS keeps it (JSON values).
    c.batch_execute(
        "CREATE TABLE maasserver_config (id serial PRIMARY KEY, name varchar(255) NOT NULL \
         UNIQUE, value jsonb); \
         INSERT INTO maasserver_config (name, value) VALUES \
         ('commissioning_osystem', '\"ubuntu\"'), ('commissioning_distro_series', '\"noble\"')",
    )
    .unwrap();
    let src = SrcTree::new();
    src.add("custom/amd64/generic/img/1/root-dd.xz", &bytes(400, 5000));
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);
    let row = |c: &mut postgres::Client| -> (String, String) {
        let r = c
            .query_one(
                "SELECT extra, base_image FROM maasserver_bootresource WHERE name = 'img'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        row(&mut c),
        (
            r#"{"subarches": "generic", "title": ""}"#.to_string(),
            "ubuntu/noble".to_string()
        )
    );
    // A stored base is kept, as MAAS's form keeps it; the title follows the upload.
    let src2 = SrcTree::new();
    src2.add("custom/amd64/generic/img/2/root-dd.xz", &bytes(401, 5000));
    let out = pgbootfs(
        &db,
        &[
            "import",
            src2.path().to_str().unwrap(),
            "--base-image",
            "ubuntu/focal",
            "--title",
            "Img \u{e9}",
        ],
    );
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("keeps its base image ubuntu/noble"), "{log}");
    assert_eq!(
        row(&mut c),
        (
            r#"{"subarches": "generic", "title": "Img \u00e9"}"#.to_string(),
            "ubuntu/noble".to_string()
        )
    );
    let err = pgbootfs_fails(
        &db,
        &[
            "import",
            src2.path().to_str().unwrap(),
            "--base-image",
            "noble",
        ],
    );
    assert!(err.contains("must be os/series"), "{err}");
    // Importing the same version again uploads nothing: the rows stay.
    let out = pgbootfs_ok(&db, &["import", src2.path().to_str().unwrap()]);
    assert!(out.contains("1 unchanged"), "{out}");
    assert_eq!(
        row(&mut c).0,
        r#"{"subarches": "generic", "title": "Img \u00e9"}"#
    );
}

#[test]
fn a_sync_restores_labels_adopts_generated_images_and_never_overwrites_uploads() {
    let (pg, mut c) = store();
    let db = pg.conninfo("postgres");
    let src = SrcTree::new();
    write_stream(src.path(), false);
    // A generated resource (MAAS before 3.0) of a name the mirror has: a sync adopts it.
    c.batch_execute(
        "INSERT INTO maasserver_bootresource (created, updated, rtype, name, architecture, \
         extra, rolling, base_image) VALUES (now(), now(), 1, 'ubuntu/noble', 'amd64/ga-24.04', \
         '{}', false, '')",
    )
    .unwrap();
    pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);
    let noble = |c: &mut postgres::Client| -> (i32, String, bool, String) {
        let r = c
            .query_one(
                "SELECT r.rtype, r.extra, r.rolling, s.label FROM maasserver_bootresource r \
                 JOIN maasserver_bootresourceset s ON s.resource_id = r.id \
                 WHERE r.name = 'ubuntu/noble'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    let synced = (
        0,
        r#"{"subarches": "generic,ga-24.04"}"#.to_string(),
        true,
        "candidate".to_string(),
    );
    assert_eq!(noble(&mut c), synced);
    // Someone changed the rows; the next sync of the same version puts MAAS's back.
    c.batch_execute(
        "UPDATE maasserver_bootresourceset SET label = 'stable'; \
         UPDATE maasserver_bootresource SET extra = '{}', rolling = false",
    )
    .unwrap();
    let out = pgbootfs_ok(&db, &["import", src.path().to_str().unwrap()]);
    assert!(out.contains("3 unchanged"), "{out}");
    assert_eq!(noble(&mut c), synced);

    // An uploaded image of the same name and architecture is never synced over.
    let db2 = pg.create_db("uploaded");
    let mut c2 = pg.client("uploaded");
    c2.batch_execute(SCHEMA).unwrap();
    c2.batch_execute(
        "INSERT INTO maasserver_bootresource (created, updated, rtype, name, architecture, \
         extra, rolling, base_image) VALUES (now(), now(), 2, 'ubuntu/jammy', \
         'amd64/hwe-22.04-lowlatency', '{}', false, '')",
    )
    .unwrap();
    let err = pgbootfs_fails(&db2, &["import", src.path().to_str().unwrap()]);
    assert!(
        err.contains("ubuntu/amd64/hwe-22.04-lowlatency/jammy/20240315")
            && err.contains("MAAS does not sync over an uploaded image"),
        "{err}"
    );
    let jammy_sets: i64 = c2
        .query_one(
            "SELECT count(*) FROM maasserver_bootresourceset s JOIN maasserver_bootresource r \
             ON r.id = s.resource_id WHERE r.name = 'ubuntu/jammy'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(jammy_sets, 0);
}

#[test]
fn a_product_is_labelled_by_its_newest_complete_set_by_id() {
    let (pg, mut c) = store();
    let mut m = Maas { client: &mut c };
    // The first set in version order is not the newest by id, and the newest set
    // of all is unfinished.
    let older_id = m.set("ubuntu/noble", "amd64/generic", "20240101");
    m.file(older_id, "squashfs", &bytes(500, 1000));
    let newer_id = m.set("ubuntu/noble", "amd64/generic", "20240201");
    m.file(newer_id, "squashfs", &bytes(501, 1000));
    let unfinished = m.set("ubuntu/noble", "amd64/generic", "20240301");
    m.file_partial(unfinished, "squashfs", &bytes(502, 1000), Some(10));
    c.execute(
        "UPDATE maasserver_bootresourceset SET label = CASE id WHEN $1::int8 THEN 'candidate' \
         WHEN $2::int8 THEN 'daily' ELSE label END",
        &[&newer_id, &unfinished],
    )
    .unwrap();
    let doc = served_products(&pg.conninfo("postgres"));
    let p = &doc["products"]["maas:boot:ubuntu:amd64:generic:noble"];
    assert_eq!(p["label"], "candidate", "{p}");
    let versions: Vec<&String> = p["versions"].as_object().unwrap().keys().collect();
    assert_eq!(versions, ["20240101", "20240201"]);
}
