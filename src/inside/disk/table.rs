//! Partition tables, parsed here: GPT (UEFI spec, chapter 5: a header at LBA 1,
//! an array of entries, both with CRC32s, a backup header at the disk's last
//! LBA) and MBR (four 16-byte slots at byte 446, logical partitions in a chain
//! of extended boot records). Both formats are a few hundred bytes; the `gpt`
//! crate wants a `Read + Write + Seek` device it may write, and a table is read
//! once per image, so this is by hand (doc/DEVELOPMENT.md).
//!
//! Numbering follows the kernel (block/partitions/efi.c, msdos.c): a GPT
//! partition is its entry's index + 1; an MBR primary its slot (1-4), logical
//! partitions 5, 6, ... in chain order. The extended partition itself holds no
//! file system and is not shown.

use super::super::bytes::Bytes;
use super::super::error::InsideError;

/// GPT header signature.
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Most GPT entries read (the usual array has 128; ids leave room for 255).
const MAX_GPT_ENTRIES: u32 = 1024;
/// Highest partition number shown (8 bits of an id).
pub const MAX_NUMBER: u32 = 255;
/// Most logical partitions followed in an MBR's chain.
const MAX_LOGICAL: u32 = 128;

/// One partition: where it is and what the table says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The kernel's number (`p1` is 1).
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Bytes, as the table says (the image may be shorter: reads past it fail).
    pub len: u64,
    /// What the table says of it, for messages: the GPT type GUID and name, or
    /// the MBR type byte.
    pub kind: String,
}

fn corrupt(bytes: &dyn Bytes, why: impl Into<String>) -> InsideError {
    InsideError::corrupt(bytes.name(), why)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

/// A GUID as written (the first three fields little-endian).
fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

/// The GPT's partitions, if the disk has a GPT (with 512- or 4096-byte
/// sectors). A valid signature with a broken header and a broken backup is an
/// error; no signature is None.
pub fn gpt(bytes: &dyn Bytes) -> Result<Option<Vec<Partition>>, InsideError> {
    for sector in [512u64, 4096] {
        if bytes.size() < sector * 2 {
            continue;
        }
        let primary = bytes.read_vec(sector, sector as usize)?;
        if &primary[..8] != GPT_SIGNATURE {
            continue;
        }
        let header = match check_header(&primary, sector) {
            Ok(()) => primary,
            Err(why) => {
                // The primary is damaged: the backup at the disk's last LBA.
                let last = (bytes.size() / sector).saturating_sub(1) * sector;
                let backup = bytes.read_vec(last, sector as usize)?;
                if &backup[..8] != GPT_SIGNATURE || check_header(&backup, sector).is_err() {
                    return Err(corrupt(
                        bytes,
                        format!("GPT header: {why}, and no valid backup header"),
                    ));
                }
                log::warn!(
                    "inside {}: primary GPT header {why}; using the backup",
                    bytes.name()
                );
                backup
            }
        };
        return gpt_entries(bytes, &header, sector).map(Some);
    }
    Ok(None)
}

/// Checks a GPT header's size and CRC32.
fn check_header(h: &[u8], sector: u64) -> Result<(), String> {
    let size = le32(h, 12) as usize;
    if !(92..=sector as usize).contains(&size) {
        return Err(format!("size {size} is not 92..{sector}"));
    }
    let mut copy = h[..size].to_vec();
    copy[16..20].fill(0);
    let want = le32(h, 16);
    let got = crc32fast::hash(&copy);
    if want != got {
        return Err(format!("checksum {want:08x} != {got:08x}"));
    }
    Ok(())
}

fn gpt_entries(bytes: &dyn Bytes, h: &[u8], sector: u64) -> Result<Vec<Partition>, InsideError> {
    let lba = le64(h, 72);
    let count = le32(h, 80);
    let size = le32(h, 84);
    if !(128..=4096).contains(&size) || !size.is_multiple_of(8) {
        return Err(corrupt(bytes, format!("GPT entry size {size}")));
    }
    if count > MAX_GPT_ENTRIES {
        return Err(corrupt(
            bytes,
            format!("GPT has {count} entries (at most {MAX_GPT_ENTRIES} read)"),
        ));
    }
    let at = lba
        .checked_mul(sector)
        .ok_or_else(|| corrupt(bytes, format!("GPT entries at LBA {lba}")))?;
    let array = bytes.read_vec(at, (count * size) as usize)?;
    let want = le32(h, 88);
    let got = crc32fast::hash(&array);
    if want != got {
        return Err(corrupt(
            bytes,
            format!("GPT entry array checksum {want:08x} != {got:08x}"),
        ));
    }
    let mut parts = Vec::new();
    for (i, e) in array.chunks_exact(size as usize).enumerate() {
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let number = i as u32 + 1;
        if number > MAX_NUMBER {
            log::warn!(
                "inside {}: GPT partition {number} not shown (at most {MAX_NUMBER})",
                bytes.name()
            );
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let range = first
            .checked_mul(sector)
            .zip(last.checked_add(1).and_then(|l| l.checked_mul(sector)))
            .filter(|(s, end)| s < end);
        let Some((start, end)) = range else {
            return Err(corrupt(
                bytes,
                format!("GPT partition {number}: LBAs {first}..{last}"),
            ));
        };
        let name: String = char::decode_utf16(
            e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|c| *c != 0),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
        parts.push(Partition {
            number,
            start,
            len: end - start,
            kind: format!("GPT type {}, name {name:?}", guid(&e[..16])),
        });
    }
    Ok(parts)
}

/// Is MBR type `t` an extended partition (a chain of logical ones)?
fn extended(t: u8) -> bool {
    matches!(t, 0x05 | 0x0f | 0x85)
}

/// The MBR's partitions, if sector 0 is an MBR with at least one. A protective
/// MBR (type 0xee) without a GPT is an error.
pub fn mbr(bytes: &dyn Bytes) -> Result<Option<Vec<Partition>>, InsideError> {
    if bytes.size() < 512 {
        return Ok(None);
    }
    let s = bytes.read_vec(0, 512)?;
    if s[510..512] != [0x55, 0xaa] {
        return Ok(None);
    }
    let slots: Vec<&[u8]> = s[446..510].chunks_exact(16).collect();
    // A boot flag other than 0 or 0x80 means this is not a table (boot code).
    if slots.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok(None);
    }
    let mut parts = Vec::new();
    for (i, e) in slots.iter().enumerate() {
        let t = e[4];
        if t == 0 {
            continue;
        }
        if t == 0xee {
            return Err(corrupt(
                bytes,
                "protective MBR (type 0xee) but no valid GPT header at LBA 1",
            ));
        }
        let (first, count) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        if count == 0 {
            continue;
        }
        if extended(t) {
            logical(bytes, first, &mut parts)?;
            continue;
        }
        parts.push(Partition {
            number: i as u32 + 1,
            start: first * 512,
            len: count * 512,
            kind: format!("MBR type {t:#04x}"),
        });
    }
    parts.sort_by_key(|p| p.number);
    Ok((!parts.is_empty()).then_some(parts))
}

/// Follows the chain of extended boot records from LBA `ext`: each holds one
/// logical partition (relative to itself) and the next record (relative to
/// `ext`). The chain must move forward and is followed [`MAX_LOGICAL`] times
/// at most, so a looping chain ends.
fn logical(bytes: &dyn Bytes, ext: u64, parts: &mut Vec<Partition>) -> Result<(), InsideError> {
    let mut at = ext;
    let mut number = 5;
    for _ in 0..MAX_LOGICAL {
        let s = bytes.read_vec(at * 512, 512)?;
        if s[510..512] != [0x55, 0xaa] {
            return Err(corrupt(
                bytes,
                format!("extended boot record at LBA {at} has no 55aa signature"),
            ));
        }
        let (this, next) = (&s[446..462], &s[462..478]);
        let (first, count) = (u64::from(le32(this, 8)), u64::from(le32(this, 12)));
        if this[4] != 0 && count > 0 {
            parts.push(Partition {
                number,
                start: (at + first) * 512,
                len: count * 512,
                kind: format!("MBR type {:#04x} (logical)", this[4]),
            });
            number += 1;
        }
        let rel = u64::from(le32(next, 8));
        if next[4] == 0 || rel == 0 {
            return Ok(());
        }
        let to = ext + rel;
        if to <= at {
            return Err(corrupt(
                bytes,
                format!("extended boot record chain goes back (LBA {at} to {to})"),
            ));
        }
        at = to;
    }
    Err(corrupt(
        bytes,
        format!("more than {MAX_LOGICAL} logical partitions"),
    ))
}
