//! The file-system side of `export`: the mark that records a hash check (an
//! extended attribute on the file itself), the free space of the image storage,
//! and `--owner`.

use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{CHECKED_XATTR, io_err};
use crate::store::StoreError;

/// The mark's value for a file with `meta` holding `sha256`.
pub(super) fn checked_stamp(sha256: &str, meta: &fs::Metadata) -> String {
    format!(
        "{sha256} {} {}.{:09}",
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

pub(super) fn read_xattr(path: &Path) -> Option<String> {
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = CString::new(CHECKED_XATTR).ok()?;
    let mut buf = [0u8; 256];
    // SAFETY: both strings are NUL-terminated; the buffer's length is passed.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    String::from_utf8(buf[..n as usize].to_vec()).ok()
}

pub(super) fn write_xattr_path(path: &Path, value: &str) -> std::io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let name = CString::new(CHECKED_XATTR)?;
    // SAFETY: both strings are NUL-terminated; the value's length is passed.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn write_xattr_fd(file: &File, value: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let name = CString::new(CHECKED_XATTR)?;
    // SAFETY: the descriptor is open; the name is NUL-terminated; the value's
    // length is passed.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes free to an unprivileged writer on DIR's file system (or, when DIR does
/// not exist yet, on its nearest existing ancestor's).
pub(super) fn free_space(dir: &Path) -> Result<u64, StoreError> {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => {
                at = Path::new(".");
                break;
            }
        }
    }
    let p = CString::new(at.as_os_str().as_bytes())
        .map_err(|e| io_err(dir, "checking the free space of", e.into()))?;
    // SAFETY: statvfs is plain data, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes only the struct passed; the path is NUL-terminated.
    if unsafe { libc::statvfs(p.as_ptr(), &mut st) } != 0 {
        return Err(io_err(
            at,
            "checking the free space of",
            std::io::Error::last_os_error(),
        ));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// `USER[:GROUP]` (names or numbers) as (uid, gid); GROUP defaults to USER's
/// primary group.
pub(super) fn resolve_owner(spec: &str) -> Result<(u32, u32), StoreError> {
    use crate::passwd;
    let bad = |reason: String| StoreError::BadOwner {
        owner: spec.to_string(),
        reason,
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, passwd::by_uid(uid).map(|u| u.gid)),
        Err(_) => {
            let u = passwd::by_name(user)
                .ok_or_else(|| bad(format!("no user {user:?} on this host")))?;
            (u.uid, Some(u.gid))
        }
    };
    let gid = match group {
        None | Some("") => primary.ok_or_else(|| {
            bad(format!(
                "user {uid} has no entry on this host to take a group from; give USER:GROUP"
            ))
        })?,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                passwd::group_id(g).ok_or_else(|| bad(format!("no group {g:?} on this host")))?
            }
        },
    };
    Ok((uid, gid))
}
