//! One node's image: a copy of the base (a reflink, or its data extents copied in the kernel),
//! its plan's boot files, overlays and EEPROM files written into the FAT boot partition, its
//! root filesystem files into the ext4 root, and its partition table given the node's identity.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use super::Result;
use super::base::BaseImage;
use super::eeprom::{self, UpdateFiles};
use super::overlay::{self, NodeOverlays, OverlayEntry, OverlayKind};
use super::{BuildError, BuildOptions, PendingImage};
use crate::image::bootfs::{BootFs, FatTimestamp};
use crate::image::cow::ImageFile;
use crate::image::ext4::{self, Attrs, Ext4Fs, Need};
use crate::image::partition::{self, PartitionTable};
use crate::image::partview::PartitionView;
use crate::image::{self, PendingOutput};
use crate::io::AtPath;
use crate::plan::{self, NodePlan, RootfsFile};

use crate::profile::{Node, PartitionScheme, Profile};

/// The offset of the arm64 Image magic `ARM\x64` in a decompressed kernel.
const ARM64_MAGIC_OFFSET: usize = 0x38;
const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";

/// What a node reads besides the base, loaded and checked before any image is written.
pub(super) struct NodeInputs {
    /// Its overlay trees.
    pub overlays: NodeOverlays,
    /// Its bootloader EEPROM update files, if it has an `eeprom` table.
    pub eeprom: Option<UpdateFiles>,
}

impl NodeInputs {
    /// Load `node`'s overlays and make its EEPROM update files.
    pub fn load(profile: &Profile, node: &Node, epoch: i64) -> Result<NodeInputs> {
        let overlays = overlay::load_node(&profile.overlays_dir, &node.overlays, &node.name)?;
        let eeprom =
            match &node.eeprom {
                Some(spec) => Some(eeprom::update_files(spec, epoch).map_err(|source| {
                    BuildError::Eeprom {
                        profile: profile.path.clone(),
                        node: node.name.clone(),
                        source: Box::new(source),
                    }
                })?),
                None => None,
            };
        Ok(NodeInputs { overlays, eeprom })
    }
}

/// Build `node`'s image from `base` into a temp file beside `<out>/<node>.img`.
pub(super) fn build(
    profile: &Profile,
    node: &Node,
    inputs: &NodeInputs,
    opts: &BuildOptions,
    base: &BaseImage,
) -> Result<PendingImage> {
    let node_plan = plan(profile, node, inputs, base)?;
    let target = opts.out_dir.join(format!("{}.img", node.name));
    let mut out = PendingOutput::create(&target)?;
    let temp = out.temp_path().to_owned();
    let src = File::open(base.raw_path()).at(base.raw_path())?;
    let (size, _) = image::copy_file(&src, out.file(), &base.data).at(&temp)?;

    let boot = &base.boot;
    let fs = BootFs::open(
        PartitionView::new(out.file().try_clone().at(&temp)?, boot.start, boot.len).at(&temp)?,
        FatTimestamp::from_unix(opts.epoch),
    )?;
    write_boot(fs, &node_plan, inputs)?;
    if has_rootfs_edits(inputs, &node_plan) {
        edit_rootfs(&temp, base, node, inputs, &node_plan, opts.epoch)?;
    }
    let size = write_partition_table(out.file(), &temp, profile, node, &node_plan, size)?;

    Ok(PendingImage {
        node: node.name.clone(),
        output: out,
        size,
        target: node.target,
        release: base.release,
    })
}

/// The node's plan: its boot files, root filesystem files and disk id, from the base's stock
/// files; its boot overlays may not replace a file the plan generates.
pub(super) fn plan(
    profile: &Profile,
    node: &Node,
    inputs: &NodeInputs,
    base: &BaseImage,
) -> Result<NodePlan> {
    let node_plan = plan::plan_node(
        &profile.cluster,
        node,
        base.release,
        base.root.number,
        &|n| base.stock.get(n).cloned(),
    )
    .map_err(|source| BuildError::Plan {
        base: base.name.clone(),
        source,
    })?;
    let generated = node_plan
        .boot_files
        .keys()
        .map(String::as_str)
        .chain(node_plan.decompress_kernel.then_some("vmlinux"))
        .chain(inputs.eeprom.iter().flat_map(|_| eeprom::UPDATE_FILES));
    overlay::check_not_generated(&inputs.overlays.boot, generated)?;
    Ok(node_plan)
}

/// Write the plan's boot files, `vmlinux`, the boot overlays and the EEPROM files into the
/// node's FAT boot partition `fs`, and unmount it.
pub(super) fn write_boot<F: Read + Write + Seek>(
    mut fs: BootFs<F>,
    node_plan: &NodePlan,
    inputs: &NodeInputs,
) -> Result<()> {
    for (path, content) in &node_plan.boot_files {
        fs.write_bytes(path, content.as_bytes())?;
    }
    if node_plan.decompress_kernel {
        write_vmlinux(&mut fs)?;
    }
    for entry in &inputs.overlays.boot {
        match &entry.kind {
            OverlayKind::Dir => fs.create_dir_all(&entry.path)?,
            OverlayKind::File { source, .. } => {
                fs.write_file(&entry.path, &mut File::open(source).at(source)?)?;
            }
            // Refused when the overlays were loaded: FAT has no symlinks.
            OverlayKind::Symlink { .. } => {}
        }
    }
    // After the overlays, so the three files are always the matching set the signature covers.
    if let Some(files) = &inputs.eeprom {
        eeprom::write_to(&fs, files)?;
    }
    fs.unmount()?;
    Ok(())
}

/// Whether the node writes anything into the root filesystem.
pub(super) fn has_rootfs_edits(inputs: &NodeInputs, node_plan: &NodePlan) -> bool {
    !inputs.overlays.rootfs.is_empty() || !node_plan.rootfs_files.is_empty()
}

/// Write the node's rootfs overlays and the plan's root filesystem files into the ext4 root of
/// the image file at `image` (a copy of the base).
pub(super) fn edit_rootfs(
    image: &Path,
    base: &BaseImage,
    node: &Node,
    inputs: &NodeInputs,
    node_plan: &NodePlan,
    epoch: i64,
) -> Result<()> {
    let root = &base.root;
    let mut rootfs = Ext4Fs::open_as(image, &base.name, root.start, root.len, true)?;
    apply_rootfs(
        &mut rootfs,
        &inputs.overlays.rootfs,
        &node_plan.rootfs_files,
        epoch,
    )
    .map_err(|e| match e {
        RootFsError::Ext4(source) => BuildError::RootFs {
            node: node.name.clone(),
            source: Box::new(source),
        },
        RootFsError::NoSpace { need, free } => BuildError::NoSpace {
            node: node.name.clone(),
            need,
            free,
        },
        RootFsError::Io(e) => BuildError::Io(e),
    })?;
    rootfs.close()?;
    Ok(())
}

/// Give the image of `size` bytes in `image` (named `path` in errors) the node's identity: its
/// MBR disk id, or a GPT with its GUIDs. Returns the image's new size (a GPT adds its backup).
pub(super) fn write_partition_table(
    image: &mut impl ImageFile,
    path: &Path,
    profile: &Profile,
    node: &Node,
    node_plan: &NodePlan,
    size: u64,
) -> Result<u64> {
    Ok(match node.partition_table {
        PartitionScheme::Mbr => {
            partition::set_mbr_disk_id(image, path, node_plan.disk_id)?;
            size
        }
        PartitionScheme::Gpt => {
            let table = PartitionTable::read_from(image, path)?;
            let guid = |n| plan::gpt_partition_guid(&profile.cluster, &node.name, n);
            let disk = plan::gpt_disk_guid(&profile.cluster, &node.name);
            partition::convert_to_gpt(image, path, &table, disk, &guid)?
        }
    })
}

/// Why the root filesystem could not be written.
enum RootFsError {
    Ext4(ext4::Ext4Error),
    NoSpace { need: u64, free: u64 },
    Io(crate::io::PathError),
}

impl From<ext4::Ext4Error> for RootFsError {
    fn from(e: ext4::Ext4Error) -> Self {
        RootFsError::Ext4(e)
    }
}

impl From<crate::io::PathError> for RootFsError {
    fn from(e: crate::io::PathError) -> Self {
        RootFsError::Io(e)
    }
}

/// Apply rootfs overlays (in profile order: a later file replaces an earlier one) and the plan's
/// own files, after checking that all of it fits.
fn apply_rootfs(
    fs: &mut Ext4Fs,
    entries: &[OverlayEntry],
    files: &[RootfsFile],
    epoch: i64,
) -> Result<(), RootFsError> {
    let own: u64 = files
        .iter()
        .map(|f| ext4::bytes_needed(Need::File(f.content.len() as u64), fs.block_size()))
        .sum();
    let need = overlay::total_bytes(entries) + own;
    if need > fs.free_bytes() {
        return Err(RootFsError::NoSpace {
            need,
            free: fs.free_bytes(),
        });
    }
    for entry in entries {
        let path = format!("/{}", entry.path);
        let attrs = entry.attrs.with_mtime(epoch);
        match &entry.kind {
            // Existing directories keep their mode and owner (/root stays 0700).
            OverlayKind::Dir => fs.mkdir_p(&path, &attrs)?,
            OverlayKind::File { source, .. } => {
                let mut f = File::open(source).at(source)?;
                let size = f.metadata().at(source)?.len();
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
    let compressed = fs.read_file("vmlinuz")?.ok_or(BuildError::NoKernel)?;
    let mut decoder = flate2::read::GzDecoder::new(&compressed[..]);
    let mut head = [0u8; 64];
    decoder
        .read_exact(&mut head)
        .map_err(|source| BuildError::KernelNotGzip { source })?;
    if &head[ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4] != ARM64_MAGIC {
        return Err(BuildError::KernelNotArm64);
    }
    let mut whole = (&head[..]).chain(decoder);
    fs.write_file("vmlinux", &mut whole)?;
    Ok(())
}
