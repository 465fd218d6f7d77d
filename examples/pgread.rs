//! Raw readers for scripts/bench: the fastest ways one client pulls a large object
//! out of PostgreSQL without pgbootfs, and a time-to-first-byte probe for a mount.
//!
//! ```text
//! pgread CONNINFO lo-get OID SIZE CHUNK [READERS]   lo_get loop in a repeatable-read txn
//! pgread CONNINFO copy OID SIZE ROW [READERS]       one COPY (binary) of lo_get rows
//! pgread - ttfb FILE COUNT                          open + 4 KiB pread at random offsets
//! pgread CONNINFO handle OID SIZE SHA256            pgbootfs's own Handle, 512 KiB reads
//! ```
//! Prints one line: `bytes=N secs=S mbps=M` (or `median_ms=… p99_ms=…` for ttfb).

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use postgres::{Client, NoTls};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: see the doc comment of examples/pgread.rs");
        std::process::exit(2);
    }
    let conninfo = args[0].clone();
    let num = |i: usize| -> u64 { args[i].parse().expect("a number") };
    match args[1].as_str() {
        "lo-get" | "copy" => {
            let (oid, size, chunk) = (num(2) as u32, num(3), num(4));
            let readers = if args.len() > 5 { num(5) } else { 1 };
            let copy = args[1] == "copy";
            let start = Instant::now();
            let threads: Vec<_> = (0..readers)
                .map(|_| {
                    let conninfo = conninfo.clone();
                    std::thread::spawn(move || {
                        let mut c = Client::connect(&conninfo, NoTls).expect("connect");
                        if copy {
                            copy_read(&mut c, oid, size, chunk)
                        } else {
                            lo_get_read(&mut c, oid, size, chunk)
                        }
                    })
                })
                .collect();
            let bytes: u64 = threads.into_iter().map(|t| t.join().expect("reader")).sum();
            report(bytes, start.elapsed().as_secs_f64());
        }
        "ttfb" => ttfb(&args[2], num(3) as usize),
        "handle" => {
            let db = pgbootfs::db::DbConfig::resolve(Some(&conninfo)).expect("conninfo");
            let pool = pgbootfs::handle::HandlePool::new(&db, &Default::default());
            let file = pgbootfs::catalog::FileInfo {
                oid: num(2) as u32,
                size: num(3),
                sha256: args[4].clone(),
                filetype: String::new(),
                stored: None,
            };
            let h = pool.open(&file, "pgread");
            let start = Instant::now();
            let mut off = 0u64;
            while off < file.size {
                off += h
                    .read_with(off, pgbootfs::handle::READ_CHUNK as usize, |b| {
                        b.len() as u64
                    })
                    .expect("read");
            }
            report(off, start.elapsed().as_secs_f64());
        }
        other => panic!("unknown mode {other}"),
    }
}

fn report(bytes: u64, secs: f64) {
    println!(
        "bytes={bytes} secs={secs:.4} mbps={:.1}",
        bytes as f64 / secs / 1e6
    );
}

fn lo_get_read(c: &mut Client, oid: u32, size: u64, chunk: u64) -> u64 {
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .expect("begin");
    let stmt = c.prepare("SELECT lo_get($1, $2, $3)").expect("prepare");
    let mut got = 0u64;
    let mut off = 0u64;
    while off < size {
        let len = chunk.min(size - off) as i32;
        let row = c
            .query_one(&stmt, &[&oid, &(off as i64), &len])
            .expect("lo_get");
        let b: &[u8] = row.get(0);
        got += b.len() as u64;
        off += chunk;
    }
    c.batch_execute("COMMIT").expect("commit");
    got
}

fn copy_read(c: &mut Client, oid: u32, size: u64, row: u64) -> u64 {
    let sql = format!(
        "COPY (SELECT lo_get({oid}, o, {row}) FROM generate_series(0, {}, {row}) o) \
         TO STDOUT (FORMAT binary)",
        size.saturating_sub(1)
    );
    let mut r = c.copy_out(sql.as_str()).expect("copy");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    // Framing: 19-byte header, 2-byte trailer, 6 bytes per row.
    let rows = size.div_ceil(row);
    total.saturating_sub(21 + 6 * rows)
}

fn ttfb(path: &str, count: usize) {
    let size = std::fs::metadata(path).expect("stat").len();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut ms = Vec::with_capacity(count);
    let mut buf = vec![0u8; 4096];
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = x % size.saturating_sub(4096).max(1);
        let t = Instant::now();
        let f = std::fs::File::open(path).expect("open");
        f.read_at(&mut buf, off).expect("read");
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    println!("median_ms={:.3} p99_ms={:.3}", p(0.5), p(0.99));
}
