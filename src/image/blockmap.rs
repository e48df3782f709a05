//! Which byte ranges of a disk image matter.
//!
//! A [`BlockMap`] lists the 4 KiB blocks a copy of the image needs: the partition table(s), the
//! clusters a FAT filesystem uses (read from its FAT by [`bootfs::used_ranges`]), the blocks an
//! ext4 filesystem uses (read from its block bitmaps through libext2fs) and anything else outside
//! those filesystems that is not all zero. Free space inside the filesystems is left out, so a
//! flash writes only what the filesystems need. Saving and loading a map as bmaptool's `.bmap`
//! file is [`bmap`](super::bmap)'s job; a map only carries the per-range checksums one had.

use std::fmt::Debug;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::image::Format;
use crate::image::bootfs;
use crate::image::cow::{CowCursor, CowImage};
use crate::image::ext4::{Ext4Error, Ext4Fs};
use crate::image::partition::{Content, Partition, PartitionError, PartitionTable, TableKind};
use crate::io::{AtPath, PathError, hex, read_full};

/// The block size of maps made here (bmaptool's default, and the usual filesystem block size).
pub const BLOCK_SIZE: u64 = 4096;
pub(super) const SECTOR: u64 = 512;
/// Protective MBR, GPT header and a 128-entry array: what a GPT needs at each end of the disk.
const GPT_PRIMARY_BYTES: u64 = 34 * SECTOR;
const GPT_BACKUP_BYTES: u64 = 33 * SECTOR;
/// Bytes read at a time when scanning or hashing an image.
pub(super) const SCAN_BUF: usize = 4 << 20;

/// Errors making, writing or reading a block map.
#[derive(Debug, thiserror::Error)]
pub enum BlockMapError {
    /// I/O on a named file failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The image's partition table is broken (a missing table is fine: the image is scanned).
    #[error(transparent)]
    Partition(#[from] PartitionError),
    /// An ext4 filesystem opened but its block bitmaps could not be read.
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
    /// Block maps are made from raw images, which can be read at any offset.
    #[error(
        "{}: is {} compressed; a block map needs the raw image (decompress it first)",
        path.display(),
        format
    )]
    Compressed {
        /// The image.
        path: PathBuf,
        /// The compression found.
        format: &'static str,
    },
    /// A `.bmap` file is malformed or unsupported.
    #[error("{source_name}: not a usable .bmap file: {reason}")]
    Parse {
        /// The `.bmap` file.
        source_name: String,
        /// What is wrong, naming the element.
        reason: String,
    },
    /// A `.bmap` file's own checksum does not match its content.
    #[error(
        "{source_name}: {element} is {expected} but the file's checksum is {actual} (the .bmap file is corrupt or was edited)"
    )]
    FileChecksum {
        /// The `.bmap` file.
        source_name: String,
        /// `BmapFileChecksum` or `BmapFileSHA1`.
        element: &'static str,
        /// The value stored in the file.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
}

/// The hash function of a `.bmap` file's range checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    /// SHA-1 (bmap format 1.3, or `ChecksumType` sha1).
    Sha1,
    /// SHA-256 (what bmaptool writes today, and what [`bmap::write`](super::bmap::write) writes).
    Sha256,
}

impl ChecksumKind {
    /// The length of a digest in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            ChecksumKind::Sha1 => 40,
            ChecksumKind::Sha256 => 64,
        }
    }

    /// A fresh hasher of this kind.
    pub fn hasher(self) -> RangeHasher {
        match self {
            ChecksumKind::Sha1 => RangeHasher::Sha1(sha1::Sha1::default()),
            ChecksumKind::Sha256 => RangeHasher::Sha256(sha2::Sha256::new()),
        }
    }
}

/// An incremental hash of one range, of a [`ChecksumKind`].
#[derive(Clone)]
pub enum RangeHasher {
    /// SHA-1.
    Sha1(sha1::Sha1),
    /// SHA-256.
    Sha256(sha2::Sha256),
}

impl RangeHasher {
    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            RangeHasher::Sha1(h) => sha1::Digest::update(h, data),
            RangeHasher::Sha256(h) => h.update(data),
        }
    }

    /// The lowercase hex digest.
    pub fn hex(self) -> String {
        match self {
            RangeHasher::Sha1(h) => hex(&sha1::Digest::finalize(h)),
            RangeHasher::Sha256(h) => hex(&h.finalize()),
        }
    }
}

/// The per-range checksums a `.bmap` file carried, one per entry of [`BlockMap::ranges`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeChecksums {
    /// The hash function.
    pub kind: ChecksumKind,
    /// Lowercase hex digests, in the order of the ranges; `None` for a range without one
    /// (which is then not checked, while every other range still is).
    pub hex: Vec<Option<String>>,
}

impl RangeChecksums {
    /// How many ranges have no checksum.
    pub fn missing(&self) -> usize {
        self.hex.iter().filter(|h| h.is_none()).count()
    }
}

/// The byte ranges of an image that a copy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    /// The image's length in bytes.
    pub image_size: u64,
    /// The block size the ranges are aligned to.
    pub block_size: u64,
    /// Byte ranges, sorted and non-overlapping, block-aligned except that the last one is
    /// clamped to `image_size`. Maps made by [`BlockMap::of_image`] are also merged.
    pub ranges: Vec<Range<u64>>,
    /// Checksums per range when read from a `.bmap` file that has them (none from `of_image`).
    pub checksums: Option<RangeChecksums>,
}

impl BlockMap {
    /// The map of the raw image at `path`: partition table(s) + FAT used clusters (reserved
    /// sectors, FATs and root directory count as used) + ext4 used blocks (from its block
    /// bitmaps; metadata, journal and inode tables count as used) + everything outside those
    /// filesystems that is not all zero. A filesystem whose metadata cannot be read is treated
    /// like space outside the filesystems (its non-zero blocks are kept), which is never wrong,
    /// only slower.
    pub fn of_image(path: &Path) -> Result<BlockMap, BlockMapError> {
        let format = Format::of_file(path)?;
        if format != Format::Raw {
            return Err(BlockMapError::Compressed {
                path: path.to_owned(),
                format: format.name(),
            });
        }
        let mut file = File::open(path).at(path)?;
        let image_size = file.metadata().at(path)?.len();
        Self::of_layers(&mut file, path, image_size, &|p| {
            ext4_allocation(path, p.start, p.len)
        })
    }

    /// The map of an image readable through `image` (named `name` in errors), `image_size`
    /// bytes long, as [`BlockMap::of_image`] makes it; `ext4` gives an ext4 partition's
    /// allocation (libext2fs reads a file, which may be another image holding the same
    /// partition bytes).
    pub fn of_layers<I: Mappable>(
        image: &mut I,
        name: &Path,
        image_size: u64,
        ext4: &dyn Fn(&Partition) -> Result<Option<FsAllocation>, BlockMapError>,
    ) -> Result<BlockMap, BlockMapError> {
        let table = match PartitionTable::read_from(image, name) {
            Ok(t) => Some(t),
            Err(PartitionError::NoTable { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let mut used: Vec<Range<u64>> = Vec::new();
        // Byte ranges whose allocation is known from a filesystem's own maps.
        let mut known: Vec<Range<u64>> = Vec::new();
        if let Some(table) = &table {
            used.push(0..SECTOR);
            if table.kind == TableKind::Gpt {
                // Unused entries are zero but covered by the entry array's CRC.
                used.push(0..GPT_PRIMARY_BYTES);
                used.push(image_size.saturating_sub(GPT_BACKUP_BYTES)..image_size);
            }
            for p in &table.partitions {
                let allocation = match &p.content {
                    // used_ranges gives image offsets; an allocation is from the partition.
                    Content::Fat { .. } => bootfs::used_ranges(image, p.start, p.len)
                        .at(name)?
                        .map(|(used, len)| FsAllocation {
                            used: used
                                .into_iter()
                                .map(|r| r.start - p.start..r.end - p.start)
                                .collect(),
                            len,
                        }),
                    Content::Ext4 { .. } => ext4(p)?,
                    Content::Unknown => None,
                };
                if let Some(a) = allocation {
                    used.extend(
                        a.used
                            .into_iter()
                            .map(|r| p.start + r.start..p.start + r.end),
                    );
                    known.push(p.start..p.start + a.len);
                }
            }
        }
        for gap in complement(normalize(known, 1, image_size), image_size) {
            used.extend(nonzero_blocks(image, gap).at(name)?);
        }
        Ok(BlockMap {
            image_size,
            block_size: BLOCK_SIZE,
            ranges: normalize(used, BLOCK_SIZE, image_size),
            checksums: None,
        })
    }

    /// A map of a whole image (every block mapped).
    pub fn full(image_size: u64) -> BlockMap {
        BlockMap {
            image_size,
            block_size: BLOCK_SIZE,
            ranges: (image_size > 0)
                .then_some(0..image_size)
                .into_iter()
                .collect(),
            checksums: None,
        }
    }

    /// The number of bytes the ranges cover.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// The number of blocks in the image (the last one may be partial).
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    /// The number of blocks the ranges touch.
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| r.end.div_ceil(self.block_size) - r.start / self.block_size)
            .sum()
    }
}

/// What a filesystem uses: byte ranges relative to its partition's start, and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsAllocation {
    /// The used byte ranges, from the partition's start.
    pub used: Vec<Range<u64>>,
    /// The filesystem's length in bytes (the rest of the partition is outside it).
    pub len: u64,
}

/// The allocation of the ext4 filesystem at `start` (`len` bytes) of the image file `path`;
/// `None` when libext2fs cannot open it (its bytes then count as outside any filesystem).
pub fn ext4_allocation(
    path: &Path,
    start: u64,
    len: u64,
) -> Result<Option<FsAllocation>, BlockMapError> {
    let Ok(fs) = Ext4Fs::open(path, start, len, false) else {
        return Ok(None);
    };
    Ok(Some(FsAllocation {
        used: fs.used_byte_ranges()?,
        len: fs.size_bytes(),
    }))
}

/// An image a block map can be made of: readable (the partition table reader also wants
/// `Write`, which it never uses) and able to say where its data is.
pub trait Mappable: Read + Write + Seek + Debug {
    /// The next data region at or after `pos`: (start of data, start of the next hole), `None`
    /// past the last data. Where the image cannot tell, everything is data.
    fn next_data(&self, pos: u64) -> io::Result<Option<(u64, u64)>> {
        Ok(Some((pos, u64::MAX)))
    }
}

impl Mappable for File {
    fn next_data(&self, pos: u64) -> io::Result<Option<(u64, u64)>> {
        next_data(self, pos)
    }
}

impl Mappable for CowImage {}

impl Mappable for CowCursor<'_> {}

/// Sort, align outward to `align`, clamp to `size` and merge overlapping or touching ranges.
fn normalize(mut ranges: Vec<Range<u64>>, align: u64, size: u64) -> Vec<Range<u64>> {
    for r in &mut ranges {
        r.start = (r.start / align * align).min(size);
        r.end = r.end.div_ceil(align).saturating_mul(align).min(size);
    }
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The parts of `0..size` not covered by the sorted, merged `ranges`.
fn complement(ranges: Vec<Range<u64>>, size: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut pos = 0;
    for r in ranges {
        if r.start > pos {
            out.push(pos..r.start);
        }
        pos = pos.max(r.end);
    }
    if pos < size {
        out.push(pos..size);
    }
    out
}

/// The 4 KiB blocks (aligned to the file's start) overlapping `range` that hold a non-zero
/// byte. Holes of a sparse file are skipped without reading them.
fn nonzero_blocks(file: &mut impl Mappable, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; SCAN_BUF];
    let mut pos = range.start / BLOCK_SIZE * BLOCK_SIZE;
    while pos < range.end {
        let Some((data, hole)) = file.next_data(pos)? else {
            break;
        };
        pos = data.max(pos) / BLOCK_SIZE * BLOCK_SIZE;
        let stop = hole.min(range.end);
        while pos < stop {
            let n = usize::try_from(stop - pos)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            file.seek(SeekFrom::Start(pos))?;
            let got = read_full(file, &mut buf[..n])?;
            if got == 0 {
                return Ok(out);
            }
            for (i, block) in buf[..got].chunks(BLOCK_SIZE as usize).enumerate() {
                if !is_zero(block) {
                    let at = pos + i as u64 * BLOCK_SIZE;
                    out.push(at..at + block.len() as u64);
                }
            }
            pos += got as u64;
        }
    }
    Ok(out)
}

/// The next data region at or after `pos`: (start of data, start of the next hole). Where the
/// filesystem cannot tell, everything is data.
pub(super) fn next_data(file: &File, pos: u64) -> io::Result<Option<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let Ok(off) = libc::off_t::try_from(pos) else {
        return Ok(None);
    };
    // SAFETY: lseek on a file descriptor we own; it only moves the file offset.
    let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
    if data < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some((pos, u64::MAX))),
            _ => Err(e),
        };
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
    if hole < 0 {
        return Ok(Some((data as u64, u64::MAX)));
    }
    Ok(Some((data as u64, hole as u64)))
}

/// True when every byte of `block` is zero.
pub fn is_zero(block: &[u8]) -> bool {
    // 16 bytes at a time: this is the hot loop of scanning free space.
    let mut words = block.chunks_exact(16);
    words
        .by_ref()
        .all(|w| <[u8; 16]>::try_from(w).is_ok_and(|w| u128::from_ne_bytes(w) == 0))
        && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_aligned_clamped_and_merged() {
        let r = normalize(
            vec![8192..8193, 0..10, 4096..5000, 20000..30000],
            4096,
            25000,
        );
        assert_eq!(r, vec![0..12288, 16384..25000]);
        assert_eq!(
            complement(vec![10..20, 30..40], 50),
            vec![0..10, 20..30, 40..50]
        );
    }

    #[test]
    fn is_zero_sees_every_byte() {
        let mut b = vec![0u8; 4099];
        assert!(is_zero(&b));
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[3] = 1;
        assert!(!is_zero(&b));
    }
}
