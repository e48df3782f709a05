//! A disk image as a base file plus the blocks written over it (copy on write), so that a node's
//! image can be edited, read and measured without copying the base: only the blocks an edit
//! touches are stored, in an unlinked temp file.
//!
//! A [`CowImage`] can sit on another, frozen one ([`CowImage::over`]): a node's boot edits over
//! the root filesystem edits it shares with other nodes, over the base. [`CowImage::changed_blocks`]
//! says which blocks differ from the base, which is all a release needs to know to reuse the
//! rest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::io::tempfiles;

/// The unit of copying and of change tracking: 4 KiB, the block size of the filesystems inside.
pub const COW_BLOCK: u64 = 4096;

/// A disk image being edited: bytes that can be read, written, and resized (the GPT conversion
/// grows an image by its backup table).
pub trait ImageFile: Read + Write + Seek + std::fmt::Debug {
    /// The image's length in bytes.
    fn image_len(&mut self) -> io::Result<u64>;
    /// Make the image `len` bytes long; new bytes read as zero.
    fn set_image_len(&mut self, len: u64) -> io::Result<()>;
}

impl ImageFile for File {
    fn image_len(&mut self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_image_len(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

/// The base image every layer ends in: read only, zeros past its end.
#[derive(Debug)]
struct Base {
    file: File,
    len: u64,
}

impl Base {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let inside = usize::try_from(self.len.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.file.read_exact_at(&mut buf[..inside], offset)?;
        buf[inside..].fill(0);
        Ok(())
    }
}

/// An image: the blocks written to it, over a lower layer (another, frozen image, or the base).
#[derive(Debug)]
pub struct CowImage {
    base: Arc<Base>,
    lower: Option<Arc<CowImage>>,
    len: u64,
    /// Block number → where the block's bytes are in `store`.
    blocks: BTreeMap<u64, u64>,
    /// The written blocks, one after another; unlinked, so it goes away with the value.
    store: File,
    pos: u64,
}

impl CowImage {
    /// An image equal to the file at `base` (which is only ever read), its written blocks kept
    /// in a temp file created in `temp_dir`.
    pub fn new(base: &Path, temp_dir: &Path) -> io::Result<CowImage> {
        let file = File::open(base)?;
        let len = file.metadata()?.len();
        Ok(CowImage {
            base: Arc::new(Base { file, len }),
            lower: None,
            len,
            blocks: BTreeMap::new(),
            store: unlinked_temp(temp_dir)?,
            pos: 0,
        })
    }

    /// An image equal to `lower` (frozen: nothing writes to it any more), its own written blocks
    /// kept in a temp file created in `temp_dir`.
    pub fn over(lower: Arc<CowImage>, temp_dir: &Path) -> io::Result<CowImage> {
        Ok(CowImage {
            base: Arc::clone(&lower.base),
            len: lower.len,
            lower: Some(lower),
            blocks: BTreeMap::new(),
            store: unlinked_temp(temp_dir)?,
            pos: 0,
        })
    }

    /// The image's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty image.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The base's length in bytes.
    pub fn base_len(&self) -> u64 {
        self.base.len
    }

    /// Fill `buf` with the image's bytes from `offset`; reading past the end is an error.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "bytes {offset}..{} are past the image's end at {}",
                    offset + buf.len() as u64,
                    self.len
                ),
            ));
        }
        self.read_layers(buf, offset)
    }

    /// A read-only cursor on the image, with positioned reads: threads can each have one.
    pub fn cursor(&self) -> CowCursor<'_> {
        CowCursor {
            image: self,
            pos: 0,
        }
    }

    /// A reader of `len` bytes of the image from `offset`; reading past the image's end is an
    /// error.
    pub fn range(&self, offset: u64, len: u64) -> io::Take<CowCursor<'_>> {
        CowCursor {
            image: self,
            pos: offset,
        }
        .take(len)
    }

    /// Read through this layer, the lower ones and the base (zeros past the base's end). Runs
    /// of blocks this layer does not hold are read from below in one go.
    fn read_layers(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let block = at / COW_BLOCK;
            let left = buf.len() - done;
            let (n, stored) = match self.blocks.range(block..).next() {
                Some((&b, &stored)) if b == block => {
                    let within = at % COW_BLOCK;
                    let n = usize::try_from(COW_BLOCK - within).map_or(left, |n| n.min(left));
                    (n, Some(stored + within))
                }
                // Up to the next block this layer holds, or the end of the request.
                Some((&next, _)) => {
                    let n = usize::try_from(next * COW_BLOCK - at).map_or(left, |n| n.min(left));
                    (n, None)
                }
                None => (left, None),
            };
            let part = &mut buf[done..done + n];
            match (stored, &self.lower) {
                (Some(pos), _) => self.store.read_exact_at(part, pos)?,
                (None, Some(lower)) => lower.read_layers(part, at)?,
                (None, None) => self.base.read_at(part, at)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Write `data` at `offset`, copying each block it touches into this layer first.
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        let mut block_buf = vec![0u8; COW_BLOCK as usize];
        while done < data.len() {
            let at = offset + done as u64;
            let block = at / COW_BLOCK;
            let within = at % COW_BLOCK;
            let n = usize::try_from(COW_BLOCK - within)
                .unwrap_or(usize::MAX)
                .min(data.len() - done);
            let stored = match self.blocks.get(&block) {
                Some(&s) => s,
                None => {
                    // The block as it was, from the layers below, unless it is overwritten whole.
                    if n as u64 != COW_BLOCK {
                        match &self.lower {
                            Some(lower) => lower.read_layers(&mut block_buf, block * COW_BLOCK)?,
                            None => self.base.read_at(&mut block_buf, block * COW_BLOCK)?,
                        }
                    }
                    let s = self.blocks.len() as u64 * COW_BLOCK;
                    self.store.write_all_at(&block_buf, s)?;
                    self.blocks.insert(block, s);
                    s
                }
            };
            self.store
                .write_all_at(&data[done..done + n], stored + within)?;
            done += n;
        }
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    /// The blocks (numbers) written in this layer or the ones below, in order.
    fn written_blocks(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.blocks.keys().copied().collect();
        if let Some(lower) = &self.lower {
            all.extend(lower.written_blocks());
            all.sort_unstable();
            all.dedup();
        }
        all
    }

    /// The blocks (numbers) whose bytes differ from the base's, in order: written blocks whose
    /// content changed, and every block reaching past the base's end. Blocks never written are
    /// the base's, so only written ones are compared.
    pub fn changed_blocks(&self) -> io::Result<Vec<u64>> {
        let mut changed = Vec::new();
        let mut mine = vec![0u8; COW_BLOCK as usize];
        let mut base = vec![0u8; COW_BLOCK as usize];
        for block in self.written_blocks() {
            let start = block * COW_BLOCK;
            if start >= self.len {
                continue;
            }
            let end = (start + COW_BLOCK).min(self.len);
            if end > self.base.len {
                changed.push(block);
                continue;
            }
            let n = (end - start) as usize;
            self.read_layers(&mut mine[..n], start)?;
            self.base.read_at(&mut base[..n], start)?;
            if mine[..n] != base[..n] {
                changed.push(block);
            }
        }
        if self.len > self.base.len {
            changed.extend(self.base.len / COW_BLOCK..self.len.div_ceil(COW_BLOCK));
        }
        changed.sort_unstable();
        changed.dedup();
        Ok(changed)
    }
}

/// A read-only cursor on a [`CowImage`] (see [`CowImage::cursor`]); writing is an error.
#[derive(Debug)]
pub struct CowCursor<'a> {
    image: &'a CowImage,
    pos: u64,
}

impl Read for CowCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = usize::try_from(self.image.len.saturating_sub(self.pos))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if n < buf.len() && self.pos > self.image.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "byte {} is past the image's end at {}",
                    self.pos, self.image.len
                ),
            ));
        }
        self.image.read_layers(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for CowCursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(to, self.pos, self.image.len)?;
        Ok(self.pos)
    }
}

impl Write for CowCursor<'_> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a cursor on a copy-on-write image only reads",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The position `to` leads to from `pos` in an image of `len` bytes.
fn seek_to(to: SeekFrom, pos: u64, len: u64) -> io::Result<u64> {
    match to {
        SeekFrom::Start(p) => Some(p),
        SeekFrom::End(d) => len.checked_add_signed(d),
        SeekFrom::Current(d) => pos.checked_add_signed(d),
    }
    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the image's start"))
}

impl Read for CowImage {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = usize::try_from(self.len.saturating_sub(self.pos))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.read_layers(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for CowImage {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for CowImage {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(to, self.pos, self.len)?;
        Ok(self.pos)
    }
}

impl ImageFile for CowImage {
    fn image_len(&mut self) -> io::Result<u64> {
        Ok(self.len)
    }

    /// Growing only: the bytes past the old end read as zero (written blocks there are zeroed
    /// first, in case the image was written past the base and then shrunk, which nothing does).
    fn set_image_len(&mut self, len: u64) -> io::Result<()> {
        if len < self.len {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "a copy-on-write image only grows (from {} to {len} bytes asked)",
                    self.len
                ),
            ));
        }
        let old = self.len;
        self.len = len;
        // Bytes between the old end and the next block boundary may hold base bytes.
        let edge = old.div_ceil(COW_BLOCK) * COW_BLOCK;
        if old < edge.min(len) && old < self.base.len {
            let zeros = vec![0u8; (edge.min(len) - old) as usize];
            self.write_at(&zeros, old)?;
        }
        Ok(())
    }
}

/// A temp file created exclusively in `dir` ([`tempfiles`]) and unlinked at once: it lives as
/// long as the handle, also when the process is interrupted.
fn unlinked_temp(dir: &Path) -> io::Result<File> {
    let (path, file, _registered) = tempfiles::create_file_beside(&dir.join("pi-image-cow"))?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &Path, len: usize) -> (std::path::PathBuf, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.join("base.img");
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }

    #[test]
    fn writes_stay_in_the_layer_and_reads_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut expected) = base(dir.path(), 5 * COW_BLOCK as usize + 100);
        let mut img = CowImage::new(&path, dir.path()).unwrap();
        // Across a block boundary, and an unchanged write (same bytes as the base).
        img.seek(SeekFrom::Start(4090)).unwrap();
        img.write_all(b"0123456789").unwrap();
        expected[4090..4100].copy_from_slice(b"0123456789");
        let same = expected[3 * 4096..3 * 4096 + 10].to_vec();
        img.seek(SeekFrom::Start(3 * 4096)).unwrap();
        img.write_all(&same).unwrap();
        let mut all = Vec::new();
        img.seek(SeekFrom::Start(0)).unwrap();
        img.read_to_end(&mut all).unwrap();
        assert!(all == expected);
        assert_eq!(img.changed_blocks().unwrap(), vec![0, 1]);
        // The base file is untouched; only the temp file (already unlinked) holds the writes.
        assert_eq!(
            std::fs::read(&path).unwrap()[4090..4100],
            base(dir.path(), 5 * 4096 + 100).1[4090..4100]
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn layers_stack_and_growth_reads_zero() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut expected) = base(dir.path(), 3 * COW_BLOCK as usize + 10);
        let mut lower = CowImage::new(&path, dir.path()).unwrap();
        lower.seek(SeekFrom::Start(8192)).unwrap();
        lower.write_all(b"lower").unwrap();
        expected[8192..8197].copy_from_slice(b"lower");
        let lower = Arc::new(lower);
        let mut top = CowImage::over(Arc::clone(&lower), dir.path()).unwrap();
        top.seek(SeekFrom::Start(1)).unwrap();
        top.write_all(b"top").unwrap();
        expected[1..4].copy_from_slice(b"top");
        top.set_image_len(5 * COW_BLOCK).unwrap();
        expected.resize(5 * COW_BLOCK as usize, 0);
        top.seek(SeekFrom::End(-2)).unwrap();
        top.write_all(b"!!").unwrap();
        let n = expected.len();
        expected[n - 2..].copy_from_slice(b"!!");
        let mut all = vec![0u8; expected.len()];
        top.read_at(&mut all, 0).unwrap();
        assert!(all == expected);
        // Past the base's end counts as changed: blocks 3 (partly past it) and 4.
        assert_eq!(top.changed_blocks().unwrap(), vec![0, 2, 3, 4]);
        assert_eq!(lower.changed_blocks().unwrap(), vec![2]);
        assert!(top.read_at(&mut [0u8; 2], 5 * COW_BLOCK - 1).is_err());
        assert!(top.set_image_len(10).is_err());
    }
}
