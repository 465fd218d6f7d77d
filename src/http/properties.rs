//! Property tests of the HTTP parsers: generated inputs never make them panic, a
//! target never yields a path component that could leave the catalog, and results
//! equal those of plain reference implementations written here from the RFC text
//! (or, where the input is built from a known structure, the structure itself).

use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::conditional::{
    RangeAsk, etag, fmt_date, if_range_holds, match_holds, none_match_hits, not_modified_since,
    parse_date, parse_range,
};
use super::path::{self, MAAS_PREFIX, PathError, Target};
use super::request::{self, Local};

// --- request targets ---

/// Percent-decoding one segment, byte by byte through a hex-digit table.
fn ref_decode(seg: &str) -> Result<String, PathError> {
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let b = seg.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        if i + 2 >= b.len() {
            return Err(PathError::Bad);
        }
        match (hex(b[i + 1]), hex(b[i + 2])) {
            (Some(h), Some(l)) => out.push(h << 4 | l),
            _ => return Err(PathError::Bad),
        }
        i += 3;
    }
    let bad =
        out.is_empty() || out == b"." || out == b".." || out.iter().any(|&c| c == b'/' || c == 0);
    if bad {
        return Err(PathError::Bad);
    }
    String::from_utf8(out).map_err(|_| PathError::NotFound)
}

/// What a target names, from RFC 3986's path-abempty and the tree's rules.
fn ref_parse(raw: &str) -> Result<Target, PathError> {
    let cut = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = &raw[..cut];
    if !path.starts_with('/') {
        return Err(PathError::Bad);
    }
    let segs: Vec<&str> = path[1..].split('/').collect();
    let mut names = Vec::new();
    // `/` alone is the root, which ends in its slash.
    let mut trailing = path.len() == 1;
    if path.len() > 1 {
        for (i, seg) in segs.iter().enumerate() {
            if seg.is_empty() && i + 1 == segs.len() {
                trailing = true;
            } else if seg.is_empty() {
                return Err(PathError::Bad);
            } else {
                names.push(ref_decode(seg)?);
            }
        }
    }
    if names.len() >= 2 && names[0] == MAAS_PREFIX[0] && names[1] == MAAS_PREFIX[1] {
        names.drain(..2);
    }
    let stream = |file: &str| {
        !trailing
            && names.len() == 3
            && names[0] == "streams"
            && names[1] == "v1"
            && names[2] == file
    };
    Ok(if stream("index.json") {
        Target::StreamIndex
    } else if stream("maas:v2:download.json") {
        Target::StreamProducts
    } else {
        Target::Tree(names, trailing)
    })
}

/// Targets built from the pieces that matter: separators, escapes (valid, broken,
/// of `/`, `.`, NUL, invalid UTF-8), dots, query and fragment marks.
fn target() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%".to_string()),
        Just("%2f".to_string()),
        Just("%2E".to_string()),
        Just("%00".to_string()),
        Just("%c3%a9".to_string()),
        Just("%ff".to_string()),
        Just("%c0%ae".to_string()),
        Just("%4".to_string()),
        Just("%zz".to_string()),
        Just("?".to_string()),
        Just("#".to_string()),
        Just("MAAS/images-stream".to_string()),
        Just("streams/v1/index.json".to_string()),
        Just("é".to_string()),
        "[a-zA-Z0-9:@+-]{1,4}",
    ];
    (any::<bool>(), prop::collection::vec(piece, 0..12)).prop_map(|(slash, pieces)| {
        let body: String = pieces.concat();
        if slash { format!("/{body}") } else { body }
    })
}

/// Any name a catalog row could give (no `/`, no NUL, not `.` or `..`).
fn name() -> impl Strategy<Value = String> {
    "[^/\u{0}]{1,8}".prop_filter("a dot name", |n| n != "." && n != "..")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn targets_match_the_reference(raw in target()) {
        let got = path::parse(&raw);
        prop_assert_eq!(&got, &ref_parse(&raw), "{:?}", raw);
        if let Ok(Target::Tree(parts, _)) = got {
            for p in parts {
                prop_assert!(!p.is_empty() && p != "." && p != "..");
                prop_assert!(!p.contains('/') && !p.contains('\0'));
            }
        }
    }

    #[test]
    fn any_string_target_is_safe(raw in "\\PC{0,40}") {
        let got = path::parse(&raw);
        prop_assert_eq!(&got, &ref_parse(&raw));
    }

    #[test]
    fn encoded_names_come_back(names in prop::collection::vec(name(), 1..6)) {
        prop_assume!(!(names.len() >= 2 && names[0] == MAAS_PREFIX[0] && names[1] == MAAS_PREFIX[1]));
        prop_assume!(names.first().map(String::as_str) != Some("streams"));
        let raw: String = names.iter().map(|n| format!("/{}", path::encode(n))).collect();
        prop_assert_eq!(path::parse(&raw), Ok(Target::Tree(names, false)));
    }
}

// --- Range ---

/// RFC 9110 14.1.2 for one range over `len` bytes (several: the whole file).
fn ref_range(value: &str, len: u64) -> RangeAsk {
    let v = value.trim();
    let Some(eq) = v.find('=') else {
        return RangeAsk::Full;
    };
    if !v[..eq].trim().eq_ignore_ascii_case("bytes") {
        return RangeAsk::Full;
    }
    let specs: Vec<&str> = v[eq + 1..]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if specs.len() != 1 {
        return RangeAsk::Full;
    }
    let Some(dash) = specs[0].find('-') else {
        return RangeAsk::Full;
    };
    let number = |s: &str| -> Option<u128> {
        let s = s.trim();
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        // Anything past u64 is as good as infinite.
        Some(s.chars().fold(0u128, |n, c| {
            (n * 10 + c.to_digit(10).unwrap_or(0) as u128).min(u64::MAX as u128)
        }))
    };
    let (a, b) = (&specs[0][..dash], &specs[0][dash + 1..]);
    let len = len as u128;
    let part = |x: u128, y: u128| RangeAsk::Part(x as u64, y as u64);
    match (
        a.trim().is_empty(),
        b.trim().is_empty(),
        number(a),
        number(b),
    ) {
        (true, false, _, Some(n)) if n == 0 || len == 0 => RangeAsk::Unsatisfiable,
        (true, false, _, Some(n)) => part(len.saturating_sub(n), len - 1),
        (false, true, Some(x), _) if x >= len => RangeAsk::Unsatisfiable,
        (false, true, Some(x), _) => part(x, len - 1),
        (false, false, Some(x), Some(y)) if x <= y && x >= len => RangeAsk::Unsatisfiable,
        (false, false, Some(x), Some(y)) if x <= y => part(x, y.min(len - 1)),
        _ => RangeAsk::Full,
    }
}

fn range_value() -> impl Strategy<Value = String> {
    let num = prop_oneof![
        Just(String::new()),
        "[0-9]{1,3}",
        "[0-9]{18,22}",
        Just("-1".to_string()),
        Just("x".to_string()),
    ];
    let spec = (
        num.clone(),
        prop_oneof![Just("-"), Just(""), Just("--")],
        num,
        "[ ]{0,2}",
    )
        .prop_map(|(a, d, b, sp)| format!("{sp}{a}{d}{b}{sp}"));
    (
        prop_oneof![
            Just("bytes"),
            Just("Bytes"),
            Just("items"),
            Just(""),
            Just(" bytes ")
        ],
        prop_oneof![Just("="), Just(""), Just("==")],
        prop::collection::vec(spec, 0..3),
    )
        .prop_map(|(unit, eq, specs)| format!("{unit}{eq}{}", specs.join(",")))
}

fn length() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..2000, any::<u64>(), Just(u64::MAX)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn ranges_match_the_reference(value in range_value(), len in length()) {
        let got = parse_range(&value, len);
        if let RangeAsk::Part(a, b) = got {
            prop_assert!(a <= b && b < len, "{value:?} {len}: {a}-{b}");
        }
        prop_assert_eq!(got, ref_range(&value, len), "{:?} {}", value, len);
    }

    #[test]
    fn any_range_string_is_safe(value in "\\PC{0,30}", len in length()) {
        prop_assert_eq!(parse_range(&value, len), ref_range(&value, len));
    }
}

// --- If-None-Match, If-Range, dates ---

/// Entity tags, some equal to `"abc"`.
fn tag() -> impl Strategy<Value = String> {
    prop_oneof![Just("abc".to_string()), "[a-c]{1,4}"]
}

/// A time between 1970 and 9999 with sub-second noise.
fn time() -> impl Strategy<Value = SystemTime> {
    (0u64..253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(s, n)| SystemTime::UNIX_EPOCH + Duration::new(s, n))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn if_none_match_lists(
        lines in prop::collection::vec(
            (any::<bool>(), prop::collection::vec((any::<bool>(), tag(), "[ \t]{0,2}"), 0..4)),
            1..3,
        )
    ) {
        let ours = etag("abc");
        // Expected from the structure: `*`, or our tag, weak or strong, anywhere.
        let expected = lines.iter().any(|(star, tags)| {
            *star || tags.iter().any(|(_, t, _)| t == "abc")
        });
        let values: Vec<String> = lines
            .iter()
            .map(|(star, tags)| {
                if *star {
                    " * ".to_string()
                } else {
                    tags.iter()
                        .map(|(weak, t, sp)| format!("{sp}{}\"{t}\"{sp}", if *weak { "W/" } else { "" }))
                        .collect::<Vec<_>>()
                        .join(",")
                }
            })
            .collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        prop_assert_eq!(none_match_hits(&refs, &ours), expected, "{:?}", values);
        // If-Match compares strongly: a weak tag of ours does not count.
        let strong = lines.iter().any(|(star, tags)| {
            *star || tags.iter().any(|(weak, t, _)| !weak && t == "abc")
        });
        prop_assert_eq!(match_holds(&refs, &ours), strong, "{:?}", values);
    }

    #[test]
    fn dates_round_trip_at_second_resolution(t in time(), other in time()) {
        let text = fmt_date(t);
        let back = parse_date(&text).expect("our own date parses");
        let secs = |x: SystemTime| x.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        prop_assert_eq!(secs(back), secs(t));
        prop_assert_eq!(not_modified_since(t, other), secs(t) <= secs(other));
        prop_assert!(not_modified_since(t, back));
    }

    #[test]
    fn any_date_string_is_safe(s in "\\PC{0,40}") {
        let _ = parse_date(&s);
    }

    #[test]
    fn if_range_validators(
        t in time(),
        shift in -2i64..=2,
        weak in any::<bool>(),
        other in tag(),
        kind in 0u8..3,
    ) {
        let ours = etag("abc");
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        let (value, expected) = match kind {
            // A date: holds only when it is Last-Modified to the second.
            0 => {
                let d = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.saturating_add_signed(shift));
                (fmt_date(d), secs.checked_add_signed(shift) == Some(secs))
            }
            // An entity tag: holds only strong and equal.
            1 => {
                let v = format!("{}\"{other}\"", if weak { "W/" } else { "" });
                (v, !weak && other == "abc")
            }
            // Anything else: never.
            _ => (other.clone(), false),
        };
        prop_assert_eq!(if_range_holds(&value, &ours, t), expected, "{:?}", value);
    }
}

// --- request heads ---

fn local() -> Local {
    Local {
        addr: "127.0.0.1:8080".parse().unwrap(),
        hostname: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_head_is_safe(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut scan = request::HeadScan::default();
        if let Some(end) = scan.feed(&bytes) {
            prop_assert!(end <= bytes.len());
            check_accepted(&bytes[..end])?;
        }
    }

    #[test]
    fn near_valid_heads_are_safe(
        lines in prop::collection::vec(
            prop_oneof![
                "[A-Za-z-]{1,8}: [ -~]{0,8}",
                Just("Transfer-Encoding: chunked".to_string()),
                Just("Content-Length: 0".to_string()),
                Just("Content-Length: 5".to_string()),
                Just(" folded".to_string()),
                Just("Host: h".to_string()),
                "[\\x00-\\x7f]{0,6}",
            ],
            0..5,
        ),
        target in target(),
        eol in prop_oneof![Just("\r\n"), Just("\n"), Just("\r")],
    ) {
        let mut head = format!("GET {target} HTTP/1.1{eol}");
        for l in &lines {
            head.push_str(l);
            head.push_str(eol);
        }
        head.push_str(eol);
        let mut scan = request::HeadScan::default();
        if let Some(end) = scan.feed(head.as_bytes()) {
            check_accepted(&head.as_bytes()[..end])?;
        }
    }

    #[test]
    fn plain_heads_are_accepted(
        target in "/[a-z0-9/._~-]{0,20}",
        fields in prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,8}", "[!-~]([ -~]{0,10}[!-~])?"), 0..6),
    ) {
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .filter(|(n, _)| {
                let n = n.to_ascii_lowercase();
                n != "host" && n != "content-length" && n != "transfer-encoding"
            })
            .collect();
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: h\r\n");
        for (n, v) in &fields {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let parsed = request::parse(head.as_bytes(), &local());
        let parsed = parsed.map_err(|e| TestCaseError::fail(format!("{head:?}: {e}")))?;
        prop_assert_eq!(&parsed.target, &target);
        let want: Vec<(String, String)> = std::iter::once(("host".to_string(), "h".to_string()))
            .chain(fields.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())))
            .collect();
        prop_assert_eq!(parsed.fields, want);
    }
}

/// What any accepted head must satisfy.
fn check_accepted(head: &[u8]) -> Result<(), TestCaseError> {
    let Ok(h) = request::parse(head, &local()) else {
        return Ok(());
    };
    prop_assert!(h.target.starts_with('/'), "{:?}", h.target);
    prop_assert!(head.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'));
    prop_assert!(!head.contains(&0));
    prop_assert!(h.value("transfer-encoding").is_none());
    let lengths: Vec<&str> = h.values("content-length").collect();
    prop_assert!(
        lengths.is_empty() || (lengths.len() == 1 && lengths[0].bytes().all(|b| b == b'0'))
    );
    for (n, v) in &h.fields {
        prop_assert!(!n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b':'));
        prop_assert!(!v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0));
    }
    Ok(())
}
