//! What every node of a build shares, read from the base image once: its raw bytes and where its
//! data lies, its boot and root partitions, its stock boot files and its release.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::BuildError;
use super::Result;
use crate::image::bootfs::{BootFs, FatTimestamp};
use crate::image::ext4::{self, Ext4Fs};
use crate::image::partition::{Partition, PartitionTable, TableKind};
use crate::image::partview::{PartitionView, ReadOnly};
use crate::image::{self, ImageError, PendingOutput};
use crate::io::AtPath;
use crate::plan::{self, release::Release};

/// The base as a raw image file: the base itself, or a temporary decompressed copy (removed on
/// drop) when it is compressed.
enum RawBase {
    Direct(PathBuf),
    Decompressed(PendingOutput),
}

impl RawBase {
    fn prepare(base: &Path, out_dir: &Path) -> Result<RawBase> {
        if !image::is_compressed(base)? {
            return Ok(RawBase::Direct(base.to_owned()));
        }
        let mut reader = image::open_base(base)?;
        let mut temp = PendingOutput::create(&out_dir.join("base.raw"))?;
        image::copy_sparse(&mut reader, temp.file()).map_err(|e| ImageError::Decompress {
            path: base.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(RawBase::Decompressed(temp))
    }

    fn path(&self) -> &Path {
        match self {
            RawBase::Direct(p) => p,
            RawBase::Decompressed(t) => t.temp_path(),
        }
    }
}

/// The raw base image and what was learnt from it once for all nodes. Errors about it name the
/// base the user gave, never the temporary decompressed copy.
pub(super) struct BaseImage {
    raw: RawBase,
    /// The raw base's data extents: what a copy copies (the rest are holes).
    pub data: Vec<Range<u64>>,
    /// The base as the user gave it.
    pub name: PathBuf,
    /// The FAT boot partition.
    pub boot: Partition,
    /// The ext4 root partition.
    pub root: Partition,
    /// The stock boot files the plan reads ([`plan::STOCK_FILES`]), those present.
    pub stock: HashMap<&'static str, String>,
    /// The Ubuntu release it holds.
    pub release: Release,
}

impl BaseImage {
    /// Decompress `base` into `out_dir` if it is compressed, and read its partitions, stock boot
    /// files and release.
    pub fn prepare(base: &Path, out_dir: &Path) -> Result<BaseImage> {
        let raw = RawBase::prepare(base, out_dir)?;
        let mut file = File::open(raw.path()).at(raw.path())?;
        let data = image::data_ranges(&file).at(raw.path())?;
        let table = PartitionTable::read_from(&mut file, base)?;
        if table.kind != TableKind::Mbr {
            return Err(BuildError::GptBase {
                base: base.to_owned(),
            });
        }
        let boot = table.boot(base)?.clone();
        let root = table.root(base)?.clone();
        let os_release = ext4::os_release(&Ext4Fs::open_as(
            raw.path(),
            base,
            root.start,
            root.len,
            false,
        )?)?;
        let fs = BootFs::open(
            PartitionView::new(ReadOnly(file), boot.start, boot.len).at(base)?,
            FatTimestamp::from_unix(0),
        )?;
        let mut stock = HashMap::new();
        for name in plan::STOCK_FILES {
            if let Some(bytes) = fs.read_file(name)? {
                stock.insert(name, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        let config_txt = stock.get("config.txt").map(String::as_str);
        let release = plan::release::detect(&os_release, config_txt.unwrap_or_default()).map_err(
            |source| BuildError::Release {
                base: base.to_owned(),
                source,
            },
        )?;
        Ok(BaseImage {
            raw,
            data,
            name: base.to_owned(),
            boot,
            root,
            stock,
            release,
        })
    }

    /// The raw base image file to copy.
    pub fn raw_path(&self) -> &Path {
        self.raw.path()
    }
}
