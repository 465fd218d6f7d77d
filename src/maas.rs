//! Everything pgbootfs knows about MAAS's image tables, in one place: their names,
//! which columns each MAAS version has, the four-table join every reader uses,
//! how a row's name and architecture map to a path and back, the rules MAAS's
//! sync applies to a simplestreams product, and the JSON formatting of `extra`.
//!
//! The tables by MAAS version (detected per database from the columns, never from
//! a version number, because nothing in the database records one):
//!
//! | MAAS | what differs |
//! |---|---|
//! | 1.7-2.0 | no `kflavor`, `bootloader_type`, `rolling`; `largefile.size` only from 2.0 |
//! | 2.1-3.0 | those three columns, no `base_image` |
//! | 3.1-3.3 | `base_image` NOT NULL |
//! | 3.4 | bigint ids and foreign keys, `extra` jsonb |
//! | 3.5+ | images on the region's disk: `bootresourcefile.sha256`, `size`, nullable `largefile_id` (0308); `filename_on_disk` (0330, 3.5.x and 3.6+); `bootresource.alias` (0323, 3.6+) |
//!
//! On MAAS 3.5+ (canonical/maas branches 3.5-3.8) the bytes of a file are
//! `<image storage>/<filename_on_disk>`, written through `<name>.incomplete`
//! (`utils/bootresource.py`, `LocalBootResourceFile`). Migration 0330 set
//! `filename_on_disk` to the sha256 of every file then present, and before it the
//! file was named by its sha256 (that migration says so); files MAAS 3.6+ writes
//! afterwards get a short prefix of the sha256 (`calculate_filename_on_disk`,
//! `models/bootresourcefile.py`: at least 7 digits, longer on a collision, the name
//! of an existing file of the same sha256). So readers take the name as stored and
//! never compute one. A file whose large object the one-time start-up export has
//! not moved yet still has `largefile_id`.

use std::fmt;

use postgres::GenericClient;
use serde_json::{Map, Value};

use crate::db::DbError;

pub mod sql;

/// The four tables that hold MAAS's boot images, up to MAAS 3.4.
pub const TABLES: [&str; 4] = [
    "maasserver_bootresource",
    "maasserver_bootresourceset",
    "maasserver_bootresourcefile",
    "maasserver_largefile",
];

/// `bootresource.rtype` of an image synced from a simplestreams source.
pub const RTYPE_SYNCED: i32 = 0;
/// `bootresource.rtype` of a generated image (MAAS before 3.0); a sync adopts it.
pub const RTYPE_GENERATED: i32 = 1;
/// `bootresource.rtype` of an image an operator uploaded.
pub const RTYPE_UPLOADED: i32 = 2;
/// Where MAAS 3.5+ keeps its images (`get_maas_data_path("image-storage")`): the
/// deb package's path, then the snap's (`$SNAP_COMMON/maas/image-storage`).
pub const IMAGE_STORAGE_DIRS: [&str; 2] = [
    "/var/lib/maas/image-storage",
    "/var/snap/maas/common/maas/image-storage",
];

/// What MAAS 3.5+ appends to a file's name while writing it (`partial_file_path`);
/// MAAS 3.7 pre-allocates it at full size, so only the final name means complete.
pub const INCOMPLETE_SUFFIX: &str = ".incomplete";

/// Entries of the image storage that MAAS keeps beside the files its rows name
/// (`initialize_image_storage`: `bootloaders/` is rebuilt, `custom/` kept).
pub const IMAGE_STORAGE_OWN: [&str; 2] = ["bootloaders", "custom"];

/// The label MAAS gives the set of an upload.
pub const UPLOADED_LABEL: &str = "uploaded";

/// The file types MAAS 3.4 knows (`BOOT_RESOURCE_FILE_TYPE`); a sync skips others.
pub const FILETYPES: [&str; 17] = [
    "root-tgz",
    "root-tbz",
    "root-txz",
    "root-dd",
    "root-dd.tar",
    "root-dd.raw",
    "root-dd.bz2",
    "root-dd.gz",
    "root-dd.xz",
    "root-dd.tar.bz2",
    "root-dd.tar.xz",
    "root-image.gz",
    "squashfs",
    "boot-kernel",
    "boot-initrd",
    "boot-dtb",
    "archive.tar.xz",
];

/// The product keys MAAS's sync keeps in `bootresource.extra`.
pub const RESOURCE_EXTRA_KEYS: [&str; 3] = ["subarches", "platform", "supported_platforms"];

/// The item keys MAAS's sync keeps in `bootresourcefile.extra`.
pub const FILE_EXTRA_KEYS: [&str; 5] = [
    "kpackage",
    "src_package",
    "src_release",
    "src_version",
    "kparams",
];

/// Which MAAS versions a database's tables belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Era {
    /// MAAS 1.7 to 2.0: no kflavor, bootloader_type, rolling.
    Maas17,
    /// MAAS 2.1 to 3.0: no base_image.
    Maas21,
    /// MAAS 3.1 to 3.3.
    Maas31,
    /// MAAS 3.4: bigint ids, jsonb extra.
    Maas34,
    /// MAAS 3.5 and later: bytes in the region's image storage.
    Maas35,
}

impl fmt::Display for Era {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Era::Maas17 => "MAAS 1.7-2.0",
            Era::Maas21 => "MAAS 2.1-3.0",
            Era::Maas31 => "MAAS 3.1-3.3",
            Era::Maas34 => "MAAS 3.4",
            Era::Maas35 => "MAAS 3.5+",
        })
    }
}

/// What one database's image tables look like, detected once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// The MAAS versions these tables belong to.
    pub era: Era,
    /// bootresource.kflavor exists (2.1+).
    pub kflavor: bool,
    /// bootresource.bootloader_type exists (2.1+).
    pub bootloader_type: bool,
    /// bootresource.rolling exists (2.1+, NOT NULL).
    pub rolling: bool,
    /// bootresource.base_image exists (3.1+, NOT NULL).
    pub base_image: bool,
    /// largefile.size exists (2.0+); without it every file counts as complete.
    pub largefile_size: bool,
    /// bootresource.extra is jsonb (3.4) rather than text.
    pub resource_extra_jsonb: bool,
    /// bootresourcefile.extra is jsonb (3.4) rather than text.
    pub file_extra_jsonb: bool,
    /// bootresourcefile.sha256 and size exist (3.5+): the bytes are in the image
    /// storage, or still in a large object until MAAS's start-up export moves them.
    pub on_disk: bool,
    /// bootresourcefile.filename_on_disk exists (migration 0330); before it a
    /// file's name in the image storage is its sha256.
    pub filename_on_disk: bool,
    /// bootresource.alias exists (3.6+, migration 0323): two resources may then
    /// share a name and architecture, and so a path (the first is kept).
    pub alias: bool,
    /// maasserver_largefile exists (every MAAS up to 3.8 has it).
    pub largefile_table: bool,
}

/// Names and types of the columns of the image tables, as (table, column, type).
const COLUMNS_QUERY: &str = "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
     FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
     WHERE c.oid = ANY (SELECT to_regclass(t) FROM unnest($1::text[]) AS t) \
     AND a.attnum > 0 AND NOT a.attisdropped";

impl Schema {
    /// Reads the columns of the image tables (MAAS 1.7 to 3.8). Fails with
    /// [`DbError::NotAStore`] when tables are missing.
    pub fn detect(client: &mut impl GenericClient, target: &str) -> Result<Schema, DbError> {
        let rows = client
            .query(COLUMNS_QUERY, &[&TABLES.to_vec()])
            .map_err(|e| DbError::query("reading the columns of the MAAS tables", e))?;
        let cols: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let typ = |table: &str, col: &str| {
            cols.iter()
                .find(|(t, c, _)| t == table && c == col)
                .map(|(_, _, ty)| ty.as_str())
        };
        // MAAS 3.5 moved the bytes to the region's disk: the file row carries the
        // sha256 and size itself and needs no large object.
        let on_disk = typ("maasserver_bootresourcefile", "sha256").is_some();
        let largefile_table = cols.iter().any(|(t, _, _)| t == TABLES[3]);
        let missing: Vec<String> = TABLES
            .iter()
            .filter(|t| !(on_disk && **t == TABLES[3]))
            .filter(|t| !cols.iter().any(|(table, _, _)| table == *t))
            .map(|t| t.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(DbError::NotAStore {
                target: target.to_string(),
                missing,
            });
        }
        let has = |table: &str, col: &str| typ(table, col).is_some();
        let r = "maasserver_bootresource";
        let jsonb = |table: &str| typ(table, "extra") == Some("jsonb");
        let id_bigint = typ(r, "id") == Some("bigint");
        let schema = Schema {
            era: if on_disk {
                Era::Maas35
            } else if has(r, "base_image") && (id_bigint || jsonb(r)) {
                Era::Maas34
            } else if has(r, "base_image") {
                Era::Maas31
            } else if has(r, "kflavor") {
                Era::Maas21
            } else {
                Era::Maas17
            },
            kflavor: has(r, "kflavor"),
            bootloader_type: has(r, "bootloader_type"),
            rolling: has(r, "rolling"),
            base_image: has(r, "base_image"),
            largefile_size: has("maasserver_largefile", "size"),
            resource_extra_jsonb: jsonb(r),
            file_extra_jsonb: jsonb("maasserver_bootresourcefile"),
            on_disk,
            filename_on_disk: has("maasserver_bootresourcefile", "filename_on_disk"),
            alias: has(r, "alias"),
            largefile_table,
        };
        log::debug!("{target}: image tables of {}: {schema:?}", schema.era);
        Ok(schema)
    }

    /// The four-table join: one row per file, the same columns on every schema.
    /// On 3.5+ the file row has the sha256 and size, and the large object is
    /// joined where one is left.
    fn files_query(&self) -> String {
        let opt = |has: bool, col: &str, none: &str| {
            if has {
                format!("r.{col}")
            } else {
                none.to_string()
            }
        };
        let (file_cols, largefile_join) = if self.on_disk {
            let disk_name = if self.filename_on_disk {
                "f.filename_on_disk"
            } else {
                "f.sha256"
            };
            if self.largefile_table {
                (
                    format!(
                        "COALESCE(lf.id, 0)::int8, f.sha256::text, f.size::int8, \
                         COALESCE(lf.size, 0)::int8, COALESCE(lf.content, 0::oid), \
                         (extract(epoch FROM greatest(f.updated, lf.updated)) * 1000000)::int8, \
                         lf.id IS NOT NULL, {disk_name}::text"
                    ),
                    "LEFT JOIN maasserver_largefile lf ON lf.id = f.largefile_id".to_string(),
                )
            } else {
                // A later MAAS may drop the table: every file is then on disk.
                (
                    format!(
                        "0::int8, f.sha256::text, f.size::int8, 0::int8, 0::oid, \
                         (extract(epoch FROM f.updated) * 1000000)::int8, \
                         false, {disk_name}::text"
                    ),
                    String::new(),
                )
            }
        } else {
            (
                format!(
                    "lf.id::int8, lf.sha256::text, lf.total_size::int8, {}::int8, lf.content, \
                     (extract(epoch FROM greatest(f.updated, lf.updated)) * 1000000)::int8, \
                     true, NULL::text",
                    self.largefile_written("lf")
                ),
                "JOIN maasserver_largefile lf ON lf.id = f.largefile_id".to_string(),
            )
        };
        format!(
            "SELECT r.id::int8, r.rtype::int4, r.name::text, r.architecture::text, \
                    {}::text, {}::text, {}::bool, r.extra::text, \
                    s.id::int8, s.version::text, s.label::text, \
                    f.id::int8, f.filename::text, f.filetype::text, f.extra::text, \
                    {file_cols} \
             FROM maasserver_bootresourcefile f \
             {largefile_join} \
             JOIN maasserver_bootresourceset s ON s.id = f.resource_set_id \
             JOIN maasserver_bootresource r ON r.id = s.resource_id \
             ORDER BY r.name, r.architecture, s.version, f.filename, r.id",
            opt(self.kflavor, "kflavor", "NULL"),
            opt(self.bootloader_type, "bootloader_type", "NULL"),
            opt(self.rolling, "rolling", "false"),
        )
    }

    /// The SQL for a largefile's bytes written so far, `alias` naming the table:
    /// `size`, or `total_size` where MAAS had no `size` (every file complete).
    pub fn largefile_written(&self, alias: &str) -> String {
        if self.largefile_size {
            format!("{alias}.size")
        } else {
            format!("{alias}.total_size")
        }
    }

    /// Every file row of the store (unfinished ones included).
    pub fn load_files(&self, client: &mut impl GenericClient) -> Result<Vec<FileRow>, DbError> {
        let rows = client
            .query(self.files_query().as_str(), &[])
            .map_err(|e| DbError::query("reading the image rows", e))?;
        Ok(rows
            .iter()
            .map(|r| FileRow {
                resource_id: r.get(0),
                rtype: r.get(1),
                name: r.get(2),
                architecture: r.get(3),
                kflavor: r.get(4),
                bootloader_type: r.get(5),
                rolling: r.get(6),
                resource_extra: r.get(7),
                set_id: r.get(8),
                version: r.get(9),
                label: r.get(10),
                file_id: r.get(11),
                filename: r.get(12),
                filetype: r.get(13),
                file_extra: r.get(14),
                largefile_id: r.get(15),
                sha256: r.get(16),
                total_size: r.get(17),
                size: r.get(18),
                oid: r.get(19),
                updated_us: r.get(20),
                largefile: r.get(21),
                disk_name: r.get(22),
            })
            .collect())
    }

    /// The SQL type to cast `extra` text to for bootresource.
    pub fn resource_extra_type(&self) -> &'static str {
        if self.resource_extra_jsonb {
            "jsonb"
        } else {
            "text"
        }
    }

    /// The SQL type to cast `extra` text to for bootresourcefile.
    pub fn file_extra_type(&self) -> &'static str {
        if self.file_extra_jsonb {
            "jsonb"
        } else {
            "text"
        }
    }
}

/// One file of one set of one resource, with its largefile.
#[derive(Debug, Clone)]
pub struct FileRow {
    /// bootresource.id.
    pub resource_id: i64,
    /// bootresource.rtype.
    pub rtype: i32,
    /// bootresource.name (`os/series`, or a bare custom image name).
    pub name: String,
    /// bootresource.architecture (`arch/subarch`).
    pub architecture: String,
    /// bootresource.kflavor (None where the column is absent).
    pub kflavor: Option<String>,
    /// bootresource.bootloader_type (None where the column is absent).
    pub bootloader_type: Option<String>,
    /// bootresource.rolling (false where the column is absent).
    pub rolling: bool,
    /// bootresource.extra as text.
    pub resource_extra: String,
    /// bootresourceset.id.
    pub set_id: i64,
    /// bootresourceset.version.
    pub version: String,
    /// bootresourceset.label.
    pub label: String,
    /// bootresourcefile.id.
    pub file_id: i64,
    /// bootresourcefile.filename.
    pub filename: String,
    /// bootresourcefile.filetype.
    pub filetype: String,
    /// bootresourcefile.extra as text.
    pub file_extra: String,
    /// largefile.id.
    pub largefile_id: i64,
    /// largefile.sha256.
    pub sha256: String,
    /// largefile.total_size.
    pub total_size: i64,
    /// largefile.size (total_size before MAAS 2.0): bytes written so far.
    pub size: i64,
    /// largefile.content: the large object.
    pub oid: u32,
    /// The later `updated` of the file and largefile rows, in microseconds.
    pub updated_us: i64,
    /// Whether the file has a large object (always before 3.5; on 3.5+ until
    /// MAAS's start-up export moved it to the image storage).
    pub largefile: bool,
    /// MAAS 3.5+: the file's name in the image storage, as stored
    /// (`filename_on_disk`; the sha256 before migration 0330). None before 3.5.
    pub disk_name: Option<String>,
}

impl FileRow {
    /// os, arch, subarch, series, version, filename; None if the architecture is
    /// not `arch/subarch`.
    pub fn parts(&self) -> Option<[&str; 6]> {
        let (os, series) = split_name(&self.name);
        let (arch, subarch) = split_architecture(&self.architecture)?;
        Some([
            os,
            arch,
            subarch,
            series,
            self.version.as_str(),
            self.filename.as_str(),
        ])
    }

    /// Whether every byte has been written to the large object (false when the
    /// file has none: on 3.5+ its bytes are then only in the image storage).
    pub fn complete(&self) -> bool {
        self.largefile && self.size >= self.total_size
    }
}

/// Whether `name` can be one component of a path (of the tree, or of the image
/// storage).
pub fn valid_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// MAAS's `bootresource.name` for an os and series: a custom image has a bare name.
pub fn resource_name(os: &str, series: &str) -> String {
    if os == "custom" {
        series.to_string()
    } else {
        format!("{os}/{series}")
    }
}

/// The os and series of a `bootresource.name` (the reverse of [`resource_name`]).
pub fn split_name(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or(("custom", name))
}

/// The arch and subarch of a `bootresource.architecture`.
pub fn split_architecture(architecture: &str) -> Option<(&str, &str)> {
    architecture.split_once('/')
}

/// What MAAS's sync makes of one simplestreams product: the resource's os,
/// arch, subarch and series, and its kflavor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedName {
    /// os (`ubuntu` when the product has none).
    pub os: String,
    /// Architecture.
    pub arch: String,
    /// Sub-architecture, with a non-generic kflavor folded in.
    pub subarch: String,
    /// Series: the release, the bootloader type, or `release-gadget` for ubuntu-core.
    pub series: String,
    /// bootresource.kflavor.
    pub kflavor: Option<String>,
}

/// The resource MAAS's sync writes for a product with attributes `get`, or the
/// names of the attributes it lacks.
pub fn synced_name(get: impl Fn(&str) -> Option<String>) -> Result<SyncedName, Vec<&'static str>> {
    let os = get("os").unwrap_or_else(|| "ubuntu".into());
    let mut missing = Vec::new();
    let arch = get("arch");
    if arch.is_none() {
        missing.push("arch");
    }
    let mut kflavor = get("kflavor");
    let bootloader_type = get("bootloader-type");
    let (subarch, series) = if os == "ubuntu-core" {
        kflavor = Some(get("kernel_snap").unwrap_or_else(|| "generic".into()));
        match (get("release"), get("gadget_snap")) {
            (Some(r), Some(g)) => ("generic".to_string(), format!("{r}-{g}")),
            (r, g) => {
                missing.extend(r.is_none().then_some("release"));
                missing.extend(g.is_none().then_some("gadget_snap"));
                (String::new(), String::new())
            }
        }
    } else if let Some(bt) = bootloader_type {
        ("generic".to_string(), bt)
    } else {
        let mut subarch = get("subarch").unwrap_or_else(|| "generic".into());
        if let Some(kf) = kflavor.as_deref()
            && kf != "generic"
            && (subarch.contains("hwe-") || subarch.contains("ga-"))
            && !subarch.contains(kf)
        {
            // The rack names kernels by subarch: a flavoured kernel needs its own.
            subarch = match subarch.strip_suffix("-edge") {
                Some(base) => format!("{base}-{kf}-edge"),
                None => format!("{subarch}-{kf}"),
            };
        }
        let release = get("release");
        if release.is_none() {
            missing.push("release");
        }
        (subarch, release.unwrap_or_default())
    };
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(SyncedName {
        os,
        arch: arch.unwrap_or_default(),
        subarch,
        series,
        kflavor,
    })
}

/// The title MAAS's sync stores: "os_title release_title [gadget_title]", when
/// the product has the first two.
pub fn synced_title(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    let (os, release) = (get("os_title")?, get("release_title")?);
    Some(match get("gadget_title") {
        Some(g) => format!("{os} {release} {g}"),
        None => format!("{os} {release}"),
    })
}

/// Parses an `extra` column's text; anything but a JSON object reads as empty.
pub fn parse_extra(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// `value` as Python's `json.dumps(value, sort_keys=True)` writes it: `", "` and
/// `": "` separators, keys sorted, everything outside printable ASCII escaped.
pub fn python_json(value: &Value) -> String {
    let mut out = String::new();
    write_python(value, None, 0, &mut out);
    out
}

/// Like [`python_json`] with `indent=N`: one member per line, `","` at line ends.
pub fn python_json_pretty(value: &Value, indent: usize) -> String {
    let mut out = String::new();
    write_python(value, Some(indent), 0, &mut out);
    out
}

fn write_python(value: &Value, indent: Option<usize>, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_python_str(s, out),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                write_python(v, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                write_python_str(k, out);
                out.push_str(": ");
                write_python(&map[k.as_str()], indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
    }
}

/// A JSON string as Python's `ensure_ascii` writes it.
fn write_python_str(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// MAAS 3.5+ keeps image bytes in files on each region's disk, the "image
/// storage": `get_maas_data_path("image-storage")`, i.e. `/var/lib/maas/image-storage`
/// (deb) or `$SNAP_COMMON/maas/image-storage` (snap). `pgbootfs export` writes the
/// bytes of a 1.7-3.4 database there ahead of the upgrade, named exactly as MAAS
/// will look for them. The rules, as read in MAAS's source (canonical/maas):
///
/// - The name of a file that came from the database is its sha256 (64 lower-case
///   hex digits). Migration 0308 (branch 3.5, `src/maasserver/migrations/maasserver/`)
///   copies `largefile.sha256` and `largefile.total_size` into
///   `bootresourcefile.sha256` and `.size`; migration 0330
///   (`0330_bootresourcefile_filename_on_disk.py`, branch 3.6, backported to 3.5) adds `filename_on_disk` and sets it to `sha256` for every existing row
///   ("we don't want to change the filename of the images that are already on the
///   disk"). Before 0330, 3.5's `LocalBootResourceFile` was built from the sha256
///   alone, so the name is the sha256 on every 3.5+ release.
/// - Files MAAS downloads later get a short name instead
///   (`BootResourceFileManager.calculate_filename_on_disk`,
///   `src/maasserver/models/bootresourcefile.py`, branch 3.7): the
///   `filename_on_disk` of an existing row with the same sha256, else the first 7
///   hex digits, longer until no existing name starts with it. Never a database
///   file's name: readers take `filename_on_disk` as stored.
/// - The path is `<image-storage>/<filename_on_disk>`; while being written it is
///   `Path.with_suffix(".incomplete")` of that (`LocalBootResourceFile.path`,
///   `.partial_file_path`, `src/maasserver/utils/bootresource.py`, branches 3.5-3.7):
///   the name has no dot, so `<name>.incomplete`. `commit()` renames it into place.
/// - A file counts as present when `LocalBootResourceFile.valid`: `complete` (the
///   final name exists, or the row's size is 0) and the sha256 of the final name
///   (else of `<name>.incomplete`) equals the row's. The start-up export
///   (`export_images_from_db`, `src/maasserver/bootresources.py`, branch 3.5) skips
///   such a file ("skipping, file already present"), records its
///   `bootresourcefilesync` row, and only deletes the largefile and `lo_unlink`s its
///   object. Its later revisions first check that the free space covers the
///   distinct sizes still in the database; all ignore largefiles whose
///   `size != total_size` (unfinished: MAAS downloads them again).
/// - A 0-byte file: `store()` -> `allocate()` seeks to -1 and fails
///   (`LocalStoreAllocationFail`) inside the export's one transaction, so the whole
///   start-up export fails; an empty file already at the final name is `valid`
///   (sha256 of nothing) and skipped, which is why export writes it too.
/// - Mode: the region writes with `open("wb")` under its umask (0644 for downloads
///   and the start-up export); `initialize_image_storage` deletes every entry of the
///   directory it does not expect at each start, so nothing else may live there.
pub fn storage_name(sha256: &str) -> &str {
    sha256
}

/// The mode of the files MAAS's region writes into the image storage (downloads
/// and the start-up export, `open("wb")` under umask 022).
pub const STORAGE_FILE_MODE: u32 = 0o644;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_json_formatting() {
        let v = json!({"title": "Ubuntu 22.04 LTS", "subarches": "generic,ga-22.04", "n": [1, 2], "e": {}});
        assert_eq!(
            python_json(&v),
            r#"{"e": {}, "n": [1, 2], "subarches": "generic,ga-22.04", "title": "Ubuntu 22.04 LTS"}"#
        );
        assert_eq!(python_json(&json!({})), "{}");
        assert_eq!(
            python_json(&json!({"t": "caf\u{e9} \u{1f600} \"q\"\\\n\u{7f}"})),
            r#"{"t": "caf\u00e9 \ud83d\ude00 \"q\"\\\n\u007f"}"#
        );
        assert_eq!(
            python_json_pretty(&json!({"b": [], "a": {"x": [1, 2]}}), 1),
            "{\n \"a\": {\n  \"x\": [\n   1,\n   2\n  ]\n },\n \"b\": []\n}"
        );
    }

    fn product(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| owned.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn sync_naming_rules() {
        let n = synced_name(product(&[
            ("arch", "amd64"),
            ("subarch", "hwe-22.04"),
            ("release", "jammy"),
            ("kflavor", "lowlatency"),
        ]))
        .unwrap();
        assert_eq!(
            (n.os.as_str(), n.subarch.as_str(), n.series.as_str()),
            ("ubuntu", "hwe-22.04-lowlatency", "jammy")
        );
        let n = synced_name(product(&[
            ("arch", "amd64"),
            ("subarch", "hwe-22.04-edge"),
            ("release", "jammy"),
            ("kflavor", "lowlatency"),
        ]))
        .unwrap();
        assert_eq!(n.subarch, "hwe-22.04-lowlatency-edge");
        let n = synced_name(product(&[
            ("os", "grub-efi-signed"),
            ("arch", "amd64"),
            ("bootloader-type", "uefi"),
        ]))
        .unwrap();
        assert_eq!(
            (n.subarch.as_str(), n.series.as_str(), n.kflavor),
            ("generic", "uefi", None)
        );
        let n = synced_name(product(&[
            ("os", "ubuntu-core"),
            ("arch", "amd64"),
            ("release", "16"),
            ("gadget_snap", "pc"),
        ]))
        .unwrap();
        assert_eq!(n.series, "16-pc");
        assert_eq!(n.kflavor.as_deref(), Some("generic"));
        assert_eq!(
            synced_name(product(&[("os", "centos")])).unwrap_err(),
            ["arch", "release"]
        );
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(resource_name("ubuntu", "focal"), "ubuntu/focal");
        assert_eq!(resource_name("custom", "myimage"), "myimage");
        assert_eq!(split_name("myimage"), ("custom", "myimage"));
        assert_eq!(split_name("ubuntu/focal"), ("ubuntu", "focal"));
        assert_eq!(
            split_architecture("amd64/ga-22.04"),
            Some(("amd64", "ga-22.04"))
        );
        assert_eq!(split_architecture("amd64"), None);
    }
}
