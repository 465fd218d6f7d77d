//! A compressed stream inside an image, read at any uncompressed offset: a
//! tarball's whole image, or one segment of an initrd. One pass over the stream
//! (the format reader's index pass) records seek points; a later read starts
//! decompressing at the nearest point at or before its offset:
//!
//! - gzip: a deflate block boundary every [`SPACING`] of output or more, with the
//!   32 KiB of output before it (the window back-references may reach) and the
//!   bits of the last input byte that belong to the next block, as zran,
//!   indexed_gzip and ratarmount keep; miniz_oxide's `block-boundary` feature
//!   stops there and resumes from that state, so a point is plain data that can be
//!   written to disk ([`super::index`]). The window is kept zstd-compressed; at
//!   most [`MAX_POINTS`] points (the spacing doubles past that), so at most 32 MiB
//!   per stream however large it is;
//! - xz: the start of each block, from the stream's own index, when it has
//!   several (`xz -T0`, pixz); a single-block stream is read from its start;
//! - lz4 (the kernel's legacy format, `lz4 -l`): every block, each independent;
//! - bzip2: a block every [`SPACING`] of output or more, by its bit offset
//!   ([`bz2`], as seek-bzip2 does);
//! - zstd, lzma: from the stream's start (zstd frames would need the seekable
//!   format, which initrds don't use).
//!
//! One decoder per stream continues where the last read ended, so a sequential
//! reader never decompresses a byte twice.

use std::io::{self, Read};
use std::sync::Arc;

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{
    BlockBoundaryState, DecompressorOxide, TINFL_LZ_DICT_SIZE, decompress, inflate_flags,
};
use parking_lot::Mutex;

use super::bytes::Bytes;
use super::error::InsideError;

/// Output between two gzip seek points, at least.
pub const SPACING: u64 = 1 << 20;
/// Most gzip seek points kept per stream.
pub const MAX_POINTS: usize = 1024;
/// Compressed bytes read from the image at a time.
const READ_PIECE: usize = 256 << 10;
/// The legacy lz4 format's magic (`lz4 -l`, what the kernel's unlz4 reads).
pub const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Uncompressed bytes per legacy lz4 block.
const LZ4_BLOCK: usize = 8 << 20;

/// How a stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Not compressed: reads go straight to the image.
    Raw,
    /// gzip members.
    Gzip,
    /// bzip2 streams.
    Bzip2,
    /// xz streams.
    Xz,
    /// Legacy LZMA ("lzma alone").
    Lzma,
    /// Zstandard frames.
    Zstd,
    /// LZ4's legacy format (magic 0x184C2102), as the kernel reads initrds.
    Lz4Legacy,
}

impl Codec {
    /// The codec whose magic starts `head`, as the kernel's `decompress_method`
    /// tells them apart; None if no codec matches.
    pub fn sniff(head: &[u8]) -> Option<Codec> {
        Some(match head {
            [0x1f, 0x8b | 0x9e, ..] => Codec::Gzip,
            [b'B', b'Z', b'h', ..] => Codec::Bzip2,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Codec::Xz,
            [0x5d, 0, 0, ..] => Codec::Lzma,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Codec::Zstd,
            [0x02, 0x21, 0x4c, 0x18, ..] => Codec::Lz4Legacy,
            _ => return None,
        })
    }

    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "uncompressed",
            Codec::Gzip => "gzip",
            Codec::Bzip2 => "bzip2",
            Codec::Xz => "xz",
            Codec::Lzma => "lzma",
            Codec::Zstd => "zstd",
            Codec::Lz4Legacy => "lz4",
        }
    }

    /// Its number in an index file.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The codec numbered `id` in an index file.
    pub fn from_id(id: u8) -> Option<Codec> {
        [
            Codec::Raw,
            Codec::Gzip,
            Codec::Bzip2,
            Codec::Xz,
            Codec::Lzma,
            Codec::Zstd,
            Codec::Lz4Legacy,
        ]
        .get(id as usize)
        .copied()
    }
}

/// Where decompression can start again. Plain data: written to and read back
/// from index files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// The stream's start.
    Start,
    /// A deflate block boundary inside a gzip member: the compressed offset of
    /// the next whole byte, the `bits` high bits of the byte before it that the
    /// next block starts with, and the 32 KiB of output before it, zstd-compressed.
    Gzip {
        /// Image offset of the next whole input byte.
        input: u64,
        /// How many bits of the previous byte belong to the next block (0..=7).
        bits: u8,
        /// Those bits, in the low bits.
        bit_buf: u8,
        /// The last 32 KiB of output, zstd-compressed.
        window: Arc<Vec<u8>>,
    },
    /// An xz block: its image offset, and the stream header to put before it.
    XzBlock {
        /// Image offset of the block.
        input: u64,
        /// The stream's 12-byte header.
        header: [u8; 12],
    },
    /// A legacy lz4 block: the image offset of its length word.
    Lz4Block {
        /// Image offset of the block's length.
        input: u64,
    },
    /// A bzip2 block ([`bz2`]): the image bit offset of its magic, of its
    /// stream's end-of-stream magic, and the CRC combined over the blocks from
    /// it to that end.
    Bzip2Block {
        /// Image bit offset of the block's magic.
        bit: u64,
        /// Image bit offset of the stream's end-of-stream magic.
        eos: u64,
        /// CRC combined over the blocks from this one to the stream's end.
        crc: u32,
    },
}

mod bz2;

/// The index pass's bzip2 side: the magics ahead, and the current stream's
/// blocks (their CRCs) and points waiting for its end.
struct BzPass {
    scan: bz2::Scan,
    blocks: Vec<(u64, u32)>,
    pending: Vec<(u64, usize)>,
    last: u64,
}

impl BzPass {
    /// The decoder has drained everything before magic `m`, `out` bytes.
    fn boundary(&mut self, out: u64, m: bz2::Magic, c: &Mutex<Collected>) -> io::Result<()> {
        if !m.eos {
            let crc = m.crc.ok_or_else(|| bad("a bzip2 block header cut short"))?;
            self.blocks.push((m.bit, crc));
            let spacing = c.lock().spacing;
            if out > 0 && out - self.last >= spacing {
                self.pending.push((out, self.blocks.len() - 1));
                self.last = out;
            }
            return Ok(());
        }
        let mut c = c.lock();
        for (at, j) in self.pending.drain(..) {
            let crc = bz2::combine(self.blocks[j..].iter().map(|b| b.1));
            c.push(
                at,
                Point::Bzip2Block {
                    bit: self.blocks[j].0,
                    eos: m.bit,
                    crc,
                },
            );
        }
        self.blocks.clear();
        Ok(())
    }
}

/// Reads the image's bytes from an offset up to a limit, as `Read` for the
/// decoders.
struct ImageReader {
    bytes: Arc<dyn Bytes>,
    at: u64,
    /// Set if reading the image failed: the decoders see only an io::Error.
    failed: Arc<Mutex<Option<InsideError>>>,
}

impl Read for ImageReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.bytes.size().saturating_sub(self.at);
        let n = (buf.len() as u64).min(left).min(READ_PIECE as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        match self.bytes.read_exact_at(self.at, &mut buf[..n]) {
            Ok(()) => {
                self.at += n as u64;
                Ok(n)
            }
            Err(e) => {
                let msg = e.to_string();
                *self.failed.lock() = Some(e);
                Err(io::Error::other(msg))
            }
        }
    }
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

fn cut(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{what} stream cut short"),
    )
}

/// A deflate decoder over a 32 KiB circular window (miniz_oxide's core), so that
/// its state at a block boundary is the window and a few bits.
struct Inflater {
    d: Box<DecompressorOxide>,
    dict: Box<[u8]>,
    /// Where the next output byte goes in `dict`.
    ofs: usize,
    /// Output not yet handed out: `dict[pend_at..pend_at + pend]`.
    pend_at: usize,
    pend: usize,
}

impl Inflater {
    fn new() -> Inflater {
        Inflater {
            d: Box::default(),
            dict: vec![0; TINFL_LZ_DICT_SIZE].into_boxed_slice(),
            ofs: 0,
            pend_at: 0,
            pend: 0,
        }
    }

    /// Resumes at a block boundary with its window (oldest byte first).
    fn resume(bits: u8, bit_buf: u8, window: &[u8]) -> io::Result<Inflater> {
        if window.len() != TINFL_LZ_DICT_SIZE || bits > 7 {
            return Err(bad("a gzip seek point's window is damaged"));
        }
        let st = BlockBoundaryState {
            num_bits: bits,
            bit_buf,
            ..Default::default()
        };
        Ok(Inflater {
            d: Box::new(DecompressorOxide::from_block_boundary_state(&st)),
            dict: window.to_vec().into_boxed_slice(),
            ofs: 0,
            pend_at: 0,
            pend: 0,
        })
    }

    /// The window as of now, oldest byte first.
    fn window(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(TINFL_LZ_DICT_SIZE);
        w.extend_from_slice(&self.dict[self.ofs..]);
        w.extend_from_slice(&self.dict[..self.ofs]);
        w
    }
}

/// The codec-specific part of a [`Decoder`].
enum State {
    /// gzip: between members (`None`: the next member's header is to be read).
    Gzip(Box<Inflater>, bool),
    Xz(Box<liblzma::stream::Stream>),
    Bzip2(Box<bzip2::Decompress>),
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
    /// lz4: the current block's output and how much of it is handed out.
    Lz4 {
        out: Vec<u8>,
        at: usize,
    },
}

/// What the index pass collects: seek points, and where the stream ended.
#[derive(Default)]
struct Collected {
    spacing: u64,
    last: u64,
    points: Vec<(u64, Point)>,
    /// Image offset just past the stream's last byte, once it ended.
    end: Option<u64>,
}

impl Collected {
    fn push(&mut self, at: u64, p: Point) {
        self.points.push((at, p));
        self.last = at;
        if self.points.len() >= MAX_POINTS {
            // Keep every other one: the bound holds, the spacing doubles.
            let kept: Vec<_> = std::mem::take(&mut self.points)
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, p)| p)
                .collect();
            self.points = kept;
            self.spacing *= 2;
        }
    }
}

/// A decoder at a known uncompressed position, reading compressed input from
/// the image.
struct Decoder {
    src: Box<dyn Read + Send>,
    /// The source has no more bytes.
    eof: bool,
    /// The bzip2 index pass's state.
    bz: Option<Box<BzPass>>,
    buf: Vec<u8>,
    pos: usize,
    /// Image offset of `buf[pos]`.
    input: u64,
    state: State,
    codec: Codec,
    /// Concatenated members or streams (a whole tarball image) rather than one
    /// (an initrd segment, followed by other things).
    multi: bool,
    /// Uncompressed bytes handed out (the stream's offset of the next byte).
    out: u64,
    done: bool,
    /// An error to return after the output that came before it.
    error: Option<String>,
    /// During the index pass: where points go.
    collect: Option<Arc<Mutex<Collected>>>,
    /// During the index pass, a gzip member's CRC32 and size so far: deflate
    /// has no check of its own, and a damaged block often still decodes.
    check: Option<(crc32fast::Hasher, u32)>,
}

impl Decoder {
    fn new(
        src: ImageReader,
        codec: Codec,
        multi: bool,
        point: &Point,
        at: u64,
    ) -> io::Result<Decoder> {
        let fresh = |codec| -> io::Result<State> {
            Ok(match codec {
                Codec::Gzip => State::Gzip(Box::new(Inflater::new()), false),
                Codec::Xz => State::Xz(Box::new(
                    liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0)
                        .map_err(|e| bad(format!("xz: {e}")))?,
                )),
                Codec::Lzma => State::Xz(Box::new(
                    liblzma::stream::Stream::new_lzma_decoder(u64::MAX)
                        .map_err(|e| bad(format!("lzma: {e}")))?,
                )),
                Codec::Bzip2 => State::Bzip2(Box::new(bzip2::Decompress::new(false))),
                Codec::Zstd => State::Zstd(Box::new(zstd::stream::raw::Decoder::new()?)),
                Codec::Lz4Legacy => State::Lz4 {
                    out: Vec::new(),
                    at: 0,
                },
                Codec::Raw => return Err(bad("an uncompressed stream has no decoder")),
            })
        };
        let (input, state, prefix) = match point {
            Point::Start => (src.at, fresh(codec)?, None),
            Point::Gzip {
                input,
                bits,
                bit_buf,
                window,
            } => {
                let w = zstd::bulk::decompress(window, TINFL_LZ_DICT_SIZE)
                    .map_err(|e| bad(format!("a gzip seek point's window: {e}")))?;
                (
                    *input,
                    State::Gzip(Box::new(Inflater::resume(*bits, *bit_buf, &w)?), true),
                    None,
                )
            }
            Point::XzBlock { input, header } => (*input, fresh(Codec::Xz)?, Some(header.to_vec())),
            Point::Lz4Block { input } => (*input, fresh(codec)?, Some(Vec::new())),
            Point::Bzip2Block { bit, eos, crc } => {
                let d = Decoder {
                    src: Box::new(bz2::Synthetic::new(src, *bit, *eos, *crc)),
                    eof: false,
                    bz: None,
                    buf: Vec::new(),
                    pos: 0,
                    // Not an image offset: nothing reads it from a point.
                    input: 0,
                    state: fresh(Codec::Bzip2)?,
                    codec,
                    multi,
                    out: at,
                    done: false,
                    error: None,
                    collect: None,
                    check: None,
                };
                return Ok(d);
            }
        };
        let mut src = src;
        src.at = input;
        let mut d = Decoder {
            src: Box::new(src),
            eof: false,
            bz: None,
            buf: Vec::new(),
            pos: 0,
            input,
            state,
            codec,
            multi,
            out: at,
            done: false,
            error: None,
            collect: None,
            check: None,
        };
        if let Some(header) = prefix {
            // An xz block is decoded by a stream decoder after its stream's
            // header; an lz4 block needs no magic before it.
            d.buf = header;
            d.input -= d.buf.len() as u64;
        } else if codec == Codec::Lz4Legacy {
            d.magic()?;
        }
        Ok(d)
    }

    /// Has input at `buf[pos..]` unless the image ended.
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.buf.len() {
            return Ok(true);
        }
        self.buf.resize(READ_PIECE, 0);
        let n = self.src.read(&mut self.buf)?;
        self.buf.truncate(n);
        self.pos = 0;
        self.eof = n == 0;
        if let Some(bz) = &mut self.bz {
            bz.scan.feed(&self.buf);
        }
        Ok(n > 0)
    }

    /// Keeps `buf[pos..]` and reads more after it (the bzip2 pass's look-ahead).
    fn top_up(&mut self) -> io::Result<()> {
        let mut more = vec![0; READ_PIECE];
        let n = self.src.read(&mut more)?;
        more.truncate(n);
        self.eof = n == 0;
        if let Some(bz) = &mut self.bz {
            bz.scan.feed(&more);
        }
        self.buf.drain(..self.pos);
        self.buf.extend_from_slice(&more);
        self.pos = 0;
        Ok(())
    }

    fn byte(&mut self) -> io::Result<u8> {
        if !self.fill()? {
            return Err(cut(self.codec.name()));
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        self.input += 1;
        Ok(b)
    }

    fn u32le(&mut self) -> io::Result<u32> {
        let mut v = [0; 4];
        for b in &mut v {
            *b = self.byte()?;
        }
        Ok(u32::from_le_bytes(v))
    }

    /// Peeks at the next 4 bytes without consuming them; None near the end.
    fn peek4(&mut self) -> io::Result<Option<u32>> {
        if !self.fill()? {
            return Ok(None);
        }
        if self.buf.len() - self.pos < 4 {
            // Move the tail to the front and top up.
            let tail = self.buf[self.pos..].to_vec();
            let mut more = vec![0; READ_PIECE];
            let n = self.src.read(&mut more)?;
            more.truncate(n);
            self.buf = tail;
            self.buf.extend_from_slice(&more);
            self.pos = 0;
            if self.buf.len() < 4 {
                return Ok(None);
            }
        }
        let p = self.pos;
        Ok(Some(u32::from_le_bytes([
            self.buf[p],
            self.buf[p + 1],
            self.buf[p + 2],
            self.buf[p + 3],
        ])))
    }

    fn magic(&mut self) -> io::Result<()> {
        if self.u32le()? != LZ4_LEGACY_MAGIC {
            return Err(bad("not lz4's legacy format (no 02 21 4c 18 magic)"));
        }
        Ok(())
    }

    /// Reads a gzip member header; false at the end of the image.
    fn gzip_header(&mut self) -> io::Result<bool> {
        if !self.fill()? {
            return Ok(false);
        }
        let (a, b) = (self.byte()?, self.byte()?);
        if a != 0x1f || (b != 0x8b && b != 0x9e) {
            return Err(bad("not gzip (no 1f 8b magic)"));
        }
        if self.byte()? != 8 {
            return Err(bad("gzip compression method is not deflate"));
        }
        let flags = self.byte()?;
        for _ in 0..6 {
            self.byte()?;
        }
        if flags & 4 != 0 {
            let len = self.byte()? as usize | (self.byte()? as usize) << 8;
            for _ in 0..len {
                self.byte()?;
            }
        }
        for flag in [8, 16] {
            if flags & flag != 0 {
                // A name or comment: bounded by the image, as every byte() is.
                while self.byte()? != 0 {}
            }
        }
        if flags & 2 != 0 {
            self.byte()?;
            self.byte()?;
        }
        Ok(true)
    }

    /// The stream ended at `self.input`: another member follows (multi) or not.
    fn ended(&mut self) -> io::Result<()> {
        if let Some(c) = &self.collect {
            c.lock().end = Some(self.input);
        }
        if !self.multi {
            self.done = true;
            return Ok(());
        }
        // xz pads between streams with zeros; the others have none.
        while self.fill()? && self.buf[self.pos] == 0 {
            self.pos += 1;
            self.input += 1;
        }
        if !self.fill()? {
            self.done = true;
            return Ok(());
        }
        self.state = match self.codec {
            Codec::Gzip => State::Gzip(Box::new(Inflater::new()), false),
            Codec::Xz | Codec::Lzma => State::Xz(Box::new(
                liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0)
                    .map_err(|e| bad(format!("xz: {e}")))?,
            )),
            Codec::Bzip2 => State::Bzip2(Box::new(bzip2::Decompress::new(false))),
            Codec::Zstd => State::Zstd(Box::new(zstd::stream::raw::Decoder::new()?)),
            Codec::Lz4Legacy | Codec::Raw => {
                self.done = true;
                return Ok(());
            }
        };
        Ok(())
    }

    /// Whether the index pass wants a point now.
    fn point_due(&self) -> bool {
        self.collect.as_ref().is_some_and(|c| {
            let c = c.lock();
            self.out - c.last >= c.spacing
        })
    }

    fn gzip(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let State::Gzip(inf, started) = &mut self.state else {
                return Ok(0);
            };
            if inf.pend > 0 {
                let n = inf.pend.min(out.len());
                out[..n].copy_from_slice(&inf.dict[inf.pend_at..inf.pend_at + n]);
                inf.pend_at += n;
                inf.pend -= n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            if !*started {
                if !self.gzip_header()? {
                    self.done = true;
                    return Ok(0);
                }
                if let State::Gzip(_, started) = &mut self.state {
                    *started = true;
                }
                if self.collect.is_some() {
                    self.check = Some((crc32fast::Hasher::new(), 0));
                }
                continue;
            }
            let due = self.point_due();
            let more = self.fill()?;
            let State::Gzip(inf, _) = &mut self.state else {
                return Ok(0);
            };
            let mut flags = inflate_flags::TINFL_FLAG_IGNORE_ADLER32;
            if more {
                flags |= inflate_flags::TINFL_FLAG_HAS_MORE_INPUT;
            }
            if due {
                flags |= inflate_flags::TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY;
            }
            let (status, cin, cout) = decompress(
                &mut inf.d,
                &self.buf[self.pos..],
                &mut inf.dict,
                inf.ofs,
                flags,
            );
            self.pos += cin;
            self.input += cin as u64;
            if let Some((crc, size)) = &mut self.check {
                crc.update(&inf.dict[inf.ofs..inf.ofs + cout]);
                *size = size.wrapping_add(cout as u32);
            }
            inf.pend_at = inf.ofs;
            inf.pend = cout;
            inf.ofs = (inf.ofs + cout) & (TINFL_LZ_DICT_SIZE - 1);
            match status {
                TINFLStatus::Done => {
                    // The 8-byte trailer (CRC32, size), then maybe another member.
                    let (crc, size) = (self.u32le()?, self.u32le()?);
                    if let Some((h, n)) = self.check.take()
                        && (h.finalize() != crc || n != size)
                    {
                        return Err(bad(format!(
                            "a gzip member ending at byte {} fails its CRC32 or size check",
                            self.input
                        )));
                    }
                    self.ended()?;
                    if let State::Gzip(_, started) = &mut self.state {
                        *started = false;
                    }
                }
                TINFLStatus::BlockBoundary => {
                    if let (Some(c), Some(st)) = (&self.collect, inf.d.block_boundary_state()) {
                        let window = zstd::bulk::compress(&inf.window(), 1)?;
                        c.lock().push(
                            self.out + cout as u64,
                            Point::Gzip {
                                input: self.input,
                                bits: st.num_bits,
                                bit_buf: st.bit_buf,
                                window: Arc::new(window),
                            },
                        );
                    }
                }
                TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress if !more => {
                    return Err(cut("gzip"));
                }
                TINFLStatus::NeedsMoreInput | TINFLStatus::HasMoreOutput => {
                    if cin == 0 && cout == 0 && status == TINFLStatus::HasMoreOutput {
                        return Err(bad("deflate decoder made no progress"));
                    }
                }
                other => {
                    return Err(bad(format!(
                        "invalid deflate data near byte {} ({other:?})",
                        self.input
                    )));
                }
            }
        }
    }

    fn lz4(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let State::Lz4 { out: block, at } = &mut self.state
                && *at < block.len()
            {
                let n = (block.len() - *at).min(out.len());
                out[..n].copy_from_slice(&block[*at..*at + n]);
                *at += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            let Some(len) = self.peek4()? else {
                self.done = true;
                if let Some(c) = &self.collect {
                    c.lock().end = Some(self.input);
                }
                return Ok(0);
            };
            if len == LZ4_LEGACY_MAGIC {
                // The format allows the magic again between blocks.
                self.u32le()?;
                continue;
            }
            // The longest an 8 MiB block can compress to; anything else (the
            // zero padding after an initrd segment, another segment's magic)
            // ends the stream, as it does the kernel's unlz4.
            let bound = LZ4_BLOCK + LZ4_BLOCK / 255 + 16;
            if len == 0 || len as usize > bound {
                self.done = true;
                if let Some(c) = &self.collect {
                    c.lock().end = Some(self.input);
                }
                return Ok(0);
            }
            if let Some(c) = &self.collect {
                let mut c = c.lock();
                if self.out > 0 {
                    c.push(self.out, Point::Lz4Block { input: self.input });
                }
            }
            self.u32le()?;
            let mut block = vec![0; len as usize];
            let mut got = 0;
            while got < block.len() {
                if !self.fill()? {
                    return Err(cut("lz4"));
                }
                let n = (self.buf.len() - self.pos).min(block.len() - got);
                block[got..got + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                self.input += n as u64;
                got += n;
            }
            let mut dec = vec![0; LZ4_BLOCK];
            let n = lz4_flex::block::decompress_into(&block, &mut dec)
                .map_err(|e| bad(format!("lz4 block: {e}")))?;
            dec.truncate(n);
            self.state = State::Lz4 { out: dec, at: 0 };
        }
    }

    /// xz, lzma, bzip2, zstd: the library's streaming call, input from `buf`.
    fn library(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(e) = self.error.take() {
                return Err(bad(e));
            }
            if self.done {
                return Ok(0);
            }
            let more = self.fill()?;
            let mut end = self.buf.len();
            let mut boundary = None;
            if let Some(bz) = &self.bz {
                // The pass feeds libbz2 only up to the byte holding the next
                // magic's first bit: there, once it has nothing more to give,
                // everything before that block is out. Magics are found ahead
                // of what is fed (12 bytes: a magic and its block's CRC).
                let base = self.input - self.pos as u64;
                if !self.eof {
                    let held = self.buf.len().saturating_sub(12);
                    if self.pos >= held {
                        self.top_up()?;
                        continue;
                    }
                    end = held;
                }
                if let Some(m) = bz.scan.found.front() {
                    let lim = m.limit();
                    if lim <= self.input {
                        boundary = Some(*m);
                        end = self.pos;
                    } else if lim < base + end as u64 {
                        end = (lim - base) as usize;
                    }
                }
            }
            let input = &self.buf[self.pos..end];
            let (cin, cout, end) = match &mut self.state {
                State::Xz(s) => {
                    let (i0, o0) = (s.total_in(), s.total_out());
                    let r = s.process(input, out, liblzma::stream::Action::Run);
                    let (cin, cout) = ((s.total_in() - i0) as usize, (s.total_out() - o0) as usize);
                    match r {
                        Ok(st) => (cin, cout, st == liblzma::stream::Status::StreamEnd),
                        // A decoder started at a block reads the stream's index
                        // as if it were a block, and fails, once the data ends:
                        // what it wrote before that is good.
                        Err(e) if cout > 0 => {
                            self.error = Some(format!("{}: {e}", self.codec.name()));
                            (cin, cout, false)
                        }
                        Err(e) => return Err(bad(format!("{}: {e}", self.codec.name()))),
                    }
                }
                State::Bzip2(s) => {
                    let (i0, o0) = (s.total_in(), s.total_out());
                    let r = s.decompress(input, out);
                    let (cin, cout) = ((s.total_in() - i0) as usize, (s.total_out() - o0) as usize);
                    match r {
                        Ok(st) => (cin, cout, st == bzip2::Status::StreamEnd),
                        Err(e) => return Err(bad(format!("bzip2: {e}"))),
                    }
                }
                State::Zstd(s) => {
                    use zstd::stream::raw::Operation;
                    let st = s
                        .run_on_buffers(input, out)
                        .map_err(|e| bad(format!("zstd: {e}")))?;
                    (st.bytes_read, st.bytes_written, st.remaining == 0)
                }
                _ => return Ok(0),
            };
            self.pos += cin;
            self.input += cin as u64;
            if end {
                self.ended()?;
            }
            if cout > 0 {
                return Ok(cout);
            }
            if let (Some(m), Some(bz), Some(c)) = (boundary, &mut self.bz, &self.collect) {
                bz.boundary(self.out, m, c)?;
                bz.scan.found.pop_front();
                continue;
            }
            if !more && !end {
                return Err(cut(self.codec.name()));
            }
            if cin == 0 && !end && self.pos < self.buf.len() {
                return Err(bad(format!(
                    "{} decoder made no progress",
                    self.codec.name()
                )));
            }
        }
    }
}

impl Read for Decoder {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let n = match self.codec {
            Codec::Gzip => self.gzip(out)?,
            Codec::Lz4Legacy => self.lz4(out)?,
            _ => self.library(out)?,
        };
        self.out += n as u64;
        Ok(n)
    }
}

/// The index pass's reader: the stream decoded from its start, collecting seek
/// points; hand it back with [`Stream::finish_index`].
pub struct Indexer {
    read: Box<dyn Read + Send>,
    collected: Option<Arc<Mutex<Collected>>>,
}

impl Read for Indexer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read.read(buf)
    }
}

/// A decoder parked where the last read ended.
struct Parked {
    pos: u64,
    read: Box<dyn Read + Send>,
}

/// One compressed (or raw) stream of an image, read at uncompressed offsets.
pub struct Stream {
    bytes: Arc<dyn Bytes>,
    /// Image offset of its first byte.
    start: u64,
    codec: Codec,
    multi: bool,
    /// Seek points by uncompressed offset, ascending; the first is the start.
    points: Vec<(u64, Point)>,
    /// Image offset just past its last byte, once known.
    end: Option<u64>,
    decoder: Mutex<Option<Parked>>,
    failed: Arc<Mutex<Option<InsideError>>>,
}

impl Stream {
    /// The stream of `codec` at image offset `start`: to the image's end with
    /// members or streams concatenated (`multi`, a tarball), or exactly one
    /// (an initrd segment, which other data follows).
    pub fn new(bytes: Arc<dyn Bytes>, start: u64, codec: Codec, multi: bool) -> Stream {
        Stream {
            bytes,
            start,
            codec,
            multi,
            points: vec![(0, Point::Start)],
            end: None,
            decoder: Mutex::new(None),
            failed: Arc::new(Mutex::new(None)),
        }
    }

    /// A stream whose seek points and end were found before (an index file).
    pub fn with_points(
        mut self,
        points: Vec<(u64, Point)>,
        end: Option<u64>,
    ) -> Result<Stream, InsideError> {
        let ok = points.first().is_some_and(|p| p == &(0, Point::Start))
            && points.windows(2).all(|w| w[0].0 < w[1].0);
        if !ok {
            return Err(InsideError::corrupt(
                self.name(),
                "seek points out of order (index file)",
            ));
        }
        self.points = points;
        self.end = end;
        Ok(self)
    }

    fn name(&self) -> &str {
        self.bytes.name()
    }

    /// How it is compressed.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Image offset of its first byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Image offset just past its last byte, once the index pass found it.
    pub fn end(&self) -> Option<u64> {
        self.end
    }

    /// Its seek points, by uncompressed offset.
    pub fn points(&self) -> &[(u64, Point)] {
        &self.points
    }

    /// An I/O error from a decoder: the image's read error if that was the
    /// cause, or corrupt data.
    pub fn io_error(&self, e: io::Error) -> InsideError {
        match self.failed.lock().take() {
            Some(e) => e,
            None => InsideError::corrupt(self.name(), format!("{}: {e}", self.codec.name())),
        }
    }

    fn reader(&self, at: u64) -> ImageReader {
        ImageReader {
            bytes: self.bytes.clone(),
            at,
            failed: self.failed.clone(),
        }
    }

    fn decoder(&self, at: u64, point: &Point) -> io::Result<Decoder> {
        Decoder::new(self.reader(self.start), self.codec, self.multi, point, at)
    }

    /// The reader for the index pass: the whole stream from its start,
    /// recording seek points as it goes (xz: from the stream's index, after).
    pub fn indexer(&self) -> Result<Indexer, InsideError> {
        if self.codec == Codec::Raw {
            // Raw streams need no points; the format reader finds their end.
            return Ok(Indexer {
                read: Box::new(self.reader(self.start)),
                collected: None,
            });
        }
        let mut d = self
            .decoder(0, &Point::Start)
            .map_err(|e| self.io_error(e))?;
        let c = Arc::new(Mutex::new(Collected {
            spacing: SPACING,
            ..Default::default()
        }));
        d.collect = Some(c.clone());
        if self.codec == Codec::Bzip2 {
            d.bz = Some(Box::new(BzPass {
                scan: bz2::Scan::new(self.start),
                blocks: Vec::new(),
                pending: Vec::new(),
                last: 0,
            }));
        }
        Ok(Indexer {
            read: Box::new(d),
            collected: Some(c),
        })
    }

    /// Takes the index pass's points and end.
    pub fn finish_index(&mut self, mut indexer: Indexer) {
        // A format reader stops at its own end (tar's zero blocks); bzip2's
        // points are only complete at the stream's end, and the rest is a few
        // KiB of padding. Damage there is not the format's business.
        if self.multi && indexer.collected.is_some() {
            let _ = io::copy(&mut indexer.read, &mut io::sink());
            self.failed.lock().take();
        }
        drop(indexer.read);
        let Some(c) = indexer.collected else {
            return;
        };
        let c = std::mem::take(&mut *c.lock());
        self.end = c.end;
        self.points.truncate(1);
        self.points.extend(c.points);
        if self.codec == Codec::Xz {
            let end = if self.multi {
                Some(self.bytes.size())
            } else {
                self.end
            };
            if let Some(end) = end {
                self.points.extend(self.xz_blocks(end));
            }
        }
        self.points.sort_by_key(|(at, _)| *at);
        self.points.dedup_by_key(|(at, _)| *at);
    }

    /// Sets the end of a raw stream, which its format reader found.
    pub fn set_end(&mut self, end: u64) {
        self.end = Some(end);
    }

    /// The blocks of a single xz stream ending at `end`, from its index (none if
    /// it has one block or the index cannot be read: the stream is then read
    /// from its start).
    fn xz_blocks(&self, end: u64) -> Vec<(u64, Point)> {
        self.xz_index(end).map(|(p, _)| p).unwrap_or_default()
    }

    /// A single xz stream's block points and uncompressed size, from its index
    /// (which the stream's last bytes locate): None if it cannot be read or the
    /// blocks do not fill the stream.
    fn xz_index(&self, end: u64) -> Option<(Vec<(u64, Point)>, u64)> {
        let start = self.start;
        let (Ok(head), Ok(foot)) = (
            self.bytes.read_vec(start, 12),
            self.bytes.read_vec(end.saturating_sub(12), 12),
        ) else {
            return None;
        };
        if &head[..6] != b"\xfd7zXZ\0" || &foot[10..] != b"YZ" {
            return None;
        }
        let backward = (u32::from_le_bytes([foot[4], foot[5], foot[6], foot[7]]) as u64 + 1) * 4;
        let index_at = end
            .checked_sub(12 + backward)
            .filter(|a| *a >= start + 12)?;
        let index = self.bytes.read_vec(index_at, backward as usize).ok()?;
        let mut p = 1;
        let varint = |p: &mut usize| -> Option<u64> {
            let mut v = 0u64;
            for i in 0..9 {
                let b = *index.get(*p)?;
                *p += 1;
                v |= ((b & 0x7f) as u64) << (7 * i);
                if b & 0x80 == 0 {
                    return Some(v);
                }
            }
            None
        };
        let mut header = [0; 12];
        header.copy_from_slice(&head);
        let (mut input, mut output) = (start + 12, 0u64);
        let mut out = Vec::new();
        let n = varint(&mut p)?;
        // Each record takes at least 2 bytes: a count past that is damage.
        if n > backward {
            return None;
        }
        for i in 0..n {
            let (unpadded, usize_) = (varint(&mut p)?, varint(&mut p)?);
            if i > 0 {
                out.push((output, Point::XzBlock { input, header }));
            }
            input = input.saturating_add(unpadded.div_ceil(4) * 4);
            output = output.saturating_add(usize_);
        }
        // The blocks must end where the index starts: one stream, no padding.
        (input == index_at).then_some((out, output))
    }

    /// Uncompressed bytes at `offset` (as many as there are, up to `buf.len()`;
    /// 0 at the end), through the one decoder, restarted at the nearest seek
    /// point when it is past `offset` or behind that point.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, InsideError> {
        if self.codec == Codec::Raw {
            let end = self.end.unwrap_or(self.bytes.size());
            let at = self.start.saturating_add(offset);
            let n = (buf.len() as u64).min(end.saturating_sub(at)) as usize;
            if n > 0 {
                self.bytes.read_exact_at(at, &mut buf[..n])?;
            }
            return Ok(n);
        }
        let mut slot = self.decoder.lock();
        let best = self
            .points
            .iter()
            .rev()
            .find(|(at, _)| *at <= offset)
            .unwrap_or(&self.points[0]);
        let restart = match slot.as_ref() {
            Some(d) => d.pos > offset || d.pos < best.0,
            None => true,
        };
        if restart {
            *slot = None;
            let d = self
                .decoder(best.0, &best.1)
                .map_err(|e| self.io_error(e))?;
            *slot = Some(Parked {
                pos: best.0,
                read: Box::new(d),
            });
        }
        let Some(d) = slot.as_mut() else {
            return Ok(0);
        };
        let mut skip = vec![0; 64 << 10];
        while d.pos < offset {
            let want = ((offset - d.pos) as usize).min(skip.len());
            match d.read.read(&mut skip[..want]) {
                Ok(0) => return Ok(0),
                Ok(n) => d.pos += n as u64,
                Err(e) => {
                    *slot = None;
                    return Err(self.io_error(e));
                }
            }
        }
        let mut done = 0;
        while done < buf.len() {
            match d.read.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    d.pos += n as u64;
                }
                Err(e) => {
                    *slot = None;
                    return Err(self.io_error(e));
                }
            }
        }
        Ok(done)
    }
}

mod whole;
pub use whole::{MAX_IN_MEMORY, random_access};

#[cfg(test)]
pub(crate) mod tests;
