//! Where an ext inode's data blocks are: extent trees (ext4) and block maps
//! (ext2/3), bounded by the blocks the inode says it has.

use super::*;

impl Ext {
    /// Where inode `i`'s blocks are, sorted by logical block.
    pub(super) fn map(&self, i: &Inode) -> Result<Arc<Vec<Run>>, InsideError> {
        if let Some(m) = self.maps.lock().get(&i.number) {
            return Ok(m.clone());
        }
        let blocks = i.size.div_ceil(self.sb.block_size);
        // Extents, tree blocks, indirect blocks and data pointers looked at: no
        // more than the blocks the inode says it has (i_blocks counts them all),
        // so a corrupt tree that names a block many times ends.
        let allocated = i.blocks / (self.sb.block_size / 512);
        let mut budget = allocated.min(self.sb.blocks_count) + 64;
        let mut runs = Vec::new();
        if i.flags & FL_EXTENTS != 0 {
            self.extents(i, &i.block, MAX_DEPTH + 1, &mut runs, &mut budget)?;
            runs.sort_by_key(|r| r.logical);
        } else {
            self.block_map(i, blocks, &mut runs, &mut budget)?;
        }
        for r in &runs {
            if !r.zero
                && r.physical
                    .checked_add(r.len)
                    .is_none_or(|end| end > self.sb.blocks_count)
            {
                return Err(self.corrupt(format!(
                    "inode {}: blocks {}..+{} past the file system's {}",
                    i.number, r.physical, r.len, self.sb.blocks_count
                )));
            }
        }
        let runs = Arc::new(runs);
        self.maps.lock().put(i.number, runs.clone());
        Ok(runs)
    }

    /// Appends the extents of the node in `node` (the inode's `i_block` or a
    /// tree block) to `runs`; `above` is the depth its parent had, each level
    /// must be one less, and `budget` bounds the extents a file may have.
    fn extents(
        &self,
        i: &Inode,
        node: &[u8],
        above: u16,
        runs: &mut Vec<Run>,
        budget: &mut u64,
    ) -> Result<(), InsideError> {
        let bad = |why: String| self.corrupt(format!("inode {}: extent tree: {why}", i.number));
        if le16(node, 0) != EXTENT_MAGIC {
            return Err(bad("no f30a magic".into()));
        }
        let (entries, depth) = (usize::from(le16(node, 2)), le16(node, 6));
        if depth >= above || depth > MAX_DEPTH {
            return Err(bad(format!("depth {depth} below depth {above}")));
        }
        if 12 + entries * 12 > node.len() {
            return Err(bad(format!("{entries} entries in {} bytes", node.len())));
        }
        for e in node[12..12 + entries * 12].chunks_exact(12) {
            let logical = u64::from(le32(e, 0));
            if depth == 0 {
                let raw = le16(e, 4);
                let (len, zero) = if raw > 32768 {
                    (raw - 32768, true)
                } else {
                    (raw, false)
                };
                let physical = u64::from(le16(e, 6)) << 32 | u64::from(le32(e, 8));
                *budget = budget
                    .checked_sub(1)
                    .ok_or_else(|| bad("more extents than the file has blocks".into()))?;
                if len > 0 {
                    runs.push(Run {
                        logical,
                        physical,
                        len: u64::from(len),
                        zero,
                    });
                }
            } else {
                let child = u64::from(le32(e, 4)) | u64::from(le16(e, 8)) << 32;
                *budget = budget
                    .checked_sub(1)
                    .ok_or_else(|| bad("more tree blocks than the file has blocks".into()))?;
                let b = self.block(child)?;
                self.extents(i, &b, depth, runs, budget)?;
            }
        }
        Ok(())
    }

    /// The ext2/3 block map: 12 direct pointers, then single, double and triple
    /// indirect blocks; only the file's `blocks` logical blocks are looked at.
    fn block_map(
        &self,
        i: &Inode,
        blocks: u64,
        runs: &mut Vec<Run>,
        budget: &mut u64,
    ) -> Result<(), InsideError> {
        let mut logical = 0u64;
        for k in 0..12 {
            if logical >= blocks {
                return Ok(());
            }
            push_block(runs, logical, u64::from(le32(&i.block, k * 4)));
            logical += 1;
        }
        for level in 1..=3u32 {
            if logical >= blocks {
                return Ok(());
            }
            let ptr = u64::from(le32(&i.block, (11 + level as usize) * 4));
            self.indirect(i, ptr, level, &mut logical, blocks, runs, budget)?;
        }
        Ok(())
    }

    /// The blocks under indirect block `ptr` of `level` (1: pointers to data).
    #[allow(clippy::too_many_arguments)]
    fn indirect(
        &self,
        i: &Inode,
        ptr: u64,
        level: u32,
        logical: &mut u64,
        blocks: u64,
        runs: &mut Vec<Run>,
        budget: &mut u64,
    ) -> Result<(), InsideError> {
        let per = self.sb.block_size / 4;
        let span = per.pow(level);
        if ptr == 0 {
            *logical += span;
            return Ok(());
        }
        *budget = budget.checked_sub(1).ok_or_else(|| {
            self.corrupt(format!(
                "inode {}: more indirect blocks than the file has blocks",
                i.number
            ))
        })?;
        let b = self.block(ptr)?;
        for k in 0..per as usize {
            if *logical >= blocks {
                return Ok(());
            }
            let p = u64::from(le32(&b, k * 4));
            if level == 1 {
                if p != 0 {
                    *budget = budget.checked_sub(1).ok_or_else(|| {
                        self.corrupt(format!(
                            "inode {}: more data blocks than the file has blocks",
                            i.number
                        ))
                    })?;
                }
                push_block(runs, *logical, p);
                *logical += 1;
            } else {
                self.indirect(i, p, level - 1, logical, blocks, runs, budget)?;
            }
        }
        Ok(())
    }
}

/// Adds data block `p` (0: a hole) at `logical` to `runs`, extending the last
/// run when contiguous.
fn push_block(runs: &mut Vec<Run>, logical: u64, p: u64) {
    if p == 0 {
        return;
    }
    if let Some(r) = runs.last_mut()
        && r.logical + r.len == logical
        && r.physical + r.len == p
    {
        r.len += 1;
        return;
    }
    runs.push(Run {
        logical,
        physical: p,
        len: 1,
        zero: false,
    });
}
