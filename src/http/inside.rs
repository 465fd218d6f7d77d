//! `serve --inside`: the contents of browsable images at
//! `/.inside/OS/ARCH/SUBARCH/SERIES/VERSION/FILENAME/...`, the same paths as the
//! mount. Files are served with ranges and validators like images; directories
//! as HTML or JSON listings. Symlinks are listed with their targets and never
//! followed (a request for one is a 404); a file that is not world-readable
//! inside its image is refused (403) unless `--inside-private`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::warn;
use serde_json::{Value, json};

use crate::catalog::{Node, NodeKind, Tree};
use crate::handle::ErrorClass;
use crate::inside::{Archive, Entry, EntryKind, Format, Images, InsideError, Reason};

use super::path::encode;
use super::request::Head;
use super::response::{Body, InsideBody, RETRY_AFTER, Reply};
use super::{conditional, ranged};

/// The first path component of the inside view.
pub(super) const PREFIX: &str = ".inside";

/// The inside view of one server.
pub(super) struct Inside {
    pub images: Images,
    /// Serve files that are not world-readable inside their image.
    pub private: bool,
}

/// One name of a listing.
struct Item {
    name: String,
    kind: &'static str,
    size: u64,
    mtime: SystemTime,
    mode: Option<u16>,
    owner: Option<(u32, u32)>,
    target: Option<String>,
}

fn mtime(e: &Entry) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(e.mtime.max(0) as u64)
}

fn browsable(n: &Node) -> bool {
    match &n.kind {
        NodeKind::Dir(_) => true,
        NodeKind::File(f) => Format::of(&f.filetype).is_some(),
    }
}

/// The reply for an image's error: busy or unreachable 503, an image that cannot
/// be read 422, anything else 500; logged in one line.
fn failed(e: InsideError) -> Reply {
    warn!("http: {e}");
    match (&e.reason, e.class()) {
        (Reason::Corrupt(_) | Reason::Unsupported(_), _) => Reply::text(422),
        (_, ErrorClass::Busy | ErrorClass::Unavailable) => {
            Reply::text(503).header("Retry-After", RETRY_AFTER)
        }
        _ => Reply::text(500),
    }
}

/// Answers a request for `parts` (which start with [`PREFIX`]).
pub(super) fn reply(inside: &Inside, rq: &Head, tree: &Tree, parts: &[String]) -> Reply {
    let mut node = match tree.get(crate::catalog::ROOT) {
        Some(n) => n,
        None => return Reply::text(404),
    };
    let mut rest = &parts[1..];
    // Down the catalog's tree to a directory or a browsable image.
    while let (NodeKind::Dir(_), Some((c, more))) = (&node.kind, rest.split_first()) {
        match tree.lookup(node.ino, c) {
            Some(n) if browsable(n) => node = n,
            _ => return Reply::text(404),
        }
        rest = more;
    }
    let f = match &node.kind {
        NodeKind::Dir(_) => {
            let items = tree
                .children(node.ino)
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, n)| browsable(n))
                .map(|(name, n)| Item {
                    name: name.to_string(),
                    kind: "dir",
                    size: 0,
                    mtime: n.mtime,
                    mode: None,
                    owner: None,
                    target: None,
                })
                .collect();
            return listing(rq, items);
        }
        NodeKind::File(f) => f,
    };
    let Some(slot) = inside.images.slot(&node.path, f) else {
        return Reply::text(404);
    };
    let archive = match inside.images.archive(slot) {
        Some(Ok(a)) => a,
        Some(Err(e)) => return failed(e),
        None => return Reply::text(404),
    };
    match walk(archive.as_ref(), rest) {
        Ok(Some(e)) => entry_reply(inside, rq, &f.sha256, archive, e),
        Ok(None) => Reply::text(404),
        Err(e) => failed(e),
    }
}

/// The entry at `rest` below the image's root; None if there is none, or a
/// component on the way is not a directory (symlinks are not followed).
fn walk(archive: &dyn Archive, rest: &[String]) -> Result<Option<Entry>, InsideError> {
    let mut e = archive.entry(archive.root())?;
    for c in rest {
        if e.kind != EntryKind::Dir {
            return Ok(None);
        }
        match archive.lookup(e.id, c)? {
            Some(id) => e = archive.entry(id)?,
            None => return Ok(None),
        }
    }
    Ok(Some(e))
}

fn entry_reply(
    inside: &Inside,
    rq: &Head,
    sha256: &str,
    archive: std::sync::Arc<dyn Archive>,
    e: Entry,
) -> Reply {
    match e.kind {
        EntryKind::Dir => {
            let list = match archive.list(e.id) {
                Ok(l) => l,
                Err(err) => return failed(err),
            };
            let mut items = Vec::with_capacity(list.len());
            for d in list.iter() {
                let c = match archive.entry(d.id) {
                    Ok(c) => c,
                    Err(err) => return failed(err),
                };
                let (kind, target) = match &c.kind {
                    EntryKind::Dir => ("dir", None),
                    EntryKind::Symlink(t) => {
                        ("symlink", Some(String::from_utf8_lossy(t).into_owned()))
                    }
                    EntryKind::File | EntryKind::Special => ("file", None),
                };
                items.push(Item {
                    name: d.name.clone(),
                    kind,
                    size: if c.kind == EntryKind::Special {
                        0
                    } else {
                        c.size
                    },
                    mtime: mtime(&c),
                    mode: Some(c.mode & 0o1777),
                    owner: Some((c.uid, c.gid)),
                    target,
                });
            }
            listing(rq, items)
        }
        // Never followed: the target may lead out of the image.
        EntryKind::Symlink(_) => Reply::text(404),
        EntryKind::File | EntryKind::Special => {
            if e.mode & 0o004 == 0 && !inside.private {
                return Reply::text(403);
            }
            let size = if e.kind == EntryKind::Special {
                0
            } else {
                e.size
            };
            // The first bytes now, so a failure is a status, not a cut body.
            if size > 0 {
                let mut one = [0u8; 1];
                if let Err(err) = archive.read(e.id, 0, &mut one) {
                    return failed(err);
                }
            }
            let tag = conditional::etag(&format!("{sha256}-{}", e.id));
            ranged(rq, tag, mtime(&e), size, &|start, len| Body::Inside {
                file: InsideBody {
                    archive: archive.clone(),
                    id: e.id,
                },
                start,
                len,
            })
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A listing as JSON (`Accept: application/json`) or HTML.
fn listing(rq: &Head, items: Vec<Item>) -> Reply {
    let wants_json = rq
        .values("accept")
        .any(|v| v.to_ascii_lowercase().contains("application/json"));
    let reply = if wants_json {
        Reply::json(&Value::Array(
            items
                .iter()
                .map(|i| {
                    json!({
                        "name": i.name,
                        "type": i.kind,
                        "size": i.size,
                        "mtime": unix_secs(i.mtime),
                        "mode": i.mode.map(|m| format!("{m:04o}")),
                        "uid": i.owner.map(|o| o.0),
                        "gid": i.owner.map(|o| o.1),
                        "target": i.target,
                    })
                })
                .collect(),
        ))
    } else {
        let path = rq.target.split(['?', '#']).next().unwrap_or("/");
        let base = path.trim_end_matches('/');
        let title = html_escape(path);
        let mut out = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
             <title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n\
             <table>\n<tr><th>Name</th><th>Size</th><th>Mode</th><th>Owner</th></tr>\n\
             <tr><td><a href=\"../\">../</a></td><td></td><td></td><td></td></tr>\n"
        );
        for i in &items {
            let mode = i.mode.map(|m| format!("{m:04o}")).unwrap_or_default();
            let owner = i.owner.map(|(u, g)| format!("{u}:{g}")).unwrap_or_default();
            let name = match (i.kind, &i.target) {
                ("symlink", Some(t)) => {
                    format!("{} -&gt; {}", html_escape(&i.name), html_escape(t))
                }
                (kind, _) => {
                    let slash = if kind == "dir" { "/" } else { "" };
                    format!(
                        "<a href=\"{}/{}{slash}\">{}{slash}</a>",
                        html_escape(base),
                        html_escape(&encode(&i.name)),
                        html_escape(&i.name)
                    )
                }
            };
            out.push_str(&format!(
                "<tr><td>{name}</td><td>{}</td><td>{mode}</td><td>{owner}</td></tr>\n",
                i.size
            ));
        }
        out.push_str("</table></body></html>\n");
        Reply::new(200, Body::Bytes(out.into_bytes()))
            .header("Content-Type", "text/html; charset=utf-8")
    };
    reply.header("Vary", "Accept")
}
