//! The seam under [`super::Handle`]: where the bytes of one content come from.
//!
//! A [`ByteSource`] knows one content (its size and sha256) and how to reach it;
//! [`ByteSource::open`] sets up a [`Session`], a view of exactly that content that
//! stays the same until it ends (for a large object: a pooled connection inside
//! its own `REPEATABLE READ READ ONLY` transaction, after the identity check; for
//! a local file: an open descriptor, which keeps its bytes even if the file is
//! replaced or deleted). Everything above this seam (the chunk cache, single
//! flight, read-ahead windows, resuming after a lost connection, the idle sweeper)
//! is the same whatever the source, and is tested against a fake source that
//! fails where a test tells it to (`fake.rs`).
//!
//! Implementations: [`super::lo::LoSource`] (a large object, through the handle
//! pool) and [`super::file::FileSource`] (a verified local file: the disk cache).

use std::io::BufRead;
use std::time::Duration;

use super::error::HandleErrorKind;

/// Where the bytes of one content come from.
pub(crate) trait ByteSource: Send + Sync {
    /// Sets up a session on the content, waiting at most `wait` for whatever the
    /// source needs (a pooled connection), and checks that it is still the content
    /// the handle was opened on: an error of class gone if it changed or went.
    fn open(&self, wait: Duration) -> Result<Box<dyn Session>, HandleErrorKind>;

    /// What the source reads, for log lines ("large object 16401").
    fn describe(&self) -> String;

    /// [`ByteSource::open`], and when `export`, the name under which other
    /// sessions can take the same snapshot ([`ByteSource::join`]) while this one
    /// lasts: None where the source has no such thing (a local file's descriptor
    /// needs none) or the server refused.
    fn open_shared(
        &self,
        wait: Duration,
        export: bool,
    ) -> Result<(Box<dyn Session>, Option<String>), HandleErrorKind> {
        let _ = export;
        Ok((self.open(wait)?, None))
    }

    /// A session in the snapshot `id` that a session of [`ByteSource::open_shared`]
    /// exported and still holds, with the content check in it. A server error if
    /// that snapshot can no longer be had.
    fn join(&self, id: &str, wait: Duration) -> Result<Box<dyn Session>, HandleErrorKind> {
        let _ = id;
        self.open(wait)
    }
}

/// One consistent view of a content, from its set-up to [`Session::end`].
pub(crate) trait Session: Send {
    /// Appends the bytes `start..start + len` to `out`: exactly `len` of them, or
    /// an error (a short read is [`HandleErrorKind::Truncated`]).
    fn read(&mut self, start: u64, len: u64, out: &mut Vec<u8>) -> Result<(), HandleErrorKind>;

    /// A reader of the bytes `start..end`, in one request where the source can
    /// (one statement for a large object), for read-ahead. It yields those bytes
    /// and then ends; an error while reading is an `io::Error` whose inner error,
    /// if any, is the driver's (see [`HandleErrorKind::Stream`]).
    fn window(&mut self, start: u64, end: u64) -> Result<Box<dyn BufRead + '_>, HandleErrorKind>;

    /// Ends the view cleanly (the transaction ends before the connection goes
    /// back). Dropping a session without ending it must be safe too: a
    /// connection dropped inside its transaction is discarded, never reused.
    fn end(self: Box<Self>);
}
