//! The partition table of an image: read it (MBR via `mbrman`, GPT via `gpt`), find the boot
//! and root partitions by what they hold, set the MBR disk identifier, and convert an MBR table
//! to GPT at the same offsets.

use crate::image::cow::ImageFile;
use crate::io::{AtPath, PathError, read_full};
use crate::plan::ids::Guid;
use std::fmt::Debug;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const SECTOR: u64 = 512;
/// Byte offset of the 32-bit MBR disk identifier ("disk signature").
const MBR_DISK_ID_OFFSET: u64 = 440;

/// Errors reading or changing a partition table.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// I/O on the image failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The image has no partition table we can read.
    #[error("{path}: no valid partition table ({reason})")]
    NoTable {
        /// The image.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A partition reaches past the end of the image file.
    #[error(
        "{path}: image is truncated: partition {number} ends at byte {end} but the file has only {len} bytes"
    )]
    Truncated {
        /// The image.
        path: PathBuf,
        /// The partition number (1-based).
        number: u32,
        /// Where the partition ends.
        end: u64,
        /// The image file's length.
        len: u64,
    },
    /// A partition the build needs is not in the image.
    #[error("{path}: no {what} partition found (expected {expected})")]
    Missing {
        /// The image.
        path: PathBuf,
        /// Which partition ("boot", "root").
        what: &'static str,
        /// What we looked for.
        expected: &'static str,
    },
    /// The table is GPT where an MBR was required.
    #[error("{path}: {what} needs an MBR partition table, but the image uses GPT")]
    NotMbr {
        /// The image.
        path: PathBuf,
        /// The operation.
        what: &'static str,
    },
}

/// Which kind of partition table an image uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// A DOS/MBR table (what Ubuntu's Raspberry Pi images use).
    Mbr,
    /// A GUID partition table.
    Gpt,
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableKind::Mbr => "MBR (dos)",
            TableKind::Gpt => "GPT",
        })
    }
}

/// What a partition holds, judged from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A FAT12/16/32 filesystem, with its volume label.
    Fat {
        /// The volume label from the boot sector, trimmed.
        label: String,
    },
    /// An ext2/3/4 filesystem, with its volume label.
    Ext4 {
        /// The volume label from the superblock.
        label: String,
    },
    /// Anything else.
    Unknown,
}

/// One partition of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number, as Linux names it (`sda1` = 1).
    pub number: u32,
    /// First byte of the partition in the image.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The partition type: hex MBR type (`0c`) or the GPT type GUID.
    pub type_id: String,
    /// MBR boot flag.
    pub bootable: bool,
    /// What the partition holds.
    pub content: Content,
}

impl Partition {
    /// One past the last byte of the partition (checked not to overflow when it was read).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// The partition table of an image.
#[derive(Debug, Clone)]
pub struct PartitionTable {
    /// MBR or GPT.
    pub kind: TableKind,
    /// The disk identifier: `0x1234abcd` for MBR, the disk GUID for GPT.
    pub disk_id: String,
    /// The partitions in table order.
    pub partitions: Vec<Partition>,
}

impl PartitionTable {
    /// Read the table of the image at `path` and probe each partition's content.
    pub fn read(path: &Path) -> Result<PartitionTable, PartitionError> {
        Self::read_from(&mut File::open(path).at(path)?, path)
    }

    /// Read the table of the image open as `file`, whose errors name `path` (the image the user
    /// gave, when `file` is a decompressed copy of it).
    pub fn read_from<F: Read + Write + Seek + Debug>(
        file: &mut F,
        path: &Path,
    ) -> Result<PartitionTable, PartitionError> {
        let io = |source| {
            PartitionError::Io(PathError {
                path: path.to_owned(),
                source,
            })
        };
        let len = file.seek(SeekFrom::End(0)).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        if len < SECTOR {
            return Err(PartitionError::NoTable {
                path: path.to_owned(),
                reason: format!("the file has only {len} bytes"),
            });
        }
        let mut mbr_sector = [0u8; 512];
        file.read_exact(&mut mbr_sector).map_err(io)?;
        if mbr_sector[510..512] != [0x55, 0xaa] {
            return Err(PartitionError::NoTable {
                path: path.to_owned(),
                reason: "no boot signature 55aa at byte 510".into(),
            });
        }
        // A protective MBR (type 0xee) means the real table is GPT.
        let protective = (0..4).any(|i| mbr_sector[446 + i * 16 + 4] == 0xee);
        let (kind, disk_id, mut partitions) = if protective {
            read_gpt(path, file)?
        } else {
            read_mbr(path, file, &mbr_sector)?
        };
        for p in &mut partitions {
            // A crafted table can make start + length overflow: that is no partition at all.
            let Some(end) = p.start.checked_add(p.len) else {
                return Err(PartitionError::NoTable {
                    path: path.to_owned(),
                    reason: format!(
                        "partition {} starts at byte {} and is {} bytes long, past the largest possible offset",
                        p.number, p.start, p.len
                    ),
                });
            };
            if end > len {
                return Err(PartitionError::Truncated {
                    path: path.to_owned(),
                    number: p.number,
                    end,
                    len,
                });
            }
            p.content = probe(file, p.start).map_err(io)?;
        }
        Ok(PartitionTable {
            kind,
            disk_id,
            partitions,
        })
    }

    /// The boot partition: the first partition holding a FAT filesystem (`system-boot`).
    pub fn boot(&self, path: &Path) -> Result<&Partition, PartitionError> {
        self.partitions
            .iter()
            .find(|p| matches!(p.content, Content::Fat { .. }))
            .ok_or_else(|| PartitionError::Missing {
                path: path.to_owned(),
                what: "boot",
                expected: "a FAT partition labelled system-boot",
            })
    }

    /// The root partition: the first partition holding an ext4 filesystem (`writable`).
    pub fn root(&self, path: &Path) -> Result<&Partition, PartitionError> {
        self.partitions
            .iter()
            .find(|p| matches!(p.content, Content::Ext4 { .. }))
            .ok_or_else(|| PartitionError::Missing {
                path: path.to_owned(),
                what: "root",
                expected: "an ext4 partition labelled writable",
            })
    }
}

fn read_mbr(
    path: &Path,
    file: &mut (impl Read + Seek),
    sector: &[u8; 512],
) -> Result<(TableKind, String, Vec<Partition>), PartitionError> {
    file.seek(SeekFrom::Start(0)).at(path)?;
    let mbr = mbrman::MBR::read_from(file, SECTOR as u32).map_err(|e| PartitionError::NoTable {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let id = u32::from_le_bytes([sector[440], sector[441], sector[442], sector[443]]);
    let partitions = mbr
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(i, p)| Partition {
            number: i as u32,
            start: u64::from(p.starting_lba) * SECTOR,
            len: u64::from(p.sectors) * SECTOR,
            type_id: format!("{:02x}", p.sys),
            bootable: p.boot == 0x80,
            content: Content::Unknown,
        })
        .collect();
    Ok((TableKind::Mbr, format!("0x{id:08x}"), partitions))
}

fn read_gpt<F: Read + Write + Seek + Debug>(
    path: &Path,
    file: &mut F,
) -> Result<(TableKind, String, Vec<Partition>), PartitionError> {
    let no_table = |e: &dyn std::fmt::Display| PartitionError::NoTable {
        path: path.to_owned(),
        reason: format!("GPT: {e}"),
    };
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(&mut *file)
        .map_err(|e| no_table(&e))?;
    let lb = *disk.logical_block_size();
    let mut partitions = Vec::new();
    for (&number, p) in disk.partitions() {
        partitions.push(Partition {
            number,
            start: p.bytes_start(lb).map_err(|e| no_table(&e))?,
            len: p.bytes_len(lb).map_err(|e| no_table(&e))?,
            type_id: p.part_type_guid.guid.to_string(),
            bootable: false,
            content: Content::Unknown,
        });
    }
    Ok((TableKind::Gpt, disk.guid().to_string(), partitions))
}

/// Identify a filesystem from the superblock / boot sector at `start`.
fn probe(file: &mut (impl Read + Seek), start: u64) -> std::io::Result<Content> {
    let mut head = [0u8; 2048];
    file.seek(SeekFrom::Start(start))?;
    let got = read_full(file, &mut head)?;
    if got < head.len() {
        return Ok(Content::Unknown);
    }
    // ext2/3/4: superblock at 1024, magic 0xef53 at offset 0x38, label at 0x78.
    if head[1024 + 0x38..1024 + 0x3a] == [0x53, 0xef] {
        return Ok(Content::Ext4 {
            label: c_string(&head[1024 + 0x78..1024 + 0x88]),
        });
    }
    // FAT: boot signature plus the file-system type string (FAT32 at 0x52, FAT12/16 at 0x36);
    // the volume label sits 11 bytes before it.
    if head[510..512] == [0x55, 0xaa] {
        if &head[0x52..0x57] == b"FAT32" {
            return Ok(Content::Fat {
                label: c_string(&head[0x47..0x52]),
            });
        }
        if &head[0x36..0x39] == b"FAT" {
            return Ok(Content::Fat {
                label: c_string(&head[0x2b..0x36]),
            });
        }
    }
    Ok(Content::Unknown)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .trim_end()
        .to_string()
}

/// Set the 32-bit MBR disk identifier of the image open in `file` (which `root=PARTUUID=<id>-02`
/// refers to). Only those four bytes change.
pub fn set_mbr_disk_id(
    file: &mut (impl Read + Write + Seek),
    path: &Path,
    id: u32,
) -> Result<(), PartitionError> {
    let io = |source| {
        PartitionError::Io(PathError {
            path: path.to_owned(),
            source,
        })
    };
    let mut sector = [0u8; 512];
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.read_exact(&mut sector).map_err(io)?;
    if (0..4).any(|i| sector[446 + i * 16 + 4] == 0xee) {
        return Err(PartitionError::NotMbr {
            path: path.to_owned(),
            what: "setting the disk identifier",
        });
    }
    file.seek(SeekFrom::Start(MBR_DISK_ID_OFFSET)).map_err(io)?;
    file.write_all(&id.to_le_bytes()).map_err(io)?;
    Ok(())
}

/// Microsoft basic data: the type of the FAT boot partition. The Pi 4 bootloader matches it (and
/// the EFI system type, whose FAT handling needed bootloader fixes in 2021).
pub const BASIC_DATA: Guid = Guid([
    0xeb, 0xd0, 0xa0, 0xa2, 0xb9, 0xe5, 0x44, 0x33, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7,
]);
/// Linux filesystem data: the type of the ext4 root partition.
pub const LINUX_FS: Guid = Guid([
    0x0f, 0xc6, 0x3d, 0xaf, 0x84, 0x83, 0x47, 0x72, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
]);

/// GPT constants: 128 entries of 128 bytes (32 sectors), so the first usable sector is 34 and
/// the backup table takes the last 33 sectors.
const GPT_ENTRIES: usize = 128;
const GPT_ENTRY_SIZE: usize = 128;
const GPT_TABLE_SECTORS: u64 = (GPT_ENTRIES * GPT_ENTRY_SIZE) as u64 / SECTOR;
const GPT_FIRST_USABLE: u64 = 2 + GPT_TABLE_SECTORS;

/// Replace the MBR table of the image open in `file` with a GPT holding the same partitions at
/// the same offsets: a protective MBR, the primary header and entries in sectors 1-33, and the
/// backup entries and header in the last 33 sectors, for which the image grows when its last
/// partition reaches its end. FAT partitions get the basic data type, ext4 ones Linux
/// filesystem data; names are the filesystem labels. Returns the image's new length.
pub fn convert_to_gpt(
    file: &mut impl ImageFile,
    path: &Path,
    table: &PartitionTable,
    disk_guid: Guid,
    partition_guid: &dyn Fn(u32) -> Guid,
) -> Result<u64, PartitionError> {
    let io = |source| {
        PartitionError::Io(PathError {
            path: path.to_owned(),
            source,
        })
    };
    let bad = |reason: String| PartitionError::NoTable {
        path: path.to_owned(),
        reason,
    };
    if table.kind != TableKind::Mbr {
        return Err(bad("converting to GPT needs an MBR table".into()));
    }
    if table.partitions.len() > GPT_ENTRIES {
        return Err(bad(format!(
            "{} partitions do not fit in a GPT",
            table.partitions.len()
        )));
    }
    let mut entries = vec![0u8; GPT_ENTRIES * GPT_ENTRY_SIZE];
    let mut end_lba = GPT_FIRST_USABLE;
    for (slot, p) in table.partitions.iter().enumerate() {
        let (type_guid, name) = match &p.content {
            Content::Fat { label } => (BASIC_DATA, label.as_str()),
            Content::Ext4 { label } => (LINUX_FS, label.as_str()),
            Content::Unknown => {
                return Err(bad(format!(
                    "partition {} holds neither FAT nor ext4: no GPT type for it",
                    p.number
                )));
            }
        };
        let (first, count) = (p.start / SECTOR, p.len / SECTOR);
        if p.start % SECTOR != 0 || p.len % SECTOR != 0 || count == 0 || first < GPT_FIRST_USABLE {
            return Err(bad(format!(
                "partition {} (sectors {first}+{count}) overlaps the GPT header area (sectors 0-{})",
                p.number,
                GPT_FIRST_USABLE - 1
            )));
        }
        let e = &mut entries[slot * GPT_ENTRY_SIZE..(slot + 1) * GPT_ENTRY_SIZE];
        e[0..16].copy_from_slice(&type_guid.to_disk());
        e[16..32].copy_from_slice(&partition_guid(p.number).to_disk());
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&(first + count - 1).to_le_bytes());
        // Attributes (48..56) stay 0; the name is UTF-16LE, at most 36 code units.
        for (i, unit) in name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
        end_lba = end_lba.max(first + count);
    }
    let old_len = file.image_len().map_err(io)?;
    let total = old_len
        .div_ceil(SECTOR)
        .max(end_lba + GPT_TABLE_SECTORS + 1);
    let new_len = total * SECTOR;
    file.set_image_len(new_len).map_err(io)?;

    let entries_crc = crc32(&entries);
    let last_usable = total - GPT_TABLE_SECTORS - 2;
    let header = |my_lba: u64, alternate: u64, entries_lba: u64| {
        let mut h = [0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&GPT_FIRST_USABLE.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid.to_disk());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(GPT_ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(GPT_ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };

    // Protective MBR: the boot code stays, one 0xee entry covers the disk (capped at 32 bits).
    let mut mbr = [0u8; SECTOR as usize];
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.read_exact(&mut mbr).map_err(io)?;
    mbr[440..510].fill(0);
    let pe = &mut mbr[446..462];
    pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    pe[4] = 0xee;
    pe[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    pe[8..12].copy_from_slice(&1u32.to_le_bytes());
    let covered = u32::try_from(total - 1).unwrap_or(u32::MAX);
    pe[12..16].copy_from_slice(&covered.to_le_bytes());
    mbr[510..512].copy_from_slice(&[0x55, 0xaa]);

    let backup_entries = total - 1 - GPT_TABLE_SECTORS;
    let (primary, backup) = (
        header(1, total - 1, 2),
        header(total - 1, 1, backup_entries),
    );
    let writes: [(u64, &[u8]); 5] = [
        (0, &mbr),
        (1, &primary),
        (2, &entries),
        (backup_entries, &entries),
        (total - 1, &backup),
    ];
    for (lba, bytes) in writes {
        file.seek(SeekFrom::Start(lba * SECTOR)).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
    }
    Ok(new_len)
}

/// CRC-32 (IEEE 802.3, reflected, as GPT uses).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_and_guid_encoding_follow_the_spec() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(
            BASIC_DATA.to_string(),
            "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
        );
        // On disk the first three fields are little-endian (UEFI spec, appendix A).
        assert_eq!(
            LINUX_FS.to_disk()[..8],
            [0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47]
        );
    }
}
