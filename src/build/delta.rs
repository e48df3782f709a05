//! Nodes as copy-on-write images over the base: the same edits as [`node`](super::node) makes on a
//! full copy, but only the blocks they touch are stored, so a release of many nodes reads,
//! hashes and compresses only what each node changed (see `dist`).
//!
//! Boot partition and partition table edits go through a [`CowImage`] directly. The root
//! filesystem is edited by libext2fs, which needs a file: the first node with a given set of
//! root filesystem edits makes them in a full copy of the base, whose blocks that differ from
//! the base become a shared layer; every later node with the same edits sits on that layer.
//! The edits are reproducible, so that node's root filesystem is byte for byte what a full
//! build of it would have.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::base::BaseImage;
use super::node::{self, NodeInputs};
use super::overlay::OverlayEntry;
use super::{BuildError, BuildOptions, Result};
use crate::image::blockmap::{FsAllocation, ext4_allocation};
use crate::image::bootfs::{BootFs, FatTimestamp};
use crate::image::cow::{COW_BLOCK, CowImage};
use crate::image::partview::PartitionView;
use crate::image::{self, PendingOutput};
use crate::io::AtPath;
use crate::plan::RootfsFile;
use crate::plan::release::Release;
use crate::profile::{Node, Profile, Target};

/// Bytes compared at a time when finding what root filesystem edits changed.
const COMPARE_BUF: usize = 4 << 20;

/// One node's image as the base plus its changes.
#[derive(Debug)]
pub struct NodeDelta {
    /// The node.
    pub node: String,
    /// The image: equal to what `build --node` writes.
    pub image: CowImage,
    /// The boot target.
    pub target: Target,
    /// The release of the base.
    pub release: Release,
    /// Where its root partition starts.
    pub root_start: u64,
    /// What its root filesystem uses (for its block map: libext2fs reads files, not layers).
    pub root_allocation: Arc<Option<FsAllocation>>,
}

/// A root filesystem several nodes share: the base's, or a layer of edits over it.
#[derive(Clone)]
struct Rootfs {
    layer: Option<Arc<CowImage>>,
    allocation: Arc<Option<FsAllocation>>,
}

/// What a node writes into its root filesystem; nodes with equal recipes get equal root
/// filesystems.
#[derive(PartialEq)]
struct RootfsRecipe {
    overlays: Vec<OverlayEntry>,
    files: Vec<RootfsFile>,
}

/// Build `nodes` of `profile` as copy-on-write images over the base, handing each to `each` in
/// order; nothing is written to `opts.out_dir` but temp files (removed again). Every node's
/// inputs are loaded and checked before the first one is built, as for [`super::build_nodes`].
pub fn build_node_deltas<E: From<BuildError>>(
    profile: &Profile,
    nodes: &[&Node],
    opts: &BuildOptions,
    each: &mut dyn FnMut(NodeDelta) -> Result<(), E>,
) -> Result<(), E> {
    let (inputs, base) = super::prepare(profile, nodes, opts)?;
    let root = &base.root;
    let allocation = ext4_allocation(base.raw_path(), root.start, root.len)
        .map_err(|e| BuildError::RootAllocation(Box::new(e)))?;
    let stock = Rootfs {
        layer: None,
        allocation: Arc::new(allocation),
    };
    let mut layers: Vec<(RootfsRecipe, Rootfs)> = Vec::new();
    for (node, inputs) in nodes.iter().zip(&inputs) {
        let delta = node_delta(profile, node, inputs, opts, &base, &stock, &mut layers)?;
        each(delta)?;
    }
    Ok(())
}

/// One node's image: its boot partition and partition table edits over its root filesystem
/// layer (made now if no earlier node had the same root filesystem edits).
fn node_delta(
    profile: &Profile,
    node: &Node,
    inputs: &NodeInputs,
    opts: &BuildOptions,
    base: &BaseImage,
    stock: &Rootfs,
    layers: &mut Vec<(RootfsRecipe, Rootfs)>,
) -> Result<NodeDelta> {
    let node_plan = node::plan(profile, node, inputs, base)?;
    let temp_dir = &opts.out_dir;
    let rootfs = if node::has_rootfs_edits(inputs, &node_plan) {
        let recipe = RootfsRecipe {
            overlays: inputs.overlays.rootfs.clone(),
            files: node_plan.rootfs_files.clone(),
        };
        match layers.iter().find(|(r, _)| *r == recipe) {
            Some((_, rootfs)) => rootfs.clone(),
            None => {
                let rootfs = rootfs_layer(node, inputs, opts, base, &node_plan)?;
                layers.push((recipe, rootfs.clone()));
                rootfs
            }
        }
    } else {
        stock.clone()
    };
    let mut image = match &rootfs.layer {
        Some(layer) => CowImage::over(Arc::clone(layer), temp_dir).at(temp_dir)?,
        None => CowImage::new(base.raw_path(), temp_dir).at(base.raw_path())?,
    };
    let boot = &base.boot;
    let fs = BootFs::open(
        PartitionView::new(&mut image, boot.start, boot.len).at(&base.name)?,
        FatTimestamp::from_unix(opts.epoch),
    )?;
    node::write_boot(fs, &node_plan, inputs)?;
    let size = image.len();
    node::write_partition_table(&mut image, &base.name, profile, node, &node_plan, size)?;
    Ok(NodeDelta {
        node: node.name.clone(),
        image,
        target: node.target,
        release: base.release,
        root_start: base.root.start,
        root_allocation: rootfs.allocation,
    })
}

/// The root filesystem edits of `node` as a layer over the base: made in a full copy of the
/// base (a reflink, or its data extents copied in the kernel) (libext2fs edits a file), then the root partition's blocks that differ from the
/// base copied into the layer, and its allocation read; the copy is removed.
fn rootfs_layer(
    node: &Node,
    inputs: &NodeInputs,
    opts: &BuildOptions,
    base: &BaseImage,
    node_plan: &crate::plan::NodePlan,
) -> Result<Rootfs> {
    let mut scratch = PendingOutput::create(&opts.out_dir.join(format!("{}.rootfs", node.name)))?;
    let temp = scratch.temp_path().to_owned();
    let src = File::open(base.raw_path()).at(base.raw_path())?;
    image::copy_file(&src, scratch.file(), &base.data).at(&temp)?;
    node::edit_rootfs(&temp, base, node, inputs, node_plan, opts.epoch)?;

    let mut layer = CowImage::new(base.raw_path(), &opts.out_dir).at(&opts.out_dir)?;
    let edited = scratch.file();
    let (mut old, mut new) = (vec![0u8; COMPARE_BUF], vec![0u8; COMPARE_BUF]);
    let root = &base.root;
    let mut pos = root.start;
    while pos < root.end() {
        let n = usize::try_from(root.end() - pos)
            .unwrap_or(COMPARE_BUF)
            .min(COMPARE_BUF);
        src.read_exact_at(&mut old[..n], pos).at(base.raw_path())?;
        edited.read_exact_at(&mut new[..n], pos).at(&temp)?;
        let step = COW_BLOCK as usize;
        for (i, (a, b)) in old[..n].chunks(step).zip(new[..n].chunks(step)).enumerate() {
            if a != b {
                layer
                    .seek(SeekFrom::Start(pos + (i * step) as u64))
                    .and_then(|_| layer.write_all(b))
                    .at(&opts.out_dir)?;
            }
        }
        pos += n as u64;
    }
    let allocation = ext4_allocation(&temp, root.start, root.len)
        .map_err(|e| BuildError::RootAllocation(Box::new(e)))?;
    // Dropping the scratch copy removes it.
    drop(scratch);
    Ok(Rootfs {
        layer: Some(Arc::new(layer)),
        allocation: Arc::new(allocation),
    })
}
