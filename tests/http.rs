//! `pgbootfs serve` against a real PostgreSQL cluster, with real clients on loopback.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::http::{Reply, Server, redbot, sstream_mirror};
use crate::common::*;

const DIR: &str = "/ubuntu/amd64/ga-20.04/focal/20240101";
const SMALL: &str = "/ubuntu/amd64/ga-20.04/focal/20240101/boot-kernel";
const EMPTY: &str = "/ubuntu/amd64/ga-20.04/focal/20240101/boot-initrd";
const BIG: &str = "/ubuntu/amd64/ga-20.04/focal/20240101/squashfs";
const OTHER: &str = "/ubuntu/arm64/generic/jammy/20240202.1/boot-kernel";

/// The image bytes of a store built by [`images`].
struct Data {
    small: Vec<u8>,
    big: Vec<u8>,
    other: Vec<u8>,
}

/// A cluster with two complete sets, a custom image and a hidden unfinished set;
/// the squashfs is `big` bytes.
fn images(big: usize) -> (Cluster, Data) {
    let (pg, mut c) = store();
    let data = Data {
        small: bytes(1, 100_000),
        big: bytes(3, big),
        other: bytes(4, 5000),
    };
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/focal", "amd64/ga-20.04", "20240101");
    m.file(s, "boot-kernel", &data.small);
    m.file(s, "boot-initrd", &[]);
    m.file(s, "squashfs", &data.big);
    let s = m.set("ubuntu/jammy", "arm64/generic", "20240202.1");
    m.file(s, "boot-kernel", &data.other);
    let s = m.set("myimage", "amd64/generic", "20240303");
    m.file(s, "root-tgz", &bytes(5, 777));
    let s = m.set("ubuntu/noble", "amd64/generic", "20240404");
    m.file(s, "boot-kernel", &bytes(6, 600));
    m.file_partial(s, "squashfs", &bytes(7, 700), Some(100));
    drop(c);
    (pg, data)
}

/// Backends of ours (handle connections) that sit inside a transaction.
fn handles_in_txn(pg: &Cluster) -> Vec<i32> {
    pg.client("postgres")
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbootfs-handle' \
             AND xact_start IS NOT NULL ORDER BY pid",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn tool_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn downloads_are_byte_exact_with_curl_and_wget() {
    let (pg, data) = images(64 << 20);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let out = srv.tmp.path();
    for (path, want) in [(EMPTY, &Vec::new()), (SMALL, &data.small), (BIG, &data.big)] {
        for prefix in ["", "/MAAS/images-stream"] {
            let url = srv.url(&format!("{prefix}{path}"));
            let f = out.join("curl.out");
            tool_ok(
                Command::new("curl").args(["-sSf", "-o"]).arg(&f).arg(&url),
                "curl",
            );
            let got = fs::read(&f).unwrap();
            assert_eq!(got.len(), want.len(), "curl {url}");
            assert_eq!(sha256_hex(&got), sha256_hex(want), "curl {url}");
            let f = out.join("wget.out");
            tool_ok(
                Command::new("wget").args(["-q", "-O"]).arg(&f).arg(&url),
                "wget",
            );
            let got = fs::read(&f).unwrap();
            assert_eq!(sha256_hex(&got), sha256_hex(want), "wget {url}");
        }
    }
    // Each file response announced its length (never chunked).
    let r = srv.get(BIG, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("67108864"));
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data.big));
    let r = srv.get(EMPTY, &[]);
    assert_eq!((r.status, r.header("content-length")), (200, Some("0")));
    assert!(r.body.is_empty());
}

#[test]
fn file_headers_head_and_other_methods() {
    let (pg, data) = images(3 << 20);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let get = srv.get(SMALL, &[]);
    assert_eq!(get.status, 200);
    assert_eq!(get.body, data.small);
    assert_eq!(get.header("content-length"), Some("100000"));
    assert_eq!(get.header("content-type"), Some("application/octet-stream"));
    assert_eq!(get.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        get.header("etag").map(str::to_string),
        Some(format!("\"{}\"", sha256_hex(&data.small)))
    );
    let lm = get.header("last-modified").unwrap();
    assert!(lm.ends_with(" GMT"), "{lm}");

    let opened = || srv.log().matches("opened large object").count();
    let before = opened();
    let head = srv.req("HEAD", SMALL, &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD sent a body");
    assert_eq!(head.stable_headers(), get.stable_headers());
    // HEAD never opens a database transaction.
    assert_eq!(opened(), before, "{}", srv.log());

    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let r = srv.req(method, SMALL, &["Content-Length: 0"]);
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method}");
    }
    let r = srv.get("/ubuntu/nope", &[]);
    assert_eq!(r.status, 404);
    // A file is not a directory.
    assert_eq!(srv.get(&format!("{SMALL}/"), &[]).status, 404);
    // The access log has method, path, status, bytes and duration.
    let log = srv.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("GET {SMALL} 200 100000 "))),
        "{log}"
    );
}

#[test]
fn ranges_past_4_gib_and_curl_resume_to_the_end() {
    let tail = bytes(97, (1 << 20) + 9);
    let pg = sparse_store(&tail);
    let base = SPARSE_HOLE;
    let len = base + tail.len() as u64;
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let url = format!("/{SPARSE}");
    let url = url.as_str();
    let head = srv.req("HEAD", url, &[]);
    assert_eq!(
        head.header("content-length"),
        Some(len.to_string().as_str())
    );
    let first = base - 100;
    let r = srv.get(url, &[&format!("Range: bytes={first}-")]);
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range").map(str::to_string),
        Some(format!("bytes {first}-{}/{len}", len - 1))
    );
    assert_eq!(&r.body[..100], &[0u8; 100][..]);
    assert_eq!(&r.body[100..], &tail[..]);
    let r = srv.get(url, &[&format!("Range: bytes=-{}", tail.len())]);
    assert_eq!(r.body, tail);
    // curl resuming a download that stopped 4 GiB in: it asks for the rest.
    let tmp = temp_dir("pgbt-curl-");
    let out = tmp.path().join("root-dd");
    let part = fs::File::create(&out).unwrap();
    part.set_len(base - 10).unwrap();
    drop(part);
    let st = Command::new("curl")
        .args(["-sf", "-C", "-", "-o"])
        .arg(&out)
        .arg(srv.url(url))
        .status()
        .unwrap();
    assert!(st.success(), "curl {st}");
    let f = fs::File::open(&out).unwrap();
    assert_eq!(f.metadata().unwrap().len(), len);
    let mut end = vec![1u8; 10 + tail.len()];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut end, base - 10).unwrap();
    assert_eq!(&end[..10], &[0u8; 10][..]);
    assert_eq!(&end[10..], &tail[..]);
}

#[test]
fn single_ranges_multiple_ranges_and_if_range() {
    let (pg, data) = images(3 << 20);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let big = &data.big;
    let len = big.len() as u64;
    let cases: [(&str, u64, u64); 5] = [
        ("bytes=0-99", 0, 99),
        ("bytes=1048570-1048600", 1048570, 1048600),
        ("bytes=3000000-", 3000000, len - 1),
        ("bytes=-1000", len - 1000, len - 1),
        ("bytes=100-99999999", 100, len - 1),
    ];
    for (range, first, last) in cases {
        let r = srv.get(BIG, &[&format!("Range: {range}")]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range").map(str::to_string),
            Some(format!("bytes {first}-{last}/{len}")),
            "{range}"
        );
        assert_eq!(
            r.header("content-length").map(str::to_string),
            Some((last - first + 1).to_string())
        );
        assert_eq!(r.body, big[first as usize..=last as usize], "{range}");
    }
    for range in ["bytes=3145728-", "bytes=9999999-10000000", "bytes=-0"] {
        let r = srv.get(BIG, &[&format!("Range: {range}")]);
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(
            r.header("content-range").map(str::to_string),
            Some(format!("bytes */{len}"))
        );
    }
    // The empty file has no satisfiable range.
    let r = srv.get(EMPTY, &["Range: bytes=0-"]);
    assert_eq!(
        (r.status, r.header("content-range")),
        (416, Some("bytes */0"))
    );
    // Several ranges get the whole file (documented choice).
    let r = srv.get(BIG, &["Range: bytes=0-9,20-29"]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
    assert_eq!(r.header("content-range"), None);
    // If-Range with the current ETag or date honours the range; a stale one does not.
    let full = srv.req("HEAD", BIG, &[]);
    let etag = full.header("etag").unwrap().to_string();
    let lm = full.header("last-modified").unwrap().to_string();
    for validator in [etag.as_str(), lm.as_str()] {
        let r = srv.get(
            BIG,
            &["Range: bytes=10-19", &format!("If-Range: {validator}")],
        );
        assert_eq!(r.status, 206, "{validator}");
        assert_eq!(r.body, big[10..20]);
    }
    for stale in ["\"0000\"", "Thu, 01 Jan 1970 00:00:00 GMT"] {
        let r = srv.get(BIG, &["Range: bytes=10-19", &format!("If-Range: {stale}")]);
        assert_eq!(r.status, 200, "{stale}");
        assert_eq!(r.body.len(), big.len());
    }
    // curl -C - resumes a partial file.
    let f = srv.tmp.path().join("resume");
    fs::write(&f, &big[..1_500_000]).unwrap();
    tool_ok(
        Command::new("curl")
            .args(["-sSf", "-C", "-", "-o"])
            .arg(&f)
            .arg(srv.url(BIG)),
        "curl -C -",
    );
    assert_eq!(sha256_hex(&fs::read(&f).unwrap()), sha256_hex(big));
    // wget -c too.
    let f = srv.tmp.path().join("resume-wget");
    fs::write(&f, &big[..2_000_000]).unwrap();
    tool_ok(
        Command::new("wget")
            .args(["-q", "-c", "-O"])
            .arg(&f)
            .arg(srv.url(BIG)),
        "wget -c",
    );
    assert_eq!(sha256_hex(&fs::read(&f).unwrap()), sha256_hex(big));
}

#[test]
fn listings_and_stream_json_revalidate_by_etag() {
    let (pg, _data) = images(1000);
    let srv = Server::start(&pg.conninfo("postgres"), &["--refresh", "1"]);
    let targets = [
        ("/streams/v1/index.json", None),
        ("/MAAS/images-stream/streams/v1/maas:v2:download.json", None),
        ("/ubuntu/amd64/", None),
        ("/ubuntu/amd64/", Some("Accept: application/json")),
    ];
    let mut tags = Vec::new();
    for (url, accept) in targets {
        let extra: Vec<&str> = accept.into_iter().collect();
        let first = srv.get(url, &extra);
        assert_eq!(first.status, 200, "{url}");
        let tag = first.header("etag").expect("an ETag").to_string();
        assert_eq!(
            srv.get(url, &extra).header("etag"),
            Some(tag.as_str()),
            "stable"
        );
        let inm = format!("If-None-Match: {tag}");
        for method in ["GET", "HEAD"] {
            let mut h = extra.clone();
            h.push(&inm);
            let r = srv.req(method, url, &h);
            assert_eq!(r.status, 304, "{method} {url}");
            assert!(r.body.is_empty());
            assert_eq!(r.header("content-length"), None);
            assert_eq!(r.header("etag"), Some(tag.as_str()));
        }
        let r = srv.get(url, &[&extra[..], &["If-None-Match: \"other\""]].concat());
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(r.body, first.body);
        tags.push(tag);
    }
    assert_ne!(tags[2], tags[3], "HTML and JSON listings differ");
    // A new image changes the index, so the old tag no longer matches.
    let mut c = pg.client("postgres");
    let mut m = Maas { client: &mut c };
    let s = m.set("ubuntu/oracular", "amd64/generic", "20241010");
    m.file(s, "boot-kernel", &bytes(8, 800));
    let inm = format!("If-None-Match: {}", tags[0]);
    assert!(
        wait_until(Duration::from_secs(5), || {
            srv.get("/streams/v1/index.json", &[&inm]).status == 200
        }),
        "index ETag did not change"
    );
}

#[test]
fn conditional_requests_give_bodyless_304() {
    let (pg, data) = images(3 << 20);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let etag = format!("\"{}\"", sha256_hex(&data.small));
    let lm = srv
        .req("HEAD", SMALL, &[])
        .header("last-modified")
        .unwrap()
        .to_string();
    let hits = [
        format!("If-None-Match: {etag}"),
        format!("If-None-Match: \"other\", W/{etag}"),
        "If-None-Match: *".to_string(),
        format!("If-Modified-Since: {lm}"),
        "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT".to_string(),
    ];
    for h in &hits {
        for method in ["GET", "HEAD"] {
            let r = srv.req(method, SMALL, &[h]);
            assert_eq!(r.status, 304, "{method} {h}");
            assert!(r.body.is_empty(), "{h}");
            assert_eq!(r.header("content-length"), None, "{h}");
            assert_eq!(r.header("transfer-encoding"), None, "{h}");
            assert_eq!(r.header("etag"), Some(etag.as_str()));
        }
    }
    let misses = [
        "If-None-Match: \"other\"".to_string(),
        "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT".to_string(),
        // If-None-Match wins over If-Modified-Since.
        format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {lm}"),
    ];
    for h in &misses {
        let r = srv.get(SMALL, &[h]);
        assert_eq!(r.status, 200, "{h}");
        assert_eq!(r.body, data.small);
    }
    // A 304 keeps the connection usable: two requests on one connection.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "GET {SMALL} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n\
         GET {OTHER} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let first = Reply::parse(&buf);
    assert_eq!(first.status, 304);
    let second = Reply::parse(&first.body);
    assert_eq!(second.status, 200);
    assert_eq!(second.body, data.other);
}

#[test]
fn directory_listings_and_stream_files() {
    let (pg, data) = images(3 << 20);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let r = srv.get(&format!("{DIR}/"), &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let html = String::from_utf8(r.body).unwrap();
    for name in ["boot-kernel", "boot-initrd", "squashfs"] {
        assert!(html.contains(&format!("href=\"{DIR}/{name}\"")), "{html}");
    }
    // Slashless, a directory is redirected first, as web servers do (issue 23).
    let r = srv.get("/MAAS/images-stream/ubuntu", &["Accept: application/json"]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/MAAS/images-stream/ubuntu/"));
    let r = srv.get("/MAAS/images-stream/ubuntu/", &["Accept: application/json"]);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["amd64", "arm64"]);
    assert_eq!(v[0]["type"], "dir");
    let r = srv.get(
        &format!("{DIR}/"),
        &["Accept: application/json, text/html;q=0.5"],
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let kernel = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "boot-kernel")
        .unwrap();
    assert_eq!(kernel["type"], "file");
    assert_eq!(kernel["size"], 100_000);
    assert_eq!(kernel["sha256"], sha256_hex(&data.small).as_str());
    assert!(kernel["mtime"].as_u64().unwrap() > 1_600_000_000);

    for prefix in ["", "/MAAS/images-stream"] {
        let r = srv.get(&format!("{prefix}/streams/v1/index.json"), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["format"], "index:1.0");
        assert_eq!(
            v["index"]["maas:v2:download"]["path"],
            "streams/v1/maas:v2:download.json"
        );
        let r = srv.get(&format!("{prefix}/streams/v1/maas:v2:download.json"), &[]);
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["format"], "products:1.0");
        let products: BTreeSet<&str> = v["products"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // The unfinished noble set is not listed.
        assert_eq!(
            products,
            BTreeSet::from([
                "maas:boot:custom:amd64:generic:myimage",
                "maas:boot:ubuntu:amd64:ga-20.04:focal",
                "maas:boot:ubuntu:arm64:generic:jammy",
            ])
        );
        let item = &v["products"]["maas:boot:ubuntu:amd64:ga-20.04:focal"]["versions"]["20240101"]
            ["items"]["boot-kernel"];
        assert_eq!(item["path"], SMALL.trim_start_matches('/'));
        assert_eq!(item["sha256"], sha256_hex(&data.small).as_str());
        assert_eq!(item["size"], 100_000);
        assert_eq!(item["ftype"], "root-image");
    }
}

/// redbot's findings for `url`: (level, summary) pairs.
fn redbot_notes(url: &str) -> Vec<(String, String)> {
    let out = Command::new(redbot())
        .args(["-o", "har", url])
        .output()
        .unwrap_or_else(|e| panic!("redbot (install with python3 -m pip install redbot): {e}"));
    assert!(
        out.status.success(),
        "redbot {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let har: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = har["log"]["entries"].as_array().expect("HAR entries");
    assert!(!entries.is_empty(), "redbot checked nothing for {url}");
    let mut notes = Vec::new();
    for e in entries {
        for n in e["_red_messages"].as_array().into_iter().flatten() {
            let level = n["level"].as_str().unwrap_or("").to_string();
            notes.push((level, n["summary"].as_str().unwrap_or("").to_string()));
        }
    }
    notes
}

#[test]
fn redbot_finds_nothing_wrong_with_files_streams_or_listings() {
    let (pg, _data) = images(3 << 20);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let ranged = "A ranged request returned the correct partial content.";
    let inm = "If-None-Match conditional requests are supported.";
    let ims = "If-Modified-Since conditional requests are supported.";
    let cases: [(&str, &[&str]); 7] = [
        (SMALL, &[ranged, inm, ims]),
        (BIG, &[ranged, inm, ims]),
        (EMPTY, &[inm, ims]),
        ("/streams/v1/index.json", &[inm, ims]),
        (
            "/MAAS/images-stream/streams/v1/maas:v2:download.json",
            &[inm, ims],
        ),
        ("/ubuntu/amd64/", &[inm]),
        ("/no/such/file", &[]),
    ];
    for (path, wanted) in cases {
        let notes = redbot_notes(&srv.url(path));
        let bad: Vec<_> = notes
            .iter()
            .filter(|(level, _)| level != "GOOD" && level != "INFO")
            .collect();
        assert!(bad.is_empty(), "{path}: {bad:?}");
        for w in wanted {
            assert!(
                notes.iter().any(|(_, s)| s == w),
                "{path}: no {w:?} in {notes:?}"
            );
        }
    }
}

#[test]
fn sstream_mirror_mirrors_and_resumes_through_range() {
    let (pg, data) = images(3 << 20);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let out = srv.tmp.path().join("mirror");
    let mirror = |url: String| {
        tool_ok(
            Command::new(sstream_mirror()).arg(url).arg(&out),
            "sstream-mirror (install with python3 -m pip install python-simplestreams)",
        )
    };
    mirror(srv.url("/MAAS/images-stream/streams/v1/index.json"));
    for (path, want) in [(SMALL, &data.small), (BIG, &data.big), (OTHER, &data.other)] {
        let got = fs::read(out.join(path.trim_start_matches('/'))).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(want), "{path}");
    }
    assert!(out.join(EMPTY.trim_start_matches('/')).exists());
    // A half-done download left as .part is resumed with Range, not restarted.
    let big = out.join(BIG.trim_start_matches('/'));
    fs::remove_file(&big).unwrap();
    let part = big.parent().unwrap().join("squashfs.part");
    fs::write(&part, &data.big[..1_234_567]).unwrap();
    // Without its record of what it has, the mirror goes through every item again.
    fs::remove_dir_all(out.join("streams")).unwrap();
    fs::remove_dir_all(out.join(".data")).unwrap();
    mirror(srv.url("/streams/v1/index.json"));
    assert_eq!(sha256_hex(&fs::read(&big).unwrap()), sha256_hex(&data.big));
    assert!(!part.exists());
    let want = format!("GET {BIG} 206 {} ", data.big.len() - 1_234_567);
    assert!(srv.log().contains(&want), "no `{want}` in\n{}", srv.log());
}

#[test]
fn aborted_downloads_leave_no_transaction_open() {
    let (pg, data) = images(16 << 20);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    for i in 0..50 {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let range = if i % 2 == 0 {
            ""
        } else {
            "Range: bytes=1000-\r\n"
        };
        s.write_all(format!("GET {BIG} HTTP/1.1\r\nHost: t\r\n{range}\r\n").as_bytes())
            .unwrap();
        let mut buf = vec![0u8; 200_000];
        s.read_exact(&mut buf).unwrap();
        // Dropped with most of the body unread.
    }
    assert!(
        wait_until(Duration::from_secs(20), || handles_in_txn(&pg).is_empty()),
        "transactions still open: {:?}",
        handles_in_txn(&pg)
    );
    let r = srv.get(BIG, &[]);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&data.big));
}

#[test]
fn database_down_gives_503_at_once_and_recovers() {
    let (pg, data) = images(1000);
    // A pool wait far longer than the test allows: a 503 must not wait for it.
    let srv = Server::start(&pg.conninfo("postgres"), &["--http-pool-wait", "60"]);
    assert_eq!(srv.get(SMALL, &[]).body, data.small);
    pg.stop_server();
    let t = Instant::now();
    // A file never read needs the database.
    let r = srv.get(OTHER, &[]);
    assert_eq!(r.status, 503, "{}", srv.log());
    assert!(r.header("retry-after").is_some());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // Bytes already in memory are still served.
    assert_eq!(srv.get(SMALL, &[]).body, data.small);
    // What needs no image bytes is still served from the catalog.
    assert_eq!(srv.get("/streams/v1/index.json", &[]).status, 200);
    assert_eq!(srv.req("HEAD", SMALL, &[]).status, 200);
    pg.start_server();
    assert!(
        wait_until(Duration::from_secs(10), || srv.get(OTHER, &[]).body
            == data.other),
        "{}",
        srv.log()
    );
}

#[test]
fn stalled_client_is_dropped_after_send_timeout_and_busy_pool_gives_503() {
    let (pg, data) = images(64 << 20);
    let srv = Server::start(
        &pg.conninfo("postgres"),
        &[
            "--http-send-timeout",
            "2",
            "--max-handles",
            "1",
            "--http-pool-wait",
            "1",
        ],
    );
    // A client that asks for 64 MiB and reads nothing.
    let mut stalled = TcpStream::connect(srv.addr).unwrap();
    stalled
        .write_all(format!("GET {BIG} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || handles_in_txn(&pg).len() == 1),
        "the download never opened its handle"
    );
    // Its handle holds the only connection: the next download is told to come back.
    let r = srv.get(SMALL, &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("5"));
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || handles_in_txn(&pg).is_empty()),
        "stalled client still holds its transaction"
    );
    assert!(t.elapsed() >= Duration::from_millis(500));
    let r = srv.get(SMALL, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data.small);
    // The stalled client's connection was cut: it gets less than it asked for and
    // then the end of the stream.
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let _ = stalled.read_to_end(&mut got);
    assert!(got.len() < data.big.len(), "{}", got.len());
    assert!(srv.log().contains("aborted"), "{}", srv.log());
}

#[test]
fn a_backend_terminated_mid_body_is_a_pause_and_the_body_is_whole() {
    let (pg, data) = images(64 << 20);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("GET {BIG} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut first = vec![0u8; 1 << 20];
    s.read_exact(&mut first).unwrap();
    assert!(wait_until(Duration::from_secs(10), || handles_in_txn(&pg)
        .len()
        == 1));
    for pid in handles_in_txn(&pg) {
        pg.client("postgres")
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap();
    }
    // The handle sets up again, checks the content and reads on at the same offset.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    first.extend_from_slice(&rest);
    let reply = Reply::parse(&first);
    assert_eq!(reply.status, 200);
    assert!(
        reply.body == data.big,
        "{} of {} bytes, or other bytes\n{}",
        reply.body.len(),
        data.big.len(),
        srv.log()
    );
    assert!(srv.log().contains("reconnected"), "{}", srv.log());
    assert!(wait_until(Duration::from_secs(10), || handles_in_txn(&pg).is_empty()));
}

#[test]
fn twenty_concurrent_downloads_are_byte_exact() {
    let (pg, data) = images(64 << 20);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let want = sha256_hex(&data.big);
    let url = srv.url(BIG);
    let children: Vec<_> = (0..20)
        .map(|_| {
            Command::new("sh")
                .args(["-c", &format!("curl -sSf '{url}' | sha256sum")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sum = String::from_utf8_lossy(&out.stdout);
        assert_eq!(sum.split_whitespace().next(), Some(want.as_str()));
    }
    assert!(wait_until(Duration::from_secs(10), || handles_in_txn(&pg).is_empty()));
}

#[test]
fn traversal_corpus_gets_only_400_or_404() {
    let (pg, _data) = images(1000);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let corpus = [
        "/..",
        "/../../../../etc/passwd",
        "/ubuntu/../../etc/passwd",
        "/MAAS/images-stream/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E/etc/passwd",
        "/.%2e/etc/passwd",
        "/ubuntu/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/..%2f..%2fetc%2fpasswd",
        "/%252e%252e/etc/passwd",
        "/ubuntu%2famd64",
        "/%00",
        "/ubuntu%00/amd64",
        "/etc/passwd%00.json",
        "/%c0%ae%c0%ae/etc/passwd",
        "/%c0%af/etc/passwd",
        "/%e0%80%ae%e0%80%ae/etc/passwd",
        "/..\\..\\etc\\passwd",
        "//etc/passwd",
        "/./ubuntu",
        "/ubuntu/./amd64",
        "/etc/passwd",
        "/proc/self/environ",
        "/%",
        "/%zz",
        "http://127.0.0.1/../../etc/passwd",
        "http://127.0.0.1/etc/passwd",
        "file:///etc/passwd",
        "*",
        "../etc/passwd",
        "etc/passwd",
    ];
    for target in corpus {
        let r = srv.raw(&format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ));
        assert!(r.status == 400 || r.status == 404, "{target}: {}", r.status);
        assert!(
            !String::from_utf8_lossy(&r.body).contains("root:"),
            "{target}"
        );
    }
    // Really long and deep targets, too.
    let long = format!("/{}", "a".repeat(60_000));
    let deep = "/..".repeat(5000);
    for target in [long, deep] {
        let r = srv.raw(&format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ));
        assert!(r.status == 400 || r.status == 404, "{}", r.status);
    }
    assert_eq!(srv.get(SMALL, &[]).status, 200);
}

#[test]
fn still_serves_after_a_thousand_idle_connections() {
    let (pg, data) = images(1000);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    for _ in 0..1000 {
        drop(TcpStream::connect(srv.addr).unwrap());
    }
    let r = srv.get(SMALL, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data.small);
}

#[test]
fn accept_errors_do_not_stop_the_server() {
    let (pg, data) = images(1000);
    // Each connection costs a descriptor: 60 held connections run the server out
    // of them, so accept() fails with EMFILE; once they close it must come back.
    // Two limits, so the exhaustion happens at either parity.
    for limit in [40, 41] {
        let tmp = temp_dir("pgbt-http-");
        let log = tmp.path().join("pgbootfs.log");
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={limit}:{limit}"))
            .args(["--", bin()])
            .args(["--db", &pg.conninfo("postgres")])
            .args(["serve", "--listen", "127.0.0.1:0"]);
        let child = spawn_logged(cmd, &log);
        let srv = Server::wait(child, log, tmp);
        let held: Vec<TcpStream> = (0..60)
            .map(|_| TcpStream::connect(srv.addr).unwrap())
            .collect();
        assert!(
            wait_until(Duration::from_secs(10), || srv
                .log()
                .contains("accepting connections failed")),
            "limit {limit}: accept never failed:\n{}",
            srv.log()
        );
        drop(held);
        let ok = wait_until(Duration::from_secs(20), || {
            let Ok(mut s) = TcpStream::connect(srv.addr) else {
                return false;
            };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let req = format!("GET {SMALL} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let mut buf = Vec::new();
            s.write_all(req.as_bytes()).is_ok()
                && s.read_to_end(&mut buf).is_ok()
                && buf.ends_with(&data.small)
        });
        assert!(
            ok,
            "limit {limit}: not serving after EMFILE:\n{}",
            srv.log()
        );
    }
}

#[test]
fn slow_or_endless_headers_are_cut_off() {
    let (pg, data) = images(1000);
    let srv = Server::start(&pg.conninfo("postgres"), &["--http-header-timeout", "2"]);
    // A request that never ends its headers gets a 408 and the connection closes.
    let t = Instant::now();
    let mut slow = TcpStream::connect(srv.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.write_all(format!("GET {SMALL} HTTP/1.1\r\nHost: t\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    slow.read_to_end(&mut buf).expect("closed, not hanging");
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert!(t.elapsed() < Duration::from_secs(15));
    // A connection that never sends anything is closed too.
    let mut silent = TcpStream::connect(srv.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = Vec::new();
    silent.read_to_end(&mut buf).expect("closed, not hanging");
    // Endless headers are cut long before they end.
    let huge = TcpStream::connect(srv.addr).unwrap();
    huge.set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t = Instant::now();
    let mut sent = 0usize;
    let line = format!("X-Junk: {}\r\n", "a".repeat(1000));
    let mut w = huge.try_clone().unwrap();
    w.write_all(format!("GET {SMALL} HTTP/1.1\r\nHost: t\r\n").as_bytes())
        .unwrap();
    let cut = loop {
        if t.elapsed() > Duration::from_secs(15) {
            break false;
        }
        if w.write_all(line.as_bytes()).is_err() {
            break true;
        }
        sent += line.len();
        if sent % (1 << 20) < line.len() {
            // Like a slow sender: a sweep runs meanwhile.
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(cut, "still accepting headers after {sent} bytes");
    assert!(
        srv.log()
            .lines()
            .any(|l| l.contains(" - - 431 0 ") && l.contains("header bytes")),
        "{}",
        srv.log()
    );
    // The server still serves.
    assert_eq!(srv.get(SMALL, &[]).body, data.small);
}

#[test]
fn header_floods_cost_bounded_memory() {
    let (pg, data) = images(1000);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let before = srv.peak_rss_kib();
    // Four clients each send one endless header line as fast as they can.
    let floods: Vec<_> = (0..4)
        .map(|_| {
            let addr = srv.addr;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.write_all(format!("GET {SMALL} HTTP/1.1\r\nX-Junk: ").as_bytes());
                let junk = vec![b'a'; 1 << 20];
                let t = Instant::now();
                let mut sent = 0u64;
                while t.elapsed() < Duration::from_secs(10) && s.write_all(&junk).is_ok() {
                    sent += junk.len() as u64;
                }
                sent
            })
        })
        .collect();
    let sent: Vec<u64> = floods.into_iter().map(|h| h.join().unwrap()).collect();
    let grew = srv.peak_rss_kib().saturating_sub(before);
    eprintln!("sent {sent:?} bytes; peak RSS grew by {grew} KiB");
    assert!(
        grew < 64 << 10,
        "peak RSS grew by {grew} KiB after sending {sent:?}"
    );
    assert_eq!(srv.get(SMALL, &[]).body, data.small);
}

#[test]
fn mount_with_http_serves_both_from_one_process() {
    if !fuse_or_skip("mount_with_http_serves_both_from_one_process") {
        return;
    }
    let (pg, data) = images(3 << 20);
    let mnt = Mount::start(
        &pg.conninfo("postgres"),
        &["--http", "127.0.0.1:0", "--http-workers", "2"],
    );
    let mut addr = None;
    assert!(wait_until(Duration::from_secs(10), || {
        addr = mnt
            .log()
            .split("listening on http://")
            .nth(1)
            .and_then(|r| r.split_once('\n'))
            .map(|(line, _)| line.trim().to_string());
        addr.is_some()
    }));
    let url = format!("http://{}{BIG}", addr.unwrap());
    let out = sh(&format!("curl -sSf '{url}' | sha256sum"));
    assert_eq!(
        out.split_whitespace().next(),
        Some(sha256_hex(&data.big).as_str())
    );
    assert_eq!(read_all(&mnt.path(BIG)).unwrap(), data.big);
    assert!(wait_until(Duration::from_secs(10), || handles_in_txn(&pg).is_empty()));
}

#[test]
fn if_match_and_if_unmodified_since_give_412() {
    let (pg, data) = images(1000);
    let srv = Server::start(&pg.conninfo("postgres"), &[]);
    let etag = format!("\"{}\"", sha256_hex(&data.small));
    let lm = srv
        .req("HEAD", SMALL, &[])
        .header("last-modified")
        .unwrap()
        .to_string();
    let cases = [
        (format!("If-Match: {etag}"), 200),
        (format!("If-Match: \"other\", {etag}"), 200),
        ("If-Match: *".to_string(), 200),
        ("If-Match: \"other\"".to_string(), 412),
        // If-Match compares strongly.
        (format!("If-Match: W/{etag}"), 412),
        (format!("If-Unmodified-Since: {lm}"), 200),
        (
            "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT".to_string(),
            412,
        ),
        // If-Match wins over If-Unmodified-Since.
        (
            format!("If-Match: {etag}\r\nIf-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT"),
            200,
        ),
    ];
    for (h, want) in &cases {
        for method in ["GET", "HEAD"] {
            let r = srv.req(method, SMALL, &[h, "Range: bytes=0-9"]);
            let want = if *want == 200 { 206 } else { *want };
            let want = if method == "HEAD" && want == 206 {
                200
            } else {
                want
            };
            assert_eq!(r.status, want, "{method} {h}");
            if want == 412 {
                assert_eq!(r.header("etag"), Some(etag.as_str()));
            }
        }
    }
}
