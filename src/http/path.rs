//! Request targets to tree paths: split on `/` first, then percent-decode each
//! segment, so an encoded `/` can never create a path level. Nothing here touches
//! the local file system; the result is only ever looked up in the catalog.

/// Why a target was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// Malformed: not origin-form, a bad `%` escape, an empty, `.` or `..` segment,
    /// or a decoded `/` or NUL. Answered with 400.
    Bad,
    /// Well-formed but names nothing we could serve (e.g. not UTF-8). Answered with 404.
    NotFound,
}

/// What a target names, before it is looked up.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `streams/v1/index.json`.
    StreamIndex,
    /// `streams/v1/maas:v2:download.json`.
    StreamProducts,
    /// `boot-resources/<sha256>/`: a file by its content, as MAAS 3.5+ racks fetch.
    ByHash(String),
    /// A tree path: its decoded components, and whether the target ended in `/`.
    Tree(Vec<String>, bool),
}

/// The prefix MAAS regions serve the images under.
pub const MAAS_PREFIX: [&str; 2] = ["MAAS", "images-stream"];

/// Parses the raw request target (query and fragment are ignored).
pub fn parse(raw: &str) -> Result<Target, PathError> {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    // Only origin-form: absolute-form and authority-form are refused.
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::Bad);
    };
    let mut parts: Vec<String> = Vec::new();
    // `/` alone ends in a slash too.
    let mut trailing = rest.is_empty();
    if !rest.is_empty() {
        let raw_parts: Vec<&str> = rest.split('/').collect();
        let last = raw_parts.len() - 1;
        for (i, seg) in raw_parts.iter().enumerate() {
            if seg.is_empty() {
                if i == last {
                    trailing = true;
                    continue;
                }
                return Err(PathError::Bad);
            }
            parts.push(decode(seg)?);
        }
    }
    let mut view: &[String] = &parts;
    if let [maas, resources, sha] = view
        && maas == MAAS_PREFIX[0]
        && resources == "boot-resources"
    {
        return Ok(Target::ByHash(sha.clone()));
    }
    if view.len() >= 2 && view[0] == MAAS_PREFIX[0] && view[1] == MAAS_PREFIX[1] {
        view = &view[2..];
    }
    let names: Vec<&str> = view.iter().map(String::as_str).collect();
    Ok(match names.as_slice() {
        ["boot-resources", sha] if parts.len() == 2 => Target::ByHash(sha.to_string()),
        ["streams", "v1", "index.json"] if !trailing => Target::StreamIndex,
        ["streams", "v1", "maas:v2:download.json"] if !trailing => Target::StreamProducts,
        _ => Target::Tree(view.to_vec(), trailing),
    })
}

/// Decodes one segment strictly.
fn decode(seg: &str) -> Result<String, PathError> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(PathError::Bad)?;
            let hi = (hex[0] as char).to_digit(16).ok_or(PathError::Bad)?;
            let lo = (hex[1] as char).to_digit(16).ok_or(PathError::Bad)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.is_empty() || out == b"." || out == b".." || out.contains(&b'/') || out.contains(&0) {
        return Err(PathError::Bad);
    }
    // Overlong and other invalid UTF-8 (`%c0%ae`) can name nothing in the catalog.
    String::from_utf8(out).map_err(|_| PathError::NotFound)
}

/// Percent-encodes one component for use in an href.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &c in name.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(parts: &[&str], trailing: bool) -> Result<Target, PathError> {
        Ok(Target::Tree(
            parts.iter().map(|s| s.to_string()).collect(),
            trailing,
        ))
    }

    #[test]
    fn targets() {
        assert_eq!(parse("/"), tree(&[], true));
        assert_eq!(parse("/ubuntu/amd64/"), tree(&["ubuntu", "amd64"], true));
        assert_eq!(parse("/a%20b?x=1"), tree(&["a b"], false));
        assert_eq!(
            parse("/MAAS/images-stream/ubuntu"),
            tree(&["ubuntu"], false)
        );
        assert_eq!(parse("/streams/v1/index.json"), Ok(Target::StreamIndex));
        assert_eq!(
            parse("/MAAS/images-stream/streams/v1/maas:v2:download.json"),
            Ok(Target::StreamProducts)
        );
        assert_eq!(
            parse("/MAAS/images-stream/streams/v1/maas%3Av2%3Adownload.json"),
            Ok(Target::StreamProducts)
        );
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "ubuntu",
            "http://h/ubuntu",
            "/..",
            "/a/../b",
            "/%2e%2e/x",
            "/.",
            "/a//b",
            "/a%2fb",
            "/a%2Fb",
            "/a%00b",
            "/a%",
            "/a%zz",
            "/a%2",
        ] {
            assert_eq!(parse(bad), Err(PathError::Bad), "{bad:?}");
        }
        assert_eq!(parse("/%c0%ae%c0%ae/x"), Err(PathError::NotFound));
        assert_eq!(parse("/%ff"), Err(PathError::NotFound));
    }

    #[test]
    fn encoding_round_trips() {
        for name in ["a b", "x%y", "é", "maas:v2", "q?#"] {
            assert_eq!(decode(&encode(name)).unwrap(), name);
        }
    }
}
