//! bzip2 seek points, as seek-bzip2 finds them. A bzip2 stream is blocks, each
//! compressed on its own, starting at any bit (after a 48-bit magic) and ended
//! by a 48-bit end-of-stream magic and the stream's CRC, combined over its
//! blocks. A point is a block's bit offset; reading from it feeds libbz2 a
//! stream made up on the fly: a header, the original bits from that block up to
//! the end-of-stream magic shifted to a byte boundary, that magic with the CRC
//! combined over those blocks only (found in the index pass), then the image's
//! bytes after the original stream (its next stream, if any).

use std::collections::VecDeque;
use std::io::{self, Read};

/// A block's magic (pi).
const BLOCK: u64 = 0x3141_5926_5359;
/// The end-of-stream magic (sqrt(pi)).
const EOS: u64 = 0x1772_4538_5090;
const MASK48: u64 = (1 << 48) - 1;

/// A magic found in the compressed bits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Magic {
    /// Image bit offset of its first bit.
    pub bit: u64,
    /// The end-of-stream magic (else a block's).
    pub eos: bool,
    /// The 32 bits after it (a block's CRC), once scanned.
    pub crc: Option<u32>,
}

impl Magic {
    /// The image byte holding its first bit, plus one: what the decoder may be
    /// fed before this magic's boundary is reached.
    pub fn limit(&self) -> u64 {
        self.bit / 8 + 1
    }
}

/// Finds the magics in the compressed bytes, fed in order.
pub(super) struct Scan {
    win: u64,
    /// Image bit offset just past the last bit fed.
    bits: u64,
    /// Found, not yet passed by the decoder.
    pub found: VecDeque<Magic>,
}

impl Scan {
    /// A scanner whose first byte fed is image byte `start`.
    pub fn new(start: u64) -> Scan {
        Scan {
            win: 0,
            bits: start * 8,
            found: VecDeque::new(),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.win = (self.win << 8) | b as u64;
            self.bits += 8;
            // A block's CRC: the 32 bits after its magic.
            for m in self.found.iter_mut().rev().take(2) {
                let end = m.bit + 80;
                if m.crc.is_none() && self.bits >= end && self.bits - end < 8 {
                    m.crc = Some((self.win >> (self.bits - end)) as u32);
                }
            }
            for s in (0..8).rev() {
                let c = (self.win >> s) & MASK48;
                if (c == BLOCK || c == EOS) && self.bits >= 48 + s {
                    let bit = self.bits - s - 48;
                    if self.found.back().is_none_or(|m| m.bit < bit) {
                        self.found.push_back(Magic {
                            bit,
                            eos: c == EOS,
                            crc: None,
                        });
                    }
                }
            }
        }
    }
}

/// The CRC bzip2 combines over `crcs` (blocks in order).
pub(super) fn combine(crcs: impl Iterator<Item = u32>) -> u32 {
    crcs.fold(0u32, |c, b| c.rotate_left(1) ^ b)
}

/// The stream libbz2 reads from a block point.
pub(super) struct Synthetic {
    src: super::ImageReader,
    /// Image byte where the original stream's end ends: the image resumes there.
    after: u64,
    /// Bits still to copy from the image (to the end-of-stream magic).
    left: u64,
    /// Bits of the first byte read to skip.
    skip: u32,
    crc: u32,
    acc: u64,
    nacc: u32,
    out: Vec<u8>,
    at: usize,
    /// The made-up part is done: the image's own bytes follow.
    through: bool,
    chunk: Vec<u8>,
}

impl Synthetic {
    /// The stream from the block at image bit `bit` to the end-of-stream magic
    /// at bit `eos`, whose blocks' CRCs combine to `crc`; then the image from
    /// the end of that stream on.
    pub fn new(mut src: super::ImageReader, bit: u64, eos: u64, crc: u32) -> Synthetic {
        src.at = bit / 8;
        Synthetic {
            src,
            // The magic and the 32-bit CRC, then padding to a byte.
            after: (eos + 80).div_ceil(8),
            left: eos.saturating_sub(bit),
            skip: (bit % 8) as u32,
            crc,
            acc: 0,
            nacc: 0,
            out: b"BZh9".to_vec(),
            at: 0,
            through: false,
            chunk: vec![0; 64 << 10],
        }
    }

    fn push(&mut self, v: u64, n: u32) {
        self.acc = (self.acc << n) | (v & ((1u64 << n) - 1));
        self.nacc += n;
        while self.nacc >= 8 {
            self.out.push((self.acc >> (self.nacc - 8)) as u8);
            self.nacc -= 8;
        }
        self.acc &= (1u64 << self.nacc) - 1;
    }
}

impl Read for Synthetic {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.out.len() {
                let n = (self.out.len() - self.at).min(buf.len());
                buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if self.through {
                return self.src.read(buf);
            }
            self.out.clear();
            self.at = 0;
            if self.left == 0 {
                self.push(EOS, 48);
                self.push(self.crc as u64, 32);
                if self.nacc > 0 {
                    let pad = 8 - self.nacc;
                    self.push(0, pad);
                }
                self.through = true;
                self.src.at = self.after;
                continue;
            }
            let want = (self.left + self.skip as u64)
                .div_ceil(8)
                .min(self.chunk.len() as u64);
            let n = self.src.read(&mut self.chunk[..want as usize])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "bzip2 stream cut short",
                ));
            }
            for i in 0..n {
                let b = self.chunk[i] as u64;
                let have = 8 - self.skip;
                let take = (have as u64).min(self.left) as u32;
                // MSB first: skip the bits before the point, take the next.
                let v = (b >> (have - take)) & ((1 << take) - 1);
                self.push(v, take);
                self.left -= take as u64;
                self.skip = 0;
                if self.left == 0 {
                    break;
                }
            }
        }
    }
}
