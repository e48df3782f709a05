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

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::DistError;
use super::chunks::{self, ChunkStore, Compression};
use super::index::{self, write_atomic};
use super::layout::{self, BaseDigests, SHARED_LEVELS, sha256_range};
use super::nodeindex::{CHUNKS_DIR, ChunkRef, FORMAT, NodeIndex};
use crate::build::{self, BuildOptions};
use crate::io::{AtPath, hex};
use crate::profile::{Node, Profile};

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
}

/// Write `nodes` of `profile` into the shared-chunk release in `opts.out_dir`, calling `report`
/// after each node; then rewrite `SHA256SUMS` (keeping the lines of earlier runs' files that
/// are still there). Chunks already in the store are checked (decompressed and hashed) once
/// before they are reused; a chunk that is not what its name says is written again.
pub fn build_shared_release(
    profile: &Profile,
    nodes: &[&Node],
    opts: &BuildOptions,
    shared: &SharedOptions,
    report: &mut dyn FnMut(&SharedNode),
) -> Result<Vec<SharedNode>, DistError> {
    // A broken SHA256SUMS fails now, not after every node was written.
    index::check_existing(&opts.out_dir)?;
    let store = ChunkStore::in_dir(&opts.out_dir.join(CHUNKS_DIR), shared.compression)?;
    let mut base_digests = BaseDigests::default();
    // Chunk files checked or written by this run: raw sha256 → (file length, file sha256).
    let mut files: HashMap<String, (u64, String)> = HashMap::new();
    let mut written = Vec::new();
    let mut since = Instant::now();
    build::delta::build_node_deltas::<DistError>(profile, nodes, opts, &mut |delta| {
        let name = opts.out_dir.join(format!("{}.img", delta.node));
        let image = &delta.image;
        let changed = image.changed_blocks().at(&name)?;
        let cells = layout::cells(image.len(), &changed, &SHARED_LEVELS);
        let keys = base_digests.digests(image, &name, &cells, shared.jobs)?;
        let unknown: Vec<&String> = keys
            .iter()
            .filter(|k| !files.contains_key(*k))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut new = Vec::new();
        for key in &unknown {
            let path = store.path(key);
            if !path.is_file() {
                new.push(*key);
            } else if !store.holds(key)? {
                std::fs::remove_file(&path).at(&path)?;
                new.push(*key);
            }
        }
        chunks::store_cells(image, &name, &cells, &keys, &store, shared.jobs)?;
        for key in unknown {
            files.insert(key.clone(), store.file_digest(key)?);
        }
        let image_sha256 = match shared.image_sha256 {
            true => Some(sha256_range(image, 0, image.len()).at(&name)?),
            false => None,
        };
        let index = NodeIndex {
            format: FORMAT.into(),
            node: delta.node.clone(),
            compression: shared.compression.codec.name().into(),
            image_size: image.len(),
            image_sha256: image_sha256.clone(),
            chunks: cells
                .iter()
                .zip(&keys)
                .map(|(c, key)| {
                    let (stored_length, stored_sha256) = files[key].clone();
                    ChunkRef {
                        offset: c.offset,
                        length: c.len,
                        sha256: key.clone(),
                        stored_length,
                        stored_sha256,
                    }
                })
                .collect(),
        };
        let index_path = opts.out_dir.join(NodeIndex::file_name(&delta.node));
        let json = index.to_json();
        write_atomic(&index_path, json.as_bytes())?;
        let node = SharedNode {
            node: delta.node,
            index: index_path,
            image_size: image.len(),
            image_sha256,
            chunks: cells.len(),
            new_chunks: new.len(),
            new_bytes: new.iter().map(|k| files[*k].0).sum(),
            elapsed: since.elapsed(),
        };
        report(&node);
        written.push((
            node,
            hex(&<sha2::Sha256 as sha2::Digest>::digest(json.as_bytes())),
        ));
        since = Instant::now();
        Ok(())
    })?;
    let sums: Vec<(String, String)> = written
        .iter()
        .map(|(n, sha)| (NodeIndex::file_name(&n.node), sha.clone()))
        .collect();
    index::write_sums(&opts.out_dir, &sums)?;
    Ok(written.into_iter().map(|(n, _)| n).collect())
}
