//! Reading `/proc/self/mountinfo`. Hand-written because it is ten lines: the
//! `procfs` crate would bring a large dependency for one file. What matters is the
//! unescaping: the kernel writes a space, tab, newline and backslash in a path as
//! `\040`, `\011`, `\012` and `\134`, and a path may hold any of them.

use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One mounted file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted device.
    pub device: String,
    /// Where it is mounted.
    pub point: PathBuf,
    /// The file system type, e.g. `fuse.pgbootfs`, or `fuse` when the subtype was
    /// not recorded (a mount(2) by root through fuser).
    pub fstype: String,
    /// The mount source (`pgbootfs` for ours: fuser's fsname).
    pub source: String,
}

/// Every mount of this process's namespace, in mount order.
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| text.lines().filter_map(parse_line).collect())
        .unwrap_or_default()
}

/// The topmost mount at `point` (a canonical path), if any.
pub fn find(point: &std::path::Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.point == point)
}

/// Parses one line: `id parent major:minor root point options [tags...] - fstype ...`.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    Some(MountEntry {
        device: fields.get(2)?.to_string(),
        point: PathBuf::from(std::ffi::OsString::from_vec(unescape(fields.get(4)?))),
        fstype: fields.get(dash + 1)?.to_string(),
        source: String::from_utf8_lossy(&unescape(fields.get(dash + 2)?)).into_owned(),
    })
}

/// Undoes the kernel's octal escapes (`\NNN`) in a mountinfo field.
pub fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_escape_is_undone() {
        let line = r"36 35 0:52 / /tmp/a\040b\011c\012d\134e rw,nosuid - fuse.pgbootfs pgbootfs ro";
        let m = parse_line(line).unwrap();
        assert_eq!(m.point, PathBuf::from("/tmp/a b\tc\nd\\e"));
        assert_eq!(m.device, "0:52");
        assert_eq!(m.fstype, "fuse.pgbootfs");
        assert_eq!(m.source, "pgbootfs");
        // Optional tags before the dash do not shift the type.
        let tagged = "1 2 8:1 / / rw shared:1 master:2 - ext4 /dev/sda1 rw";
        assert_eq!(parse_line(tagged).unwrap().fstype, "ext4");
        assert_eq!(parse_line(tagged).unwrap().source, "/dev/sda1");
        // A backslash not followed by three octal digits stays.
        assert_eq!(unescape(r"a\9b\"), b"a\\9b\\");
    }
}
