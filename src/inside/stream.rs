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

mod decoder;
use decoder::{Collected, Decoder};

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
