//! The password and group databases: the one place pgbootfs asks who it runs as,
//! and who a user or group named on the command line is (`export --owner`). libpq takes the default role name from it, and its home
//! directory when `HOME` is unset (a systemd service without `User=`, or a daemon
//! started by mount(8), which clears the environment).
//!
//! `getpwuid_r` rather than `getpwuid`: the latter returns static storage that any
//! other thread's lookup may overwrite while it is read, and pgbootfs connects
//! from many threads.

use std::ffi::{CStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// What the password database says about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The login name (`pw_name`).
    pub name: OsString,
    /// The home directory (`pw_dir`), if the entry has one.
    pub home: Option<OsString>,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
}

/// The buffer is grown up to this size when the entry does not fit (ERANGE); an
/// entry bigger than this is treated as absent.
const MAX_BUFFER: usize = 1 << 20;

/// The effective user's login name, as text: libpq's default role and database.
pub fn name() -> Option<String> {
    current().map(|u| u.name.to_string_lossy().into_owned())
}

/// The effective user's home directory, as text: where libpq looks for
/// `.pgpass`, `.pg_service.conf` and `.postgresql/` when `HOME` is unset.
pub fn home() -> Option<String> {
    current()?.home.map(|h| h.to_string_lossy().into_owned())
}

/// The entry of the effective user, or None when there is none (a uid with no
/// entry, as in some containers) or it cannot be read.
pub fn current() -> Option<User> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    lookup(uid)
}

/// The entry of user `uid`.
pub fn by_uid(uid: u32) -> Option<User> {
    lookup(uid)
}

/// The entry of the user named `name`.
pub fn by_name(name: &str) -> Option<User> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: as in `lookup`, with getpwnam_r and a NUL-terminated name that
    // outlives the call.
    read_entry(|entry, buf, len, found| unsafe {
        libc::getpwnam_r(c.as_ptr(), entry, buf, len, found)
    })
}

/// The id of the group named `name`.
pub fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: group is a plain C struct for which all-zero bytes are valid;
        // getgrnam_r fills it before it is read.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated,
        // `entry` and `found` are locals, `buf` is writable for its length. Only
        // gr_gid, a plain number, is read afterwards.
        let rc = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut entry,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < MAX_BUFFER {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        return (rc == 0 && !found.is_null()).then_some(entry.gr_gid);
    }
}

fn lookup(uid: libc::uid_t) -> Option<User> {
    // SAFETY: every pointer is valid for the call: `entry` and `found` are
    // locals, and `buf` is writable for `len` bytes (see `read_entry`).
    read_entry(|entry, buf, len, found| unsafe { libc::getpwuid_r(uid, entry, buf, len, found) })
}

/// Runs a `getpw*_r` call with a buffer that grows on ERANGE, and copies the
/// entry out of it.
fn read_entry(
    call: impl Fn(*mut libc::passwd, *mut libc::c_char, usize, *mut *mut libc::passwd) -> libc::c_int,
) -> Option<User> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is a plain C struct for which all-zero bytes are valid
        // (null pointers, zero ids); the call fills it before it is read.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // The strings written into `buf` are copied out below, before `buf`
        // changes or is dropped.
        let rc = call(&mut entry, buf.as_mut_ptr().cast(), buf.len(), &mut found);
        if rc == libc::ERANGE && buf.len() < MAX_BUFFER {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || found.is_null() || entry.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name and pw_dir are null or point at NUL-terminated
        // strings inside `buf`, which is alive and unchanged here.
        let (name, home) = unsafe { (copy(entry.pw_name), copy(entry.pw_dir)) };
        return Some(User {
            name: name?,
            home: home.filter(|h| !h.is_empty()),
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        });
    }
}

/// Copies a C string out, or None for a null pointer.
///
/// # Safety
/// `p` must be null or point at a NUL-terminated string valid for this call.
unsafe fn copy(p: *const libc::c_char) -> Option<OsString> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated, as the caller promises.
    let s = unsafe { CStr::from_ptr(p) };
    Some(std::ffi::OsStr::from_bytes(s.to_bytes()).to_os_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_user_is_the_one_id_names() {
        let user = current().expect("the test runs as a user with an entry");
        let out = std::process::Command::new("id")
            .arg("-un")
            .output()
            .expect("id runs");
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(user.name, OsString::from(name));
        assert!(user.home.is_some_and(|h| h.as_bytes().starts_with(b"/")));
    }

    #[test]
    fn root_has_an_entry_and_a_missing_uid_has_none() {
        assert_eq!(lookup(0).map(|u| u.name), Some(OsString::from("root")));
        assert_eq!(lookup(4_000_000_000), None);
    }

    #[test]
    fn users_and_groups_by_name() {
        let root = by_name("root").expect("root has an entry");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(by_uid(0), Some(root));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(by_name("no-such-user-here"), None);
        assert_eq!(group_id("no-such-group-here"), None);
    }
}
