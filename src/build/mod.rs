//! `pi-image build`: copy the base image once per node, apply the node's plan to the copy, and
//! rename it into place only when everything succeeded.
//!
//! [`base`] reads what every node shares from the base once (its raw bytes, partitions and
//! release), [`node`] makes one node's image from it, [`delta`] makes the same image as a
//! copy-on-write layer over the base (for releases of many nodes), and [`eeprom`] makes the
//! bootloader EEPROM update files a node (or `pi-image eeprom`'s card) carries.

mod base;
pub mod delta;
pub mod eeprom;
mod node;
pub mod overlay;

use std::path::PathBuf;

use crate::image::bootfs::BootFsError;
use crate::image::ext4::Ext4Error;
use crate::image::partition::PartitionError;
use crate::image::{ImageError, PendingOutput};
use crate::io::{AtPath, PathError};
use crate::plan::PlanError;
use crate::plan::release::{Release, ReleaseError};
use crate::profile::{Node, Profile, Target};

use self::base::BaseImage;
use self::eeprom::EepromCardError;
use self::overlay::OverlayError;

/// The result of building.
pub type Result<T, E = BuildError> = std::result::Result<T, E>;

/// Timestamps for everything the build writes when `SOURCE_DATE_EPOCH` is not set:
/// 2022-09-01 12:00 UTC, the day Ubuntu 20.04.5 was released. Fixed, so builds are reproducible.
pub const DEFAULT_EPOCH: i64 = 1_662_033_600;

/// Why a node could not be built (besides the errors of the image formats it edits).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// I/O on a named file failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The base could not be decompressed or an output not written.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The base's partition table is not one the build can edit.
    #[error(transparent)]
    Partition(#[from] PartitionError),
    /// The FAT boot partition could not be read or written.
    #[error(transparent)]
    BootFs(#[from] BootFsError),
    /// The ext4 root filesystem could not be read or written.
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
    /// An overlay tree is invalid.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// The base image is not there.
    #[error("{}: base image not found (expected a .img or .img.xz file)", base.display())]
    BaseNotFound {
        /// The base image.
        base: PathBuf,
    },
    /// The base image has a GPT; Ubuntu's images have an MBR, which the build edits.
    #[error(
        "{}: the base image uses a GPT partition table; pi-image builds from Ubuntu's MBR images",
        base.display()
    )]
    GptBase {
        /// The base image.
        base: PathBuf,
    },
    /// The base image's release is not one pi-image can patch.
    #[error("{}: {source}", base.display())]
    Release {
        /// The base image.
        base: PathBuf,
        /// Why.
        source: ReleaseError,
    },
    /// The node's edits could not be planned from the base's stock files.
    #[error("{}: {source}", base.display())]
    Plan {
        /// The base image.
        base: PathBuf,
        /// Why.
        source: PlanError,
    },
    /// The node's EEPROM update files could not be made.
    #[error("{}: node {node}: eeprom: {source}", profile.display())]
    Eeprom {
        /// The profile.
        profile: PathBuf,
        /// The node.
        node: String,
        /// Why (boxed: the error type stays small).
        source: Box<EepromCardError>,
    },
    /// `decompress_kernel` on a boot partition without `vmlinuz`.
    #[error("decompress_kernel: the boot partition has no vmlinuz")]
    NoKernel,
    /// `vmlinuz` does not decompress as gzip.
    #[error("decompress_kernel: vmlinuz on the boot partition is not a gzip kernel: {source}")]
    KernelNotGzip {
        /// What the decoder said.
        source: std::io::Error,
    },
    /// `vmlinuz` decompresses to something that is not an arm64 kernel.
    #[error(
        "decompress_kernel: vmlinuz does not hold an arm64 kernel Image (no ARM\\x64 magic at 0x38)"
    )]
    KernelNotArm64,
    /// The overlays do not fit into the root filesystem.
    #[error(
        "node {node}: root filesystem: the overlays need up to {need} bytes but the filesystem has {free} free: {} bytes missing",
        need - free
    )]
    NoSpace {
        /// The node.
        node: String,
        /// Bytes the overlays may take.
        need: u64,
        /// Bytes free.
        free: u64,
    },
    /// The root filesystem's allocation (for block maps) could not be read.
    #[error("root filesystem allocation: {0}")]
    RootAllocation(Box<crate::image::blockmap::BlockMapError>),
    /// Writing the root filesystem failed.
    #[error("node {node}: root filesystem: {source}")]
    RootFs {
        /// The node.
        node: String,
        /// Why (boxed: the error type stays small).
        source: Box<Ext4Error>,
    },
}

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

/// One node's finished raw image, still in its temp file beside `<out>/<node>.img`: commit it to
/// keep it there, or drop it to remove it (after compressing it, say).
#[derive(Debug)]
pub struct PendingImage {
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

impl PendingImage {
    /// Rename the image to `<out>/<node>.img` once synced, hashed on another core while it is
    /// being synced.
    pub fn commit(self) -> Result<BuiltImage> {
        let (path, sha256) = self.output.commit_hashed()?;
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

/// Build `nodes` of `profile` from the base image into `<out>/<node>.img`, with each image's
/// sha256. A compressed base is decompressed once into a temporary raw image in the output
/// directory, which every node is then copied from.
pub fn build_nodes(
    profile: &Profile,
    nodes: &[&Node],
    opts: &BuildOptions,
) -> Result<Vec<BuiltImage>> {
    let mut built = Vec::new();
    build_nodes_with::<BuildError>(profile, nodes, opts, &mut |img| {
        built.push(img.commit()?);
        Ok(())
    })?;
    Ok(built)
}

/// Build `nodes` like [`build_nodes`], handing each finished image to `each` in order, one at a
/// time (so at most one node's raw image exists at once), instead of committing it.
pub fn build_nodes_with<E: From<BuildError>>(
    profile: &Profile,
    nodes: &[&Node],
    opts: &BuildOptions,
    each: &mut dyn FnMut(PendingImage) -> Result<(), E>,
) -> Result<(), E> {
    let (inputs, base) = prepare(profile, nodes, opts)?;
    for (node, inputs) in nodes.iter().zip(&inputs) {
        each(node::build(profile, node, inputs, opts, &base)?)?;
    }
    Ok(())
}

/// Every node's inputs, loaded and checked before anything is built, and the base read once
/// (into the output directory, created if needed).
fn prepare(
    profile: &Profile,
    nodes: &[&Node],
    opts: &BuildOptions,
) -> Result<(Vec<node::NodeInputs>, BaseImage)> {
    let inputs = nodes
        .iter()
        .map(|node| node::NodeInputs::load(profile, node, opts.epoch))
        .collect::<Result<Vec<_>>>()?;
    if !opts.base.is_file() {
        return Err(BuildError::BaseNotFound {
            base: opts.base.clone(),
        });
    }
    std::fs::create_dir_all(&opts.out_dir).at(&opts.out_dir)?;
    let base = BaseImage::prepare(&opts.base, &opts.out_dir)?;
    Ok((inputs, base))
}
