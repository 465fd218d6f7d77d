//! Directory listings: HTML for browsers, JSON for programs.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::catalog::{Node, NodeKind, Tree};

use super::path::encode;

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The entries of `dir`, in name order (none for a file).
fn entries<'a>(tree: &'a Tree, dir: &Node) -> Vec<(&'a str, &'a Node)> {
    tree.children(dir.ino).unwrap_or_default()
}

/// A JSON array of `{name, type, size, mtime, sha256}` (sha256 null for directories,
/// mtime in Unix seconds).
pub fn json(tree: &Tree, dir: &Node) -> Value {
    Value::Array(
        entries(tree, dir)
            .into_iter()
            .map(|(name, node)| {
                let (kind, sha) = match &node.kind {
                    NodeKind::Dir(_) => ("dir", Value::Null),
                    NodeKind::File(f) => ("file", Value::String(f.sha256.clone())),
                };
                json!({
                    "name": name,
                    "type": kind,
                    "size": node.size(),
                    "mtime": unix_secs(node.mtime),
                    "sha256": sha,
                })
            })
            .collect(),
    )
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An HTML page listing `dir`; `base` is the URL prefix (`""` or `/MAAS/images-stream`)
/// the links are built under.
pub fn html(tree: &Tree, dir: &Node, base: &str) -> String {
    let mut href_dir = String::from(base);
    for c in dir.path.split('/').filter(|c| !c.is_empty()) {
        href_dir.push('/');
        href_dir.push_str(&encode(c));
    }
    let title = html_escape(&dir.path);
    let mut out = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n\
         <table>\n<tr><th>Name</th><th>Size</th><th>sha256</th></tr>\n"
    );
    if dir.path != "/" {
        let up = href_dir.rsplit_once('/').map_or("", |(a, _)| a);
        out.push_str(&format!(
            "<tr><td><a href=\"{}/\">../</a></td><td></td><td></td></tr>\n",
            html_escape(up)
        ));
    }
    for (name, node) in entries(tree, dir) {
        let (slash, size, sha) = match &node.kind {
            NodeKind::Dir(_) => ("/", String::new(), ""),
            NodeKind::File(f) => ("", f.size.to_string(), f.sha256.as_str()),
        };
        out.push_str(&format!(
            "<tr><td><a href=\"{}/{}{slash}\">{}{slash}</a></td><td>{size}</td><td>{}</td></tr>\n",
            html_escape(&href_dir),
            html_escape(&encode(name)),
            html_escape(name),
            html_escape(sha)
        ));
    }
    out.push_str("</table></body></html>\n");
    out
}
