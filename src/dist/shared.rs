//! Shared-chunk releases (`build --chunked`): for clusters of hundreds of nodes, where one
//! compressed image per node would repeat the same gigabytes hundreds of times. The release
//! directory holds one content-addressed chunk store, `chunks/<sha256 of the raw bytes>.<ext>`
//! (each chunk compressed once, an xz stream / zstd frame / gzip member), and per node a small
//! index `<node>.chunks.json` ([`nodeindex`](super::nodeindex)) listing its chunks, each index
//! listed with its sha256 in `SHA256SUMS`.
//!
//! Nodes are built as copy-on-write layers over the base ([`build::delta`]) and cut on the grid
//! of [`SHARED_LEVELS`]: what a node shares with the base falls into chunks every node shares
//! (hashed once, compressed once), what it changed into 64 KiB chunks of its own. A further
//! node costs its boot partition edits, hashing and compressing its few changed chunks and
//! writing its index, never a copy or a full hash of the image (unless `--image-sha256`).
//! [`reader`](super::reader) reads an image back out.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::DistError;
use super::chunks::{self, ChunkStore, Compression};
use super::index::{self, Index};
use super::layout::{self, BaseDigests, SHARED_LEVELS, sha256_range};
use super::nodeindex::{CHUNKS_DIR, ChunkRef, FORMAT, NodeIndex};
use crate::build::{self, BuildOptions};
use crate::io::{AtPath, PathError, hex};
use crate::plan::release::Release;
use crate::profile::{Node, Profile, Target};

/// How to write a shared-chunk release.
#[derive(Debug, Clone, Copy)]
pub struct SharedOptions {
    /// How every chunk is compressed.
    pub compression: Compression,
    /// Threads for hashing and compressing; the output does not depend on it.
    pub jobs: usize,
    /// Also hash every node's whole image into its index (a full read of each image).
    pub image_sha256: bool,
}

/// One node written into a shared-chunk release.
#[derive(Debug, Clone)]
pub struct SharedNode {
    /// The node.
    pub node: String,
    /// Its index file.
    pub index: PathBuf,
    /// The index file's length in bytes.
    pub index_size: u64,
    /// The index file's sha256, hex (as listed in `SHA256SUMS`).
    pub index_sha256: String,
    /// Its raw image's length in bytes.
    pub image_size: u64,
    /// Its raw image's sha256, with `--image-sha256`.
    pub image_sha256: Option<String>,
    /// How many chunks its image has.
    pub chunks: usize,
    /// How many of them this node added to the store.
    pub new_chunks: usize,
    /// Their compressed bytes.
    pub new_bytes: u64,
    /// Wall time this node took (the first node's includes reading the base and overlays).
    pub elapsed: Duration,
    /// The boot target.
    pub target: Target,
    /// The release of the base.
    pub release: Release,
}

/// Write `nodes` of `profile` into the shared-chunk release in `opts.out_dir`, calling `report`
/// after each node. Each node's index is put in place together with its `SHA256SUMS` line
/// ([`Index::replace`], keeping the lines of earlier runs' files that are still there), after
/// its chunks, so the directory checks at every moment. Chunks already in the store are
/// checked (decompressed and hashed) once before they are reused; a chunk that is not what its
/// name says is written again.
pub fn build_shared_release(
    profile: &Profile,
    nodes: &[&Node],
    opts: &BuildOptions,
    shared: &SharedOptions,
    report: &mut dyn FnMut(&SharedNode),
) -> Result<Vec<SharedNode>, DistError> {
    // A broken SHA256SUMS fails now, not after every node was written.
    let mut sums = Index::read(&opts.out_dir)?;
    let store = ChunkStore::in_dir(&opts.out_dir.join(CHUNKS_DIR), shared.compression)?;
    let mut base_digests = BaseDigests::default();
    let mut written = Vec::new();
    let mut since = Instant::now();
    build::delta::build_node_deltas::<DistError>(profile, nodes, opts, &mut |delta| {
        let name = opts.out_dir.join(format!("{}.img", delta.node));
        let image = &delta.image;
        let changed = image.changed_blocks().at(&name)?;
        let cells = layout::cells(image.len(), &changed, &SHARED_LEVELS);
        let keys = base_digests.digests(image, &name, &cells, shared.jobs)?;
        let stored = chunks::store_cells(image, &name, &cells, &keys, &store, shared.jobs)?;
        let image_sha256 = match shared.image_sha256 {
            true => Some(sha256_range(image, 0, image.len()).at(&name)?),
            false => None,
        };
        let mut refs = Vec::with_capacity(cells.len());
        for (c, key) in cells.iter().zip(&keys) {
            let file = store.stored(key).ok_or_else(|| {
                PathError::new(
                    &store.path(key),
                    std::io::Error::other("a chunk was not stored"),
                )
            })?;
            refs.push(ChunkRef {
                offset: c.offset,
                length: c.len,
                sha256: key.clone(),
                stored_length: file.len,
                stored_sha256: file.sha256,
            });
        }
        let index = NodeIndex {
            format: FORMAT.into(),
            node: delta.node.clone(),
            compression: shared.compression.codec.name().into(),
            image_size: image.len(),
            image_sha256: image_sha256.clone(),
            chunks: refs,
        };
        let index_path = opts.out_dir.join(NodeIndex::file_name(&delta.node));
        let json = index.to_json();
        let index_sha256 = hex(&Sha256::digest(json.as_bytes()));
        let pending = index::pending_with(&index_path, json.as_bytes())?;
        sums.replace(&opts.out_dir, vec![(pending, index_sha256.clone())], None)?;
        let node = SharedNode {
            node: delta.node,
            index: index_path,
            index_size: json.len() as u64,
            index_sha256,
            image_size: image.len(),
            image_sha256,
            chunks: cells.len(),
            new_chunks: stored.compressed,
            new_bytes: stored.bytes,
            elapsed: since.elapsed(),
            target: delta.target,
            release: delta.release,
        };
        report(&node);
        written.push(node);
        since = Instant::now();
        Ok(())
    })?;
    // Also when no node was built: lines of files gone from the directory are dropped.
    sums.write(&opts.out_dir)?;
    Ok(written)
}
