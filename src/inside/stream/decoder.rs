//! The decoders behind [`Stream`](super::Stream): gzip over a deflate core whose
//! state at a block boundary is a seek point, legacy lz4 by blocks, and the
//! library codecs (xz, bzip2, zstd, lzma), each resumable from a point.

use super::*;

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
pub(super) struct Collected {
    pub(super) spacing: u64,
    pub(super) last: u64,
    pub(super) points: Vec<(u64, Point)>,
    /// Image offset just past the stream's last byte, once it ended.
    pub(super) end: Option<u64>,
}

impl Collected {
    pub(super) fn push(&mut self, at: u64, p: Point) {
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
pub(super) struct Decoder {
    src: Box<dyn Read + Send>,
    /// The source has no more bytes.
    eof: bool,
    /// The bzip2 index pass's state.
    pub(super) bz: Option<Box<BzPass>>,
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
    pub(super) collect: Option<Arc<Mutex<Collected>>>,
    /// During the index pass, a gzip member's CRC32 and size so far: deflate
    /// has no check of its own, and a damaged block often still decodes.
    check: Option<(crc32fast::Hasher, u32)>,
}

impl Decoder {
    pub(super) fn new(
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
