//! `pi-image build`: copy the base image once per node, apply the node's plan to the copy, and
//! rename it into place only when everything succeeded.

pub mod eeprom;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};


use crate::image::bootfs::{BootFs, FatTimestamp};
use self::eeprom::UpdateFiles;
use crate::image::ext4::{self, Attrs, Ext4Fs};
use crate::image::{self, ImageError, PendingOutput};
use crate::profile::overlay::{self, OverlayEntry, OverlayKind};
use crate::image::partition::{self, Partition, PartitionTable};
use crate::image::partview::PartitionView;
use crate::plan::{self, NodePlan};
use crate::profile::{Node, PartitionScheme, Profile, Target};
use crate::plan::release::{self, Release};
use crate::{Error, Result};

/// Timestamps for everything the build writes when `SOURCE_DATE_EPOCH` is not set:
/// 2022-09-01 12:00 UTC, the day Ubuntu 20.04.5 was released. Fixed, so builds are reproducible.
pub const DEFAULT_EPOCH: i64 = 1_662_033_600;

/// The offset of the arm64 Image magic `ARM\x64` in a decompressed kernel.
const ARM64_MAGIC_OFFSET: usize = 0x38;
const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The base image (`.img` or `.img.xz`).
    pub base: PathBuf,
    /// The output directory; images are written as `<dir>/<node>.img`.
    pub out_dir: PathBuf,
    /// Time stamp for every file written (from `SOURCE_DATE_EPOCH`).
    pub epoch: i64,
}

/// What one node's build produced.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The node.
    pub node: String,
    /// The image's final path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256, hex.
    pub sha256: String,
    /// The boot target.
    pub target: Target,
    /// The release of the base.
    pub release: Release,
}

/// A node's overlays and EEPROM update files, loaded and checked before anything is written.
struct NodeOverlays {
    boot: Vec<OverlayEntry>,
    rootfs: Vec<OverlayEntry>,
    eeprom: Option<UpdateFiles>,
}

/// One node's finished raw image, still in its temp file beside `<out>/<node>.img`: commit it to
/// keep it there, or drop it to remove it (after compressing it, say).
#[derive(Debug)]
pub struct NodeImage {
    /// The node.
    pub node: String,
    /// The image, complete and unsynced, not yet at its final path.
    pub output: PendingOutput,
    /// Its size in bytes.
    pub size: u64,
    /// The boot target.
    pub target: Target,
    /// The release of the base.
    pub release: Release,
}

impl NodeImage {
    /// Hash the image and rename it to `<out>/<node>.img`.
    pub fn commit(mut self) -> Result<BuiltImage> {
        let temp = self.output.temp_path().to_owned();
        let sha256 =
            sha256_of(self.output.file()).map_err(|source| Error::Io { path: temp, source })?;
        let path = self.output.commit()?;
        Ok(BuiltImage {
            node: self.node,
            path,
            size: self.size,
            sha256,
            target: self.target,
            release: self.release,
        })
    }
}

/// Build `nodes` of `profile` from the base image into `<out>/<node>.img`. A compressed base is
/// decompressed once into a temporary raw image in the output directory, which every node is
/// then copied from.
pub fn build_nodes(
    profile: &Profile,
    nodes: &[&Node],
    opts: &BuildOptions,
) -> Result<Vec<BuiltImage>> {
    let mut built = Vec::new();
    build_nodes_with(profile, nodes, opts, &mut |img| {
        built.push(img.commit()?);
        Ok(())
    })?;
    Ok(built)
}

/// Build `nodes` like [`build_nodes`], handing each finished image to `each` in order, one at a
/// time (so at most one node's raw image exists at once), instead of committing it.
pub fn build_nodes_with(
    profile: &Profile,
    nodes: &[&Node],
    opts: &BuildOptions,
    each: &mut dyn FnMut(NodeImage) -> Result<()>,
) -> Result<()> {
    let mut overlays = nodes
        .iter()
        .map(|n| load_overlays(profile, n))
        .collect::<Result<Vec<_>>>()?;
    for (node, loaded) in nodes.iter().zip(&mut overlays) {
        if let Some(spec) = &node.eeprom {
            let files = eeprom::update_files(spec, opts.epoch).map_err(|e| {
                Error::Msg(format!(
                    "{}: node {}: eeprom: {e}",
                    profile.path.display(),
                    node.name
                ))
            })?;
            loaded.eeprom = Some(files);
        }
    }
    if !opts.base.is_file() {
        return Err(Error::Msg(format!(
            "{}: base image not found (expected a .img or .img.xz file)",
            opts.base.display()
        )));
    }
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| Error::Io {
        path: opts.out_dir.clone(),
        source,
    })?;
    let raw_base = RawBase::prepare(&opts.base, &opts.out_dir)?;
    // Errors name the base the user gave, not our temporary copy.
    let table = PartitionTable::read(raw_base.path())
        .map_err(|e| name_base(e, raw_base.path(), &opts.base))?;
    if table.kind != partition::TableKind::Mbr {
        return Err(Error::Msg(format!(
            "{}: the base image uses a GPT partition table; pi-image builds from Ubuntu's MBR images",
            opts.base.display()
        )));
    }
    let boot = table.boot(&opts.base)?.clone();
    let root = table.root(&opts.base)?.clone();
    let os_release = Ext4Fs::open(raw_base.path(), root.start, root.len, false)
        .and_then(|fs| ext4::os_release(&fs))
        .map_err(|e| name_base(e, raw_base.path(), &opts.base))?;
    let base = BaseImage {
        path: raw_base.path(),
        boot,
        root,
        os_release,
    };
    for (node, overlays) in nodes.iter().zip(&overlays) {
        each(build_node(profile, node, overlays, opts, &base)?)?;
    }
    Ok(())
}

/// An error about a copy of the base (the decompressed base, or a node's image before edits),
/// reworded to name the base the user gave.
fn name_base(e: impl std::fmt::Display, copy: &Path, base: &Path) -> Error {
    Error::Msg(
        e.to_string()
            .replace(&copy.display().to_string(), &base.display().to_string()),
    )
}

/// Load every overlay of `node`: `boot/` trees and `rootfs/` trees (with `rootfs.toml`).
fn load_overlays(profile: &Profile, node: &Node) -> Result<NodeOverlays> {
    let mut loaded = NodeOverlays {
        boot: Vec::new(),
        rootfs: Vec::new(),
        eeprom: None,
    };
    for name in &node.overlays {
        let dir = profile.overlays_dir.join(name);
        let (boot, rootfs) = (dir.join("boot"), dir.join("rootfs"));
        if !boot.is_dir() && !rootfs.is_dir() {
            return Err(Error::Msg(format!(
                "{}: overlay '{name}' (node {}) has neither a boot/ nor a rootfs/ directory",
                dir.display(),
                node.name
            )));
        }
        if boot.is_dir() {
            for entry in overlay::load(&boot, None)? {
                if let OverlayKind::Symlink { .. } = entry.kind {
                    return Err(Error::Msg(format!(
                        "{}: {}: the FAT boot partition cannot hold symlinks",
                        boot.display(),
                        entry.path
                    )));
                }
                loaded.boot.push(entry);
            }
        }
        if rootfs.is_dir() {
            let manifest = dir.join("rootfs.toml");
            loaded.rootfs.extend(overlay::load(
                &rootfs,
                manifest.is_file().then_some(manifest.as_path()),
            )?);
        }
    }
    Ok(loaded)
}

/// The raw base image and what was learnt from it once for all nodes.
struct BaseImage<'a> {
    path: &'a Path,
    boot: Partition,
    root: Partition,
    os_release: ext4::OsRelease,
}

fn build_node(
    profile: &Profile,
    node: &Node,
    overlays: &NodeOverlays,
    opts: &BuildOptions,
    base: &BaseImage,
) -> Result<NodeImage> {
    let (raw_base, boot, root) = (base.path, &base.boot, &base.root);
    let target = opts.out_dir.join(format!("{}.img", node.name));
    let mut out = PendingOutput::create(&target)?;
    let mut src = File::open(raw_base).map_err(|source| Error::Io {
        path: raw_base.to_owned(),
        source,
    })?;
    let temp = out.temp_path().to_owned();
    let io = |source| Error::Io {
        path: temp.clone(),
        source,
    };
    let size = image::copy_sparse(&mut src, out.file()).map_err(io)?;

    let mut fs = BootFs::open(
        PartitionView::new(out.file().try_clone().map_err(io)?, boot.start, boot.len)
            .map_err(io)?,
        FatTimestamp::from_unix(opts.epoch),
    )?;
    let mut stock = HashMap::new();
    for name in plan::STOCK_FILES {
        if let Some(bytes) = fs.read_file(name)? {
            stock.insert(name, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    let release = release::detect(
        &base.os_release,
        stock
            .get("config.txt")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(|e| Error::Msg(format!("{}: {e}", opts.base.display())))?;
    let node_plan: NodePlan = plan::plan_node(&profile.cluster, node, release, root.number, &|n| {
        stock.get(n).cloned()
    })
    .map_err(|e| Error::Msg(format!("{}: {e}", opts.base.display())))?;
    for (path, content) in &node_plan.boot_files {
        fs.write_bytes(path, content.as_bytes())?;
    }
    if node_plan.decompress_kernel {
        write_vmlinux(&mut fs)?;
    }
    for entry in &overlays.boot {
        match &entry.kind {
            OverlayKind::Dir => fs.create_dir_all(&entry.path)?,
            OverlayKind::File { source, .. } => {
                let mut f = File::open(source).map_err(|e| Error::Io {
                    path: source.clone(),
                    source: e,
                })?;
                fs.write_file(&entry.path, &mut f)?;
            }
            OverlayKind::Symlink { .. } => unreachable!("refused by load_overlays"),
        }
    }
    // After the overlays, so the three files are always the matching set the signature covers.
    if let Some(files) = &overlays.eeprom {
        eeprom::write_to(&fs, files)?;
    }
    fs.unmount()?;

    if !overlays.rootfs.is_empty() || !node_plan.rootfs_files.is_empty() {
        let mut rootfs = Ext4Fs::open(&temp, root.start, root.len, true)
            .map_err(|e| name_base(e, &temp, &opts.base))?;
        apply_rootfs(
            &mut rootfs,
            &overlays.rootfs,
            &node_plan.rootfs_files,
            opts.epoch,
        )
        .map_err(|e| Error::Msg(format!("node {}: root filesystem: {e}", node.name)))?;
        rootfs.close()?;
    }
    let size = match node.partition_table {
        PartitionScheme::Mbr => {
            partition::set_mbr_disk_id(out.file(), &temp, node_plan.disk_id)?;
            size
        }
        PartitionScheme::Gpt => {
            let table = PartitionTable::read(&temp)?;
            let guid = |n| plan::gpt_partition_guid(&profile.cluster, &node.name, n);
            let disk = plan::gpt_disk_guid(&profile.cluster, &node.name);
            partition::convert_to_gpt(out.file(), &temp, &table, disk, &guid)?
        }
    };

    Ok(NodeImage {
        node: node.name.clone(),
        output: out,
        size,
        target: node.target,
        release,
    })
}

/// Apply rootfs overlays (in profile order: a later file replaces an earlier one) and the plan's
/// own files, after checking that all of it fits.
fn apply_rootfs(
    fs: &mut Ext4Fs,
    entries: &[OverlayEntry],
    files: &[plan::RootfsFile],
    epoch: i64,
) -> Result<()> {
    let own: u64 = files
        .iter()
        .map(|f| ext4::bytes_needed(ext4::Need::File(f.content.len() as u64), fs.block_size()))
        .sum();
    let need = overlay::total_bytes(entries) + own;
    if need > fs.free_bytes() {
        return Err(Error::Msg(format!(
            "the overlays need up to {need} bytes but the filesystem has {} free: {} bytes missing",
            fs.free_bytes(),
            need - fs.free_bytes()
        )));
    }
    for entry in entries {
        let path = format!("/{}", entry.path);
        let attrs = entry.attrs.with_mtime(epoch);
        match &entry.kind {
            // Existing directories keep their mode and owner (/root stays 0700).
            OverlayKind::Dir => fs.mkdir_p(&path, &attrs)?,
            OverlayKind::File { source, .. } => {
                let mut f = File::open(source).map_err(|e| Error::Io {
                    path: source.clone(),
                    source: e,
                })?;
                let size = f
                    .metadata()
                    .map_err(|e| Error::Io {
                        path: source.clone(),
                        source: e,
                    })?
                    .len();
                fs.write_file(&path, &mut f, size, &attrs)?;
            }
            OverlayKind::Symlink { target } => {
                if fs.exists(&path)? {
                    fs.remove(&path)?;
                }
                fs.symlink(&path, target, &attrs)?;
            }
        }
    }
    let dir_attrs = Attrs {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: epoch,
    };
    for f in files {
        if let Some((parent, _)) = f.path.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
            fs.mkdir_p(parent, &dir_attrs)?;
        }
        let attrs = Attrs {
            mode: f.mode,
            ..dir_attrs
        };
        fs.write_file(
            &f.path,
            &mut f.content.as_bytes(),
            f.content.len() as u64,
            &attrs,
        )?;
    }
    Ok(())
}

/// Write `vmlinux`, the gzip-decoded `vmlinuz`, streaming, after checking it is an arm64 Image.
fn write_vmlinux<F: Read + Write + Seek>(fs: &mut BootFs<F>) -> Result<()> {
    let compressed = fs
        .read_file("vmlinuz")?
        .ok_or_else(|| Error::Msg("decompress_kernel: the boot partition has no vmlinuz".into()))?;
    let mut decoder = flate2::read::GzDecoder::new(&compressed[..]);
    let mut head = [0u8; 64];
    decoder.read_exact(&mut head).map_err(|e| {
        Error::Msg(format!(
            "decompress_kernel: vmlinuz on the boot partition is not a gzip kernel: {e}"
        ))
    })?;
    if &head[ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4] != ARM64_MAGIC {
        return Err(Error::Msg(
            "decompress_kernel: vmlinuz does not hold an arm64 kernel Image (no ARM\\x64 magic at 0x38)".into(),
        ));
    }
    let mut whole = (&head[..]).chain(decoder);
    fs.write_file("vmlinux", &mut whole)?;
    Ok(())
}

fn sha256_of(file: &mut File) -> io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    crate::io::sha256_hex(file)
}

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
