//! The partition table of an image: read it (MBR via `mbrman`, GPT via `gpt`), find the boot
//! and root partitions by what they hold, and set the MBR disk identifier.

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
    #[error("{path}: {source}")]
    Io {
        /// The image.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
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
    /// One past the last byte of the partition.
    pub fn end(&self) -> u64 {
        self.start + self.len
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
        let io = |source| PartitionError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
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
            read_gpt(path, &mut file)?
        } else {
            read_mbr(path, &mut file, &mbr_sector)?
        };
        for p in &mut partitions {
            if p.end() > len {
                return Err(PartitionError::Truncated {
                    path: path.to_owned(),
                    number: p.number,
                    end: p.end(),
                    len,
                });
            }
            p.content = probe(&mut file, p.start).map_err(io)?;
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
    file: &mut File,
    sector: &[u8; 512],
) -> Result<(TableKind, String, Vec<Partition>), PartitionError> {
    file.seek(SeekFrom::Start(0))
        .map_err(|source| PartitionError::Io {
            path: path.to_owned(),
            source,
        })?;
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

fn read_gpt(
    path: &Path,
    file: &mut File,
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
fn probe(file: &mut File, start: u64) -> std::io::Result<Content> {
    let mut head = [0u8; 2048];
    file.seek(SeekFrom::Start(start))?;
    let got = read_up_to(file, &mut head)?;
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

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .trim_end()
        .to_string()
}

/// Set the 32-bit MBR disk identifier of the image open in `file` (which `root=PARTUUID=<id>-02`
/// refers to). Only those four bytes change.
pub fn set_mbr_disk_id(file: &mut File, path: &Path, id: u32) -> Result<(), PartitionError> {
    let io = |source| PartitionError::Io {
        path: path.to_owned(),
        source,
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
