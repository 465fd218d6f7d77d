//! The disk cache (`--cache-dir`) as seen from a handle: reading a chunk from its
//! verified file, starting the fill of an image not there yet (a background handle
//! of its own that rides the same stream as the readers), and handing the file
//! (or a MAAS 3.5+ storage file) to the mount for passthrough and to HTTP for
//! sendfile.

use std::sync::Arc;
use std::time::Duration;

use log::{debug, warn};

use super::file::FileSource;
use super::source::ByteSource;
use super::{CHUNK, Handle, Shared, State, disk};
use crate::catalog::FileInfo;

impl Shared {
    /// Opens the disk cache's file of this content if it is there; true if open.
    pub(super) fn open_disk(&self, st: &mut State) -> bool {
        if st.disk.is_none()
            && self.pool().share_by_sha256
            && let Some(file) = self
                .pool()
                .disk
                .as_ref()
                .and_then(|d| d.lookup(&self.target.sha256, self.size))
        {
            let source = FileSource::new(file, self.size, self.target.sha256.clone());
            st.disk = source.open(Duration::ZERO).ok();
        }
        st.disk.is_some()
    }

    /// Chunk `idx` from the disk cache, if the content is there.
    pub(super) fn disk_chunk(&self, st: &mut State, idx: u64) -> Option<Arc<Vec<u8>>> {
        if !self.open_disk(st) {
            return None;
        }
        let disk = st.disk.as_mut()?;
        let start = idx * CHUNK;
        let len = CHUNK.min(self.size - start);
        let mut buf = self.content.buffer();
        match disk.read(start, len, &mut buf) {
            Ok(()) => Some(Arc::new(buf)),
            Err(e) => {
                warn!(
                    "{}: reading the disk cache failed ({}); using the database",
                    self.path,
                    self.error(e).reason()
                );
                st.disk = None;
                None
            }
        }
    }

    /// Starts copying the whole image into the disk cache, once per handle, when
    /// the pool has one and the image is not there yet. A thread reads it through
    /// a handle of its own, so it shares the stream and chunks of every reader and
    /// costs the database nothing more.
    pub(super) fn start_fill(&self, st: &mut State) {
        if st.fill_tried || !self.pool().share_by_sha256 {
            return;
        }
        st.fill_tried = true;
        let Some(fill) = self
            .pool()
            .disk
            .as_ref()
            .and_then(|d| d.begin(&self.target.sha256, self.size))
        else {
            return;
        };
        // The filler reads the same source under the same cache key, so it
        // shares this reader's stream and chunks.
        let h = self.pool().open_source(
            self.target.source.clone(),
            self.key.clone(),
            &FileInfo {
                oid: 0,
                size: self.size,
                sha256: self.target.sha256.clone(),
                filetype: String::new(),
                stored: None,
            },
            &self.path,
            true,
        );
        let spawned = std::thread::Builder::new()
            .name("cache-fill".into())
            .spawn(move || fill_disk(h, fill));
        if let Err(e) = spawned {
            warn!("{}: cannot start filling the disk cache: {e}", self.path);
        }
    }
}

/// Reads the whole content through `h`, a background handle of its own, into `fill`.
fn fill_disk(h: Handle, mut fill: disk::Fill) {
    let path = h.path().to_string();
    let size = h.size();
    let mut off = 0u64;
    while off < size {
        let res = h.read_span(off, CHUNK as usize, false, |b| {
            fill.write(off, b).then_some(b.len() as u64)
        });
        match res {
            Ok(Some(n)) if n > 0 => off += n,
            Ok(_) => return,
            Err(e) => {
                debug!("{path}: filling the disk cache stopped: {e}");
                return;
            }
        }
    }
    h.close();
    if fill.finish() {
        debug!("{path}: in the disk cache");
    }
}

impl Handle {
    /// The disk cache's verified file of this content, if it is there: the mount
    /// hands it to the kernel for passthrough.
    pub fn cached_file(&self) -> Option<std::fs::File> {
        let sh = &self.shared;
        // MAAS 3.5+: the storage file itself, the descriptor opened with the handle.
        if let Some(s) = &sh.storage {
            return s.file().ok()?.try_clone().ok();
        }
        if !sh.pool().share_by_sha256 {
            return None;
        }
        sh.pool().disk.as_ref()?.lookup(&sh.target.sha256, sh.size)
    }
}

impl Handle {
    /// MAAS 3.5+: the image storage file this handle reads, opened with it (None
    /// when its bytes come from the database): HTTP sends it with sendfile(2).
    pub fn storage_file(&self) -> Option<Arc<std::fs::File>> {
        self.shared.storage.as_ref()?.file().ok().cloned()
    }
}
