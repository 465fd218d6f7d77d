//! Every statement pgbootfs runs against MAAS's image tables, each named for what
//! it does. Statements whose text depends on the MAAS version take the detected
//! [`Schema`]; the rest are constants. The writing side (`store`) and the
//! handles' content check call these and own no SQL of their own.

use super::Schema;

/// The stored largefile of a sha256: id, total size and bytes written. `$1` sha256.
pub fn find_largefile(schema: &Schema) -> String {
    format!(
        "SELECT lf.id::int8, lf.total_size::int8, {}::int8 FROM maasserver_largefile lf \
         WHERE lf.sha256 = $1",
        schema.largefile_written("lf")
    )
}

/// A new largefile row (with `size` where the version has it). `$1` sha256, `$2`
/// total size, `$3` oid; returns its id.
pub fn insert_largefile(schema: &Schema) -> String {
    let (col, val) = if schema.largefile_size {
        (", size", ", $2")
    } else {
        ("", "")
    };
    format!(
        "INSERT INTO maasserver_largefile (created, updated, sha256, total_size, content{col}) \
         VALUES (now(), now(), $1, $2, $3::oid{val}) RETURNING id::int8"
    )
}

/// A new file row. `$1` filename, `$2` filetype, `$3` extra (JSON text), `$4`
/// largefile id, `$5` set id.
pub fn insert_file(schema: &Schema) -> String {
    format!(
        "INSERT INTO maasserver_bootresourcefile \
         (created, updated, filename, filetype, extra, largefile_id, resource_set_id) \
         VALUES (now(), now(), $1, $2, $3::text::{}, $4::int8, $5::int8)",
        schema.file_extra_type()
    )
}

/// A new resource row; `optional` are the version's optional columns
/// (kflavor, bootloader_type, rolling, base_image), bound from `$5` on. `$1`
/// rtype, `$2` name, `$3` architecture, `$4` extra; returns its id.
pub fn insert_resource(schema: &Schema, optional: &[&str]) -> String {
    let mut names = String::new();
    let mut values = String::new();
    for (i, col) in optional.iter().enumerate() {
        names.push_str(&format!(", {col}"));
        values.push_str(&format!(", ${}", i + 5));
    }
    format!(
        "INSERT INTO maasserver_bootresource \
         (created, updated, rtype, name, architecture, extra{names}) \
         VALUES (now(), now(), $1::int4, $2, $3, $4::text::{}{values}) RETURNING id::int8",
        schema.resource_extra_type()
    )
}

/// Updates a resource row; `optional` columns bound from `$4` on. `$1` id, `$2`
/// rtype, `$3` extra.
pub fn update_resource(schema: &Schema, optional: &[&str]) -> String {
    let mut sets = String::new();
    for (i, col) in optional.iter().enumerate() {
        sets.push_str(&format!(", {col} = ${}", i + 4));
    }
    format!(
        "UPDATE maasserver_bootresource SET updated = now(), rtype = $2::int4, \
         extra = $3::text::{}{sets} WHERE id = $1::int8",
        schema.resource_extra_type()
    )
}

/// A new set row. `$1` version, `$2` label, `$3` resource id; returns its id.
pub const INSERT_SET: &str = "INSERT INTO maasserver_bootresourceset (created, updated, version, label, resource_id) \
     VALUES (now(), now(), $1, $2, $3::int8) RETURNING id::int8";

/// A set's label, as a sync sets it. `$1` label, `$2` set id.
pub const UPDATE_SET_LABEL: &str =
    "UPDATE maasserver_bootresourceset SET label = $1, updated = now() WHERE id = $2::int8";

/// The resource of a name and architecture, with its set of one version: id,
/// rtype, base_image (NULL before 3.1), set id, label. `$1` name, `$2`
/// architecture, `$3` version.
pub fn find_resource_and_set(schema: &Schema) -> String {
    let base = if schema.base_image {
        "r.base_image::text"
    } else {
        "NULL::text"
    };
    format!(
        "SELECT r.id::int8, r.rtype::int4, {base}, s.id::int8, s.label::text \
         FROM maasserver_bootresource r \
         LEFT JOIN maasserver_bootresourceset s ON s.resource_id = r.id AND s.version = $3 \
         WHERE r.name = $1 AND r.architecture = $2"
    )
}

/// The files of a set: filename, sha256, total size, complete. `$1` set id.
pub fn files_of_set(schema: &Schema) -> String {
    let written = schema.largefile_written("lf");
    format!(
        "SELECT f.filename::text, lf.sha256::text, lf.total_size::int8, \
         {written} >= lf.total_size \
         FROM maasserver_bootresourcefile f \
         JOIN maasserver_largefile lf ON lf.id = f.largefile_id \
         WHERE f.resource_set_id = $1::int8"
    )
}

/// Whether any largefile has exactly `$1` bytes.
pub const LARGEFILE_OF_SIZE_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM maasserver_largefile WHERE total_size = $1::int8)";

/// Whether the region's settings table exists (a MAAS region, not a bare store).
pub const HAS_CONFIG: &str = "SELECT to_regclass('maasserver_config') IS NOT NULL";

/// The region's commissioning os and series settings (JSON text values).
pub const COMMISSIONING_RELEASE: &str = "SELECT name::text, value::text FROM maasserver_config \
     WHERE name IN ('commissioning_osystem', 'commissioning_distro_series')";

/// Every set with its resource: set id, resource id, name, architecture, version.
pub const ALL_SETS: &str = "SELECT s.id::int8, r.id::int8, r.name::text, r.architecture::text, s.version::text \
     FROM maasserver_bootresourceset s \
     JOIN maasserver_bootresource r ON r.id = s.resource_id";

/// Deletes the resources of `$1` (ids) left without sets.
pub const DELETE_EMPTY_RESOURCES: &str = "DELETE FROM maasserver_bootresource r WHERE r.id = ANY($1::int8[]) \
     AND NOT EXISTS (SELECT 1 FROM maasserver_bootresourceset s WHERE s.resource_id = r.id)";

/// Deletes the file rows of the sets `$1`, returning their largefile ids.
pub const DELETE_FILES_OF_SETS: &str = "DELETE FROM maasserver_bootresourcefile WHERE resource_set_id = ANY($1::int8[]) \
     RETURNING largefile_id::int8";

/// Deletes the sets `$1`.
pub const DELETE_SETS: &str = "DELETE FROM maasserver_bootresourceset WHERE id = ANY($1::int8[])";

/// Deletes those largefiles of `$1` no file row uses, returning their oids.
pub const DELETE_UNUSED_LARGEFILES: &str = "DELETE FROM maasserver_largefile lf WHERE lf.id = ANY($1::int8[]) \
     AND NOT EXISTS (SELECT 1 FROM maasserver_bootresourcefile f WHERE f.largefile_id = lf.id) \
     RETURNING lf.content";

/// Unlinks large object `$1` unless a largefile row still names it.
pub const UNLINK_UNNAMED_OBJECT: &str = "SELECT lo_unlink(m.oid) FROM pg_largeobject_metadata m WHERE m.oid = $1 \
     AND NOT EXISTS (SELECT 1 FROM maasserver_largefile lf WHERE lf.content = $1)";

/// Whether the largefile table exists (a MAAS store, not bare large objects).
pub const HAS_LARGEFILES: &str = "SELECT to_regclass('maasserver_largefile') IS NOT NULL";

/// A handle's set-up: opens large object `$1` read-only (pinning the snapshot,
/// checking existence and permission), gives its size, and whether a row still
/// names it with sha256 `$2` and total size `$3`: NULL when no row names the
/// object (a store being written), false when rows name it but none so.
pub const OPEN_AND_CHECK_OBJECT: &str = "SELECT lo_lseek64(lo_open($1::oid, 262144), 0, 2), \
     (SELECT bool_or(sha256 = $2 AND total_size = $3) \
      FROM maasserver_largefile WHERE content = $1::oid)";

/// The COPY that streams `size` bytes of large object `oid` in one statement, as
/// `lo_get` rows of `row` bytes in order (no round trip per chunk: the field notes
/// measured this near 1 GB/s). Rows come as COPY binary tuples of one bytea.
pub fn copy_object(oid: u32, size: u64, row: u64) -> String {
    format!(
        "COPY (SELECT lo_get({oid}, o, {row}) FROM generate_series(0, {last}, {row}) o ORDER BY o) \
         TO STDOUT (FORMAT binary)",
        last = size as i64 - 1,
    )
}

/// How many bytes large object $1 holds at offset $2 (0 or 1): a byte past the
/// row's `total_size` means the object is longer than the row says. Fails when
/// the object does not exist.
pub const OBJECT_BYTE_AT: &str = "SELECT length(lo_get($1::oid, $2::int8, 1))::int4";
