//! Range and conditional-request rules (RFC 9110 sections 13 and 14) for one file
//! with a strong ETag and a Last-Modified date.

use std::time::SystemTime;

/// What a `Range` header asks of a file of known length.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable single range: send the whole file (no header, a syntax error, an
    /// unknown unit, or several ranges, which are answered with the full 200).
    Full,
    /// One satisfiable range: first and last byte, inclusive.
    Part(u64, u64),
    /// One range that misses the file entirely: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header value for a file of `len` bytes.
pub fn parse_range(value: &str, len: u64) -> RangeAsk {
    let value = value.trim();
    let Some((unit, set)) = value.split_once('=') else {
        return RangeAsk::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeAsk::Full;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    // Several ranges get the whole body: simpler for clients than multipart.
    let [spec] = specs.as_slice() else {
        return RangeAsk::Full;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeAsk::Full;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // A number too large for u64 is still a valid (huge) position.
        Some(s.parse().unwrap_or(u64::MAX))
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // -n: the last n bytes.
        (true, false) => match num(last) {
            None => RangeAsk::Full,
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if len == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part(len - n.min(len), len - 1),
        },
        // a-: from a to the end.
        (false, true) => match num(first) {
            None => RangeAsk::Full,
            Some(a) if a >= len => RangeAsk::Unsatisfiable,
            Some(a) => RangeAsk::Part(a, len - 1),
        },
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= len {
                    RangeAsk::Unsatisfiable
                } else {
                    RangeAsk::Part(a, b.min(len - 1))
                }
            }
            // b < a or not numbers: invalid, ignored.
            _ => RangeAsk::Full,
        },
        (true, true) => RangeAsk::Full,
    }
}

/// The strong entity tag of a file: its sha256, quoted.
pub fn etag(sha256: &str) -> String {
    format!("\"{sha256}\"")
}

/// Splits a list of entity tags; `None` for `*`.
fn tags(value: &str) -> Option<Vec<&str>> {
    if value.trim() == "*" {
        return None;
    }
    Some(
        value
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

/// If-None-Match: true when a tag matches ours (weak comparison), or `*`.
pub fn none_match_hits(values: &[&str], our: &str) -> bool {
    values.iter().any(|v| match tags(v) {
        None => true,
        Some(list) => list
            .iter()
            .any(|t| t.strip_prefix("W/").unwrap_or(t) == our),
    })
}

/// If-Match: true when a tag matches ours strongly (a weak tag never does), or
/// `*` (the file exists).
pub fn match_holds(values: &[&str], our: &str) -> bool {
    values.iter().any(|v| match tags(v) {
        None => true,
        Some(list) => list.contains(&our),
    })
}

/// HTTP-date to time; `None` when it does not parse.
pub fn parse_date(value: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(value.trim()).ok()
}

/// Time to IMF-fixdate.
pub fn fmt_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// Whether `mtime` is not later than `since`, at HTTP-date (1 s) resolution.
pub fn not_modified_since(mtime: SystemTime, since: SystemTime) -> bool {
    secs(mtime) <= secs(since)
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// If-Range: whether the validator still names our representation. An entity tag
/// must match strongly; a date must equal Last-Modified exactly.
pub fn if_range_holds(value: &str, our_etag: &str, mtime: SystemTime) -> bool {
    let v = value.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        return v == our_etag;
    }
    parse_date(v).is_some_and(|d| secs(d) == secs(mtime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ranges() {
        use RangeAsk::*;
        assert_eq!(parse_range("bytes=0-99", 1000), Part(0, 99));
        assert_eq!(parse_range("bytes=990-2000", 1000), Part(990, 999));
        assert_eq!(parse_range("bytes=500-", 1000), Part(500, 999));
        assert_eq!(parse_range("bytes=-100", 1000), Part(900, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), Part(0, 999));
        assert_eq!(parse_range("Bytes = 1-1 ", 1000), Part(1, 1));
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=2000-3000", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 10),
            Unsatisfiable
        );
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Full);
        assert_eq!(parse_range("bytes=5-1", 1000), Full);
        assert_eq!(parse_range("bytes=a-b", 1000), Full);
        assert_eq!(parse_range("bytes=-", 1000), Full);
        assert_eq!(parse_range("items=0-1", 1000), Full);
        assert_eq!(parse_range("garbage", 1000), Full);
    }

    #[test]
    fn validators() {
        let tag = etag("abc");
        assert!(none_match_hits(&["\"x\", \"abc\""], &tag));
        assert!(none_match_hits(&["W/\"abc\""], &tag));
        assert!(none_match_hits(&["*"], &tag));
        assert!(!none_match_hits(&["\"abcd\""], &tag));
        assert!(match_holds(&["\"x\"", " \"abc\" "], &tag));
        assert!(match_holds(&["*"], &tag));
        assert!(!match_holds(&["W/\"abc\""], &tag));
        assert!(!match_holds(&["\"x\""], &tag));
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        let date = fmt_date(t);
        assert_eq!(date, "Tue, 14 Nov 2023 22:13:20 GMT");
        assert!(not_modified_since(t, parse_date(&date).unwrap()));
        assert!(!not_modified_since(
            t + Duration::from_secs(1),
            parse_date(&date).unwrap()
        ));
        assert!(if_range_holds(&tag, &tag, t));
        assert!(!if_range_holds("W/\"abc\"", &tag, t));
        assert!(if_range_holds(&date, &tag, t));
        assert!(!if_range_holds("Tue, 14 Nov 2023 22:13:21 GMT", &tag, t));
    }
}
