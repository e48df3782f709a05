//! Which byte ranges of a disk image matter, and bmaptool's `.bmap` format for saying so.
//!
//! A [`BlockMap`] lists the 4 KiB blocks a copy of the image needs: the partition table(s), the
//! clusters a FAT filesystem uses (read from its FAT), the blocks an ext4 filesystem uses (read
//! from its block bitmaps through libext2fs) and anything else outside those filesystems that is
//! not all zero. Free space inside the filesystems is left out, so a flash writes only what the
//! filesystems need.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::image::Format;
use crate::image::ext4::Ext4Fs;
use crate::image::partition::{Content, PartitionError, PartitionTable, TableKind};
use crate::io::{AtPath, PathError, hex, read_full};

/// The block size of maps made here (bmaptool's default, and the usual filesystem block size).
pub const BLOCK_SIZE: u64 = 4096;
const SECTOR: u64 = 512;
/// Protective MBR, GPT header and a 128-entry array: what a GPT needs at each end of the disk.
const GPT_PRIMARY_BYTES: u64 = 34 * SECTOR;
const GPT_BACKUP_BYTES: u64 = 33 * SECTOR;
const SCAN_BUF: usize = 4 << 20;

/// Errors making, writing or reading a block map.
#[derive(Debug, thiserror::Error)]
pub enum BlockMapError {
    /// I/O on a named file failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The image's partition table is broken (a missing table is fine: the image is scanned).
    #[error(transparent)]
    Partition(#[from] PartitionError),
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
    /// SHA-256 (what bmaptool writes today, and what [`BlockMap::write_bmap`] writes).
    Sha256,
}

impl ChecksumKind {
    fn hex_len(self) -> usize {
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
    /// Lowercase hex digests, in the order of the ranges.
    pub hex: Vec<String>,
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
        let table = match PartitionTable::read(path) {
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
                match &p.content {
                    Content::Fat { .. } => {
                        if let Some((ranges, fs_len)) =
                            fat_used(&mut file, p.start, p.len).at(path)?
                        {
                            used.extend(ranges);
                            known.push(p.start..p.start + fs_len);
                        }
                    }
                    Content::Ext4 { .. } => {
                        if let Ok(fs) = Ext4Fs::open(path, p.start, p.len, false) {
                            let ranges = fs.used_byte_ranges().map_err(|e| {
                                BlockMapError::Io(PathError {
                                    path: path.to_owned(),
                                    source: io::Error::other(e.to_string()),
                                })
                            })?;
                            used.extend(
                                ranges
                                    .into_iter()
                                    .map(|r| p.start + r.start..p.start + r.end),
                            );
                            known.push(p.start..p.start + fs.size_bytes());
                        }
                    }
                    Content::Unknown => {}
                }
            }
        }
        for gap in complement(normalize(known, 1, image_size), image_size) {
            used.extend(nonzero_blocks(&mut file, gap).at(path)?);
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
            ranges: if image_size == 0 {
                Vec::new()
            } else {
                vec![0..image_size]
            },
            checksums: None,
        }
    }

    /// The number of bytes the ranges cover.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    /// Write the map in bmaptool's format 2.0 (XML) with a sha256 per range, read from `image`,
    /// and the file's own checksum, so `bmaptool copy --bmap` accepts and verifies it.
    pub fn write_bmap(&self, image: &Path, out: &mut dyn Write) -> Result<(), BlockMapError> {
        let mut file = File::open(image).at(image)?;
        let mut buf = vec![0u8; SCAN_BUF];
        let mut text = String::new();
        let mapped_blocks: u64 = self
            .ranges
            .iter()
            .map(|r| r.end.div_ceil(self.block_size) - r.start / self.block_size)
            .sum();
        let percent = if self.image_size == 0 {
            0.0
        } else {
            self.mapped_bytes() as f64 * 100.0 / self.image_size as f64
        };
        let _ = write!(
            text,
            "<?xml version=\"1.0\" ?>\n\
             <!-- Block map of a disk image, written by pi-image: the blocks a copy needs (partition\n\
             \x20    tables, used filesystem blocks, other non-zero data), as bmaptool reads it. -->\n\
             <bmap version=\"2.0\">\n\
             \x20   <!-- Image size in bytes: {:.1} MiB -->\n\
             \x20   <ImageSize> {} </ImageSize>\n\
             \x20   <!-- Size of a block in bytes -->\n\
             \x20   <BlockSize> {} </BlockSize>\n\
             \x20   <!-- Count of blocks in the image file -->\n\
             \x20   <BlocksCount> {} </BlocksCount>\n\
             \x20   <!-- Count of mapped blocks: {:.1} MiB or {:.1}% -->\n\
             \x20   <MappedBlocksCount> {} </MappedBlocksCount>\n\
             \x20   <!-- Type of checksum used in this file -->\n\
             \x20   <ChecksumType> sha256 </ChecksumType>\n\
             \x20   <!-- The sha256 of this file, computed with this value set to 64 zeros -->\n\
             \x20   <BmapFileChecksum> {} </BmapFileChecksum>\n\
             \x20   <!-- Mapped block ranges, each with the sha256 of its bytes -->\n\
             \x20   <BlockMap>\n",
            self.image_size as f64 / 1048576.0,
            self.image_size,
            self.block_size,
            self.blocks_count(),
            self.mapped_bytes() as f64 / 1048576.0,
            percent,
            mapped_blocks,
            "0".repeat(64),
        );
        for r in &self.ranges {
            let mut h = ChecksumKind::Sha256.hasher();
            file.seek(SeekFrom::Start(r.start)).at(image)?;
            let mut left = r.end - r.start;
            while left > 0 {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                file.read_exact(&mut buf[..n]).at(image)?;
                h.update(&buf[..n]);
                left -= n as u64;
            }
            let first = r.start / self.block_size;
            let last = r.end.div_ceil(self.block_size) - 1;
            let blocks = if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            };
            let _ = writeln!(
                text,
                "        <Range chksum=\"{}\"> {blocks} </Range>",
                h.hex()
            );
        }
        text.push_str("    </BlockMap>\n</bmap>\n");
        let mut h = ChecksumKind::Sha256.hasher();
        h.update(text.as_bytes());
        let text = text.replacen(&"0".repeat(64), &h.hex(), 1);
        out.write_all(text.as_bytes()).map_err(|source| {
            BlockMapError::Io(PathError {
                path: PathBuf::from("<bmap output>"),
                source,
            })
        })
    }

    /// Parse a `.bmap` file (formats 1.0 to 2.x as bmaptool writes them). The file's own
    /// checksum is checked when it has one; range checksums (sha1 or sha256) are kept in
    /// [`BlockMap::checksums`] for verification. `source_name` names the file in errors.
    pub fn read_bmap(text: &str, source_name: &str) -> Result<BlockMap, BlockMapError> {
        let bad = |reason: String| BlockMapError::Parse {
            source_name: source_name.to_owned(),
            reason,
        };
        let doc = strip_comments(text);
        let root = find_tag(&doc, "bmap", 0).ok_or_else(|| bad("no <bmap> element".into()))?;
        let version = attr(root.attrs, "version")
            .ok_or_else(|| bad("<bmap> has no version attribute".into()))?;
        let (major, minor) = version
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .ok_or_else(|| bad(format!("version '{version}' is not MAJOR.MINOR")))?;
        if !(1..=2).contains(&major) {
            return Err(bad(format!(
                "format version {version} is not supported (expected 1.x or 2.x)"
            )));
        }
        let number = |name: &str| -> Result<u64, BlockMapError> {
            let t = find_tag(&doc, name, 0)
                .ok_or_else(|| bad(format!("no <{name}> element")))?
                .text
                .trim();
            t.parse()
                .map_err(|_| bad(format!("<{name}> is '{t}', expected a number")))
        };
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        if block_size == 0 || block_size % SECTOR != 0 {
            return Err(bad(format!(
                "<BlockSize> is {block_size}, expected a multiple of 512"
            )));
        }
        let blocks_count = image_size.div_ceil(block_size);
        if let Some(t) = find_tag(&doc, "BlocksCount", 0)
            && t.text.trim().parse::<u64>().ok() != Some(blocks_count)
        {
            return Err(bad(format!(
                "<BlocksCount> is '{}', expected {blocks_count} (<ImageSize> / <BlockSize>)",
                t.text.trim()
            )));
        }
        // Which checksums the version has: none before 1.3, sha1 in 1.3, ChecksumType after.
        let (kind, range_attr, file_elem) = if major == 1 && minor < 3 {
            (None, "", "")
        } else if major == 1 && minor == 3 {
            (Some(ChecksumKind::Sha1), "sha1", "BmapFileSHA1")
        } else {
            let t = find_tag(&doc, "ChecksumType", 0)
                .ok_or_else(|| bad("no <ChecksumType> element".into()))?
                .text
                .trim()
                .to_owned();
            let kind = match t.as_str() {
                "sha1" => ChecksumKind::Sha1,
                "sha256" => ChecksumKind::Sha256,
                _ => {
                    return Err(bad(format!(
                        "<ChecksumType> is '{t}', expected sha1 or sha256"
                    )));
                }
            };
            (Some(kind), "chksum", "BmapFileChecksum")
        };
        if let Some(kind) = kind
            && let Some(t) = find_tag(&doc, file_elem, 0)
        {
            let expected = t.text.trim().to_owned();
            if expected.len() != kind.hex_len() {
                return Err(bad(format!(
                    "<{file_elem}> is '{expected}', expected {} hex digits",
                    kind.hex_len()
                )));
            }
            // bmaptool hashes the file with this value replaced by zeros.
            let zeroed = text.replacen(&expected, &"0".repeat(expected.len()), 1);
            let mut h = kind.hasher();
            h.update(zeroed.as_bytes());
            let actual = h.hex();
            if actual != expected.to_ascii_lowercase() {
                return Err(BlockMapError::FileChecksum {
                    source_name: source_name.to_owned(),
                    element: if file_elem == "BmapFileSHA1" {
                        "BmapFileSHA1"
                    } else {
                        "BmapFileChecksum"
                    },
                    expected,
                    actual,
                });
            }
        }
        let list =
            find_tag(&doc, "BlockMap", 0).ok_or_else(|| bad("no <BlockMap> element".into()))?;
        let mut ranges = Vec::new();
        let mut sums = Vec::new();
        let mut at = 0;
        while let Some(r) = find_tag(list.text, "Range", at) {
            at = r.end;
            let t = r.text.trim();
            let parse = |s: &str| {
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| bad(format!("<Range> '{t}' is not FIRST-LAST or a block number")))
            };
            let (first, last) = match t.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => (parse(t)?, parse(t)?),
            };
            if first > last || last >= blocks_count {
                return Err(bad(format!(
                    "<Range> {t} is outside the image's {blocks_count} blocks"
                )));
            }
            let range = first * block_size..((last + 1) * block_size).min(image_size);
            if ranges
                .last()
                .is_some_and(|p: &Range<u64>| p.end > range.start)
            {
                return Err(bad(format!(
                    "<Range> {t} overlaps or precedes the range before it"
                )));
            }
            ranges.push(range);
            if let Some(kind) = kind {
                sums.push(attr(r.attrs, range_attr).map(|s| s.to_ascii_lowercase()));
                if let Some(Some(s)) = sums.last()
                    && (s.len() != kind.hex_len() || !s.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return Err(bad(format!(
                        "<Range> {t}: {range_attr}=\"{s}\" is not {} hex digits",
                        kind.hex_len()
                    )));
                }
            }
        }
        let map = BlockMap {
            image_size,
            block_size,
            checksums: match kind {
                Some(kind) if !sums.is_empty() && sums.iter().all(Option::is_some) => {
                    Some(RangeChecksums {
                        kind,
                        hex: sums.into_iter().flatten().collect(),
                    })
                }
                _ => None,
            },
            ranges,
        };
        if let Some(t) = find_tag(&doc, "MappedBlocksCount", 0) {
            let mapped: u64 = map
                .ranges
                .iter()
                .map(|r| r.end.div_ceil(block_size) - r.start / block_size)
                .sum();
            if t.text.trim().parse::<u64>().ok() != Some(mapped) {
                return Err(bad(format!(
                    "<MappedBlocksCount> is '{}' but the ranges hold {mapped} blocks",
                    t.text.trim()
                )));
            }
        }
        Ok(map)
    }
}

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
fn nonzero_blocks(file: &mut File, range: Range<u64>) -> io::Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; SCAN_BUF];
    let mut pos = range.start / BLOCK_SIZE * BLOCK_SIZE;
    while pos < range.end {
        let Some((data, hole)) = next_data(file, pos)? else {
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
fn next_data(file: &File, pos: u64) -> io::Result<Option<(u64, u64)>> {
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

/// The clusters a FAT12/16/32 filesystem at `start` uses, as absolute byte ranges (reserved
/// sectors, FATs and the FAT12/16 root directory included), and the filesystem's length.
/// `None` when the boot sector does not describe a consistent FAT filesystem.
fn fat_used(file: &mut File, start: u64, len: u64) -> io::Result<Option<(Vec<Range<u64>>, u64)>> {
    let mut bs = [0u8; 512];
    file.seek(SeekFrom::Start(start))?;
    if read_full(file, &mut bs)? < bs.len() {
        return Ok(None);
    }
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([bs[o], bs[o + 1]]));
    let u32_at = |o: usize| u64::from(u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]));
    let bps = u16_at(11);
    let spc = u64::from(bs[13]);
    let reserved = u16_at(14);
    let fats = u64::from(bs[16]);
    let root_entries = u16_at(17);
    let total = if u16_at(19) != 0 {
        u16_at(19)
    } else {
        u32_at(32)
    };
    let fat_sectors = if u16_at(22) != 0 {
        u16_at(22)
    } else {
        u32_at(36)
    };
    if !matches!(bps, 512 | 1024 | 2048 | 4096)
        || !spc.is_power_of_two()
        || reserved == 0
        || fats == 0
        || fat_sectors == 0
    {
        return Ok(None);
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let first_data = reserved + fats * fat_sectors + root_sectors;
    if total <= first_data || total * bps > len {
        return Ok(None);
    }
    let clusters = (total - first_data) / spc;
    let entry_bits: u64 = if clusters < 4085 {
        12
    } else if clusters < 65525 {
        16
    } else {
        32
    };
    if (clusters + 2) * entry_bits > fat_sectors * bps * 8 {
        return Ok(None);
    }
    let cluster_bytes = spc * bps;
    let data_start = start + first_data * bps;
    let mut used = vec![start..data_start];
    // Stream the first FAT, entry by entry, turning runs of non-free clusters into ranges.
    let fat_bytes = ((clusters + 2) * entry_bits).div_ceil(8);
    file.seek(SeekFrom::Start(start + reserved * bps))?;
    let mut reader = io::BufReader::with_capacity(1 << 20, file.take(fat_bytes));
    let mut run: Option<u64> = None;
    let mut pair = [0u8; 3];
    let mut entry = [0u8; 4];
    let mut cluster = 0u64;
    while cluster < clusters + 2 {
        // FAT12 packs two entries in three bytes.
        let values: [Option<u64>; 2] = match entry_bits {
            12 => {
                let n = if cluster + 1 < clusters + 2 { 3 } else { 2 };
                reader.read_exact(&mut pair[..n])?;
                let a = u64::from(pair[0]) | (u64::from(pair[1] & 0x0f) << 8);
                let b = (u64::from(pair[1]) >> 4) | (u64::from(pair[2]) << 4);
                [Some(a), (n == 3).then_some(b)]
            }
            16 => {
                reader.read_exact(&mut entry[..2])?;
                [
                    Some(u64::from(u16::from_le_bytes([entry[0], entry[1]]))),
                    None,
                ]
            }
            _ => {
                reader.read_exact(&mut entry)?;
                [
                    Some(u64::from(u32::from_le_bytes(entry) & 0x0fff_ffff)),
                    None,
                ]
            }
        };
        for v in values.into_iter().flatten() {
            if cluster >= 2 {
                let at = data_start + (cluster - 2) * cluster_bytes;
                match (v != 0, run) {
                    (true, None) => run = Some(at),
                    (false, Some(s)) => {
                        used.push(s..at);
                        run = None;
                    }
                    _ => {}
                }
            }
            cluster += 1;
        }
    }
    if let Some(s) = run {
        used.push(s..data_start + clusters * cluster_bytes);
    }
    Ok(Some((used, total * bps)))
}

/// Everything between `<!--` and `-->` removed (bmaptool's comments mention element names).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("<!--") {
        out.push_str(&rest[..i]);
        rest = match rest[i..].find("-->") {
            Some(j) => &rest[i + j + 3..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// One element found by [`find_tag`].
struct Tag<'a> {
    /// The text between `<name` and `>`.
    attrs: &'a str,
    /// The content between the start and end tags.
    text: &'a str,
    /// Offset just past the end tag.
    end: usize,
}

/// The first `<name ...>...</name>` element at or after byte `from` of `doc`.
fn find_tag<'a>(doc: &'a str, name: &str, from: usize) -> Option<Tag<'a>> {
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let mut at = from;
    loop {
        let i = at + doc.get(at..)?.find(&open)?;
        let after = i + open.len();
        let next = doc[after..].chars().next()?;
        if next == '>' || next.is_whitespace() {
            let gt = after + doc[after..].find('>')?;
            let end = gt + 1 + doc[gt + 1..].find(&close)?;
            return Some(Tag {
                attrs: &doc[after..gt],
                text: &doc[gt + 1..end],
                end: end + close.len(),
            });
        }
        at = after;
    }
}

/// The value of attribute `name="..."` (or single-quoted) in a start tag's attribute text.
fn attr<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = attrs;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim();
        let value = rest[eq + 1..].trim_start();
        let quote = value.chars().next()?;
        if quote != '"' && quote != '\'' {
            return None;
        }
        let close = value[1..].find(quote)?;
        if key == name {
            return Some(&value[1..1 + close]);
        }
        rest = &value[close + 2..];
    }
    None
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
    fn attributes_and_elements_are_found() {
        assert_eq!(attr(" a=\"1\" chksum='ab'", "chksum"), Some("ab"));
        let doc = "<x><Range sha1=\"aa\"> 1-2 </Range><RangeX>no</RangeX></x>";
        let t = find_tag(doc, "Range", 0).unwrap();
        assert_eq!(t.text.trim(), "1-2");
        assert!(find_tag(doc, "Range", t.end).is_none());
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
