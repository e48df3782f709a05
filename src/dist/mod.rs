//! Release artifacts: `pi-image build --compress` writes, per node, `<node>.img.<ext>` and its
//! block map `<node>.img.bmap` (bmaptool's format) into the output directory, plus for the set
//! `SHA256SUMS` (Ubuntu's format, `<sha256> *<file>`, covering both) and `os_list.json` (a
//! Raspberry Pi Imager custom repository). `--shard K/N` builds every N-th node.
//!
//! Each node's image is built as a copy-on-write layer over the base ([`build::delta`]), never
//! as a full raw copy: its chunks that equal the base's take their digests from the first node
//! (see [`layout`]), and only chunks missing from the [`chunks`] store are compressed. The
//! index files are rewritten with every node's files and keep the entries of artifacts built by
//! earlier runs (other shards) whose files are still in the directory, so shards run one after
//! another into one directory end with a complete index, and a run that fails or is killed
//! leaves a directory that still checks.

pub mod chunks;
pub mod index;
pub mod layout;
pub mod nodeindex;
pub mod reader;
pub mod shared;

pub use self::index::{Index, OS_LIST, OsEntry, SHA256SUMS};

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::Digest;

use self::chunks::{CHUNK_SIZE, ChunkError, ChunkStore, Compressed};
use self::layout::BaseDigests;
use crate::build::delta::NodeDelta;
use crate::build::{self, BuildError, BuildOptions};
use crate::image::blockmap::BlockMap;
use crate::image::blockmap::BlockMapError;
use crate::image::cow::COW_BLOCK;
use crate::image::{PendingOutput, bmap};
use crate::io::calendar::UtcDateTime;
use crate::io::{AtPath, PathError};
use crate::plan::release::Release;
use crate::profile::{Node, Profile, Target};

/// Errors making release artifacts.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A node's raw image could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A raw image could not be compressed into chunks.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// A raw image's block map could not be made.
    #[error(transparent)]
    BlockMap(#[from] BlockMapError),
    /// I/O on a named file failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// An index file could not be written or moved into place.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// An existing index file is not what pi-image writes.
    #[error("{}: {reason} (remove it to start a new index)", path.display())]
    Index {
        /// The file.
        path: PathBuf,
        /// What is wrong and what was expected.
        reason: String,
    },
}

/// `--shard K/N`: this run builds nodes K, K+N, K+2N, ... of the profile (1-based, file order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// K, from 1 to `count`.
    pub index: usize,
    /// N, at least 1.
    pub count: usize,
}

/// A `--shard` value that is not `K/N` with 1 ≤ K ≤ N.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a shard (expected K/N with 1 <= K <= N, e.g. 2/4)")]
pub struct ShardError(String);

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let expected = || ShardError(s.to_string());
        let number = |t: &str| {
            // Digits only, no sign, no leading zero: "2/4" and nothing that merely parses as it.
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) || t.starts_with('0') {
                return None;
            }
            t.parse::<usize>().ok()
        };
        let (k, n) = s.split_once('/').ok_or_else(expected)?;
        match (number(k), number(n)) {
            (Some(index), Some(count)) if index <= count => Ok(Shard { index, count }),
            _ => Err(expected()),
        }
    }
}

impl Shard {
    /// The items this shard takes: positions K-1, K-1+N, ... of `items`.
    pub fn select<'a, T>(&self, items: &[&'a T]) -> Vec<&'a T> {
        items
            .iter()
            .skip(self.index - 1)
            .step_by(self.count)
            .copied()
            .collect()
    }
}

/// One node's compressed image in the output directory.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The node.
    pub node: String,
    /// The compressed file and its sizes and hashes.
    pub compressed: Compressed,
    /// The block map, `<node>.img.bmap`.
    pub bmap: PathBuf,
    /// Its sha256, hex.
    pub bmap_sha256: String,
    /// Wall time this node took: building, compressing and mapping it (the first node's also
    /// includes reading the base and the overlays).
    pub elapsed: std::time::Duration,
    /// The boot target.
    pub target: Target,
    /// The release of the base.
    pub release: Release,
}

/// Build `nodes` of `profile` and compress each into `<out>/<node>.img.<ext>` with the chunks of
/// `store` (missing ones compressed on `jobs` threads), calling `report` after each node. Each
/// node's image and block map are put in place together with their `SHA256SUMS` and
/// `os_list.json` entries ([`Index::replace`]), so the directory checks after every node, and
/// at every moment in between, whatever stops the run.
pub fn build_artifacts(
    profile: &Profile,
    nodes: &[&Node],
    opts: &BuildOptions,
    store: &ChunkStore,
    jobs: usize,
    report: &mut dyn FnMut(&Artifact),
) -> Result<Vec<Artifact>, DistError> {
    // A broken index in the output directory fails now, not after every node was compressed.
    let mut index = Index::read(&opts.out_dir)?;
    let ext = store.compression().codec.extension();
    let mut artifacts = Vec::new();
    let mut since = std::time::Instant::now();
    let mut base_digests = BaseDigests::default();
    let mut bmap_sums = bmap::SharedSums::default();
    build::delta::build_node_deltas::<DistError>(profile, nodes, opts, &mut |delta| {
        let name = opts.out_dir.join(format!("{}.img", delta.node));
        let changed = delta.image.changed_blocks().at(&name)?;
        bmap_sums.next_image(changed.clone(), COW_BLOCK);
        let cells = layout::cells(delta.image.len(), &changed, &[CHUNK_SIZE]);
        let keys = base_digests.digests(&delta.image, &name, &cells, jobs)?;
        let out = opts.out_dir.join(format!("{}.img.{ext}", delta.node));
        let bmap = opts.out_dir.join(format!("{}.img.bmap", delta.node));
        // The block map's checksums read the image while the compressed file is assembled.
        let (compressed, mapped) = std::thread::scope(|s| {
            let mapped = s.spawn(|| bmap_file(&delta, &name, &bmap, &mut bmap_sums));
            let compressed =
                chunks::compress_image(&delta.image, &name, &cells, &keys, &out, store, jobs);
            let mapped = mapped.join().unwrap_or_else(|_| {
                Err(PathError::new(
                    &bmap,
                    std::io::Error::other("the block map thread panicked"),
                )
                .into())
            });
            (compressed, mapped)
        });
        let ((compressed, image_file), (bmap_file, bmap_sha256)) = (compressed?, mapped?);
        let artifact = Artifact {
            node: delta.node,
            compressed,
            bmap,
            bmap_sha256,
            elapsed: since.elapsed(),
            target: delta.target,
            release: delta.release,
        };
        index.replace(
            &opts.out_dir,
            vec![
                (image_file, artifact.compressed.sha256.clone()),
                (bmap_file, artifact.bmap_sha256.clone()),
            ],
            Some(os_entry(profile, &artifact, opts.epoch)),
        )?;
        report(&artifact);
        artifacts.push(artifact);
        since = std::time::Instant::now();
        Ok(())
    })?;
    // Also when no node was built: entries of files gone from the directory are dropped.
    index.write(&opts.out_dir)?;
    Ok(artifacts)
}

/// The block map of the node's image (named `name` in errors) in a temp file for `out`, and
/// its sha256; the checksums of ranges unchanged from the base come from `shared`.
fn bmap_file(
    delta: &NodeDelta,
    name: &Path,
    out: &Path,
    shared: &mut bmap::SharedSums,
) -> Result<(PendingOutput, String), DistError> {
    let allocation = &delta.root_allocation;
    let len = delta.image.len();
    let map = BlockMap::of_layers(&mut delta.image.cursor(), name, len, &|p| {
        Ok((p.start == delta.root_start)
            .then(|| (**allocation).clone())
            .flatten())
    })?;
    // A .bmap is a few KiB of XML: hashed in memory, then written in one go.
    let mut text = Vec::new();
    bmap::write_shared(&map, &mut delta.image.cursor(), name, &mut text, shared)?;
    let file = index::pending_with(out, &text)?;
    Ok((file, crate::io::hex(&sha2::Sha256::digest(&text))))
}

/// The `os_list.json` entry for `a`.
fn os_entry(profile: &Profile, a: &Artifact, epoch: i64) -> OsEntry {
    let c = &a.compressed;
    let mut description = a.node.clone();
    if let Some(node) = profile.node(&a.node) {
        description = node.fqdn();
        if let Some(cidr) = node.cidr() {
            description.push_str(&format!(" {cidr}"));
        }
    }
    description.push_str(&format!(
        ", boots from {}; {}; cluster {}",
        match a.target {
            Target::Sd => "SD card",
            Target::Ssd => "USB SSD",
        },
        a.release,
        profile.cluster
    ));
    OsEntry {
        name: format!("{} {}", profile.cluster, a.node),
        description,
        url: file_name(&c.path),
        extract_size: c.raw_size,
        extract_sha256: c.raw_sha256.clone(),
        image_download_size: c.size,
        image_download_sha256: c.sha256.clone(),
        release_date: {
            let d = UtcDateTime::from_unix(epoch);
            format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
        },
        icon: index::ICON.to_string(),
        devices: index::device_tags(a.target),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_strictly() {
        assert_eq!("2/4".parse(), Ok(Shard { index: 2, count: 4 }));
        assert_eq!("1/1".parse(), Ok(Shard { index: 1, count: 1 }));
        for bad in [
            "0/4", "5/4", "2/0", "2", "/4", "2/", "02/4", "+2/4", "2 /4", "a/b", "2/4/1", "",
        ] {
            let err = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(err.contains("expected K/N"), "{bad}: {err}");
        }
    }

    #[test]
    fn shards_cover_every_item_once() {
        let items: Vec<usize> = (0..7).collect();
        let refs: Vec<&usize> = items.iter().collect();
        let mut seen = Vec::new();
        for k in 1..=3 {
            seen.extend(
                Shard { index: k, count: 3 }
                    .select(&refs)
                    .into_iter()
                    .copied(),
            );
        }
        seen.sort();
        assert_eq!(seen, items);
        assert_eq!(Shard { index: 2, count: 3 }.select(&refs), vec![&1, &4]);
    }
}
