//! The compressors squashfs images use, each behind one function that inflates a
//! whole block into at most `limit` bytes: a block that would inflate past its
//! limit is corrupt (or a bomb), never a reason to allocate more.

use std::io::Read;

/// A squashfs compressor id (superblock field `compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// zlib streams (mksquashfs `-comp gzip`, the default).
    Gzip,
    /// Legacy LZMA "alone" streams (squashfs-tools 4.0's lzma; rare).
    Lzma,
    /// LZO1X: no maintained pure or system-linked crate here; refused clearly.
    Lzo,
    /// xz streams (what MAAS's published images use).
    Xz,
    /// LZ4 raw blocks.
    Lz4,
    /// Zstandard frames.
    Zstd,
}

impl Codec {
    /// The codec for a superblock id; None for an unknown one.
    pub fn from_id(id: u16) -> Option<Codec> {
        Some(match id {
            1 => Codec::Gzip,
            2 => Codec::Lzma,
            3 => Codec::Lzo,
            4 => Codec::Xz,
            5 => Codec::Lz4,
            6 => Codec::Zstd,
            _ => return None,
        })
    }

    /// Its name, as mksquashfs spells it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Lzma => "lzma",
            Codec::Lzo => "lzo",
            Codec::Xz => "xz",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }

    /// Inflates `input`, which must come to at most `limit` bytes.
    pub fn inflate(self, input: &[u8], limit: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(limit);
        match self {
            Codec::Gzip => read_all(flate2::read::ZlibDecoder::new(input), limit, &mut out)?,
            Codec::Xz => read_all(liblzma::read::XzDecoder::new(input), limit, &mut out)?,
            Codec::Lzma => {
                let stream = liblzma::stream::Stream::new_lzma_decoder(u64::MAX)
                    .map_err(|e| format!("lzma: {e}"))?;
                read_all(
                    liblzma::read::XzDecoder::new_stream(input, stream),
                    limit,
                    &mut out,
                )?
            }
            Codec::Lz4 => {
                out.resize(limit, 0);
                let n = lz4_flex::block::decompress_into(input, &mut out)
                    .map_err(|e| format!("lz4: {e}"))?;
                out.truncate(n);
            }
            Codec::Zstd => {
                out = zstd::bulk::decompress(input, limit).map_err(|e| format!("zstd: {e}"))?;
            }
            Codec::Lzo => return Err("lzo-compressed squashfs is not supported".into()),
        }
        Ok(out)
    }
}

/// Reads `r` to its end into `out`, failing past `limit` bytes.
fn read_all(r: impl Read, limit: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let mut r = r.take(limit as u64 + 1);
    r.read_to_end(out).map_err(|e| e.to_string())?;
    if out.len() > limit {
        return Err(format!("a block inflates past its {limit} bytes"));
    }
    Ok(())
}
