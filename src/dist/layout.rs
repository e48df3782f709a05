//! Where a node's image is cut into chunks, and the chunks' digests.
//!
//! The image is cut on a grid of the largest cell size, from byte 0. A cell whose bytes equal
//! the base image's is a chunk as it is; a cell that differs is cut into cells of the next size
//! down, and so on to the smallest size, where a differing cell is a chunk of its own. The grid
//! depends only on the node's bytes and the base's, so every node of a release cuts the bytes it
//! shares with the base at the same places, and those chunks (and their digests, computed once
//! from the base) are shared. The per-node `.img.xz` uses one size ([`chunks::CHUNK_SIZE`]): a
//! differing 32 MiB chunk is recompressed whole. The shared-chunk release uses [`SHARED_LEVELS`].
//!
//! [`chunks::CHUNK_SIZE`]: super::chunks::CHUNK_SIZE

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use super::chunks::ChunkError;
use crate::image::cow::{COW_BLOCK, CowImage};
use crate::io::{AtPath, PathError, hex};

/// The cell sizes of the shared-chunk release: 32 MiB, then 1 MiB, then 64 KiB. A node's
/// boot files change a few 64 KiB cells, which is all each further node adds to the release.
pub const SHARED_LEVELS: [u64; 3] = [32 << 20, 1 << 20, 64 << 10];

/// One chunk of a node's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Its first byte in the image.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Whether its bytes differ from the base's (or reach past the base's end).
    pub changed: bool,
}

/// Cut an image of `len` bytes into cells on the grid of `levels` (largest first), where
/// `changed` lists the [`COW_BLOCK`] blocks that differ from the base, sorted.
pub fn cells(len: u64, changed: &[u64], levels: &[u64]) -> Vec<Cell> {
    let mut out = Vec::new();
    cut(0, len, changed, levels, &mut out);
    // An empty image is one empty chunk, so that it still has a (valid, empty) compressed form.
    if out.is_empty() {
        out.push(Cell {
            offset: 0,
            len: 0,
            changed: false,
        });
    }
    out
}

fn cut(start: u64, end: u64, changed: &[u64], levels: &[u64], out: &mut Vec<Cell>) {
    let Some((&size, smaller)) = levels.split_first() else {
        return;
    };
    let mut offset = start;
    while offset < end {
        let cell_end = (offset + size).min(end);
        // The first changed block ending after the cell's start: does it start before its end?
        let i = changed.partition_point(|&b| (b + 1) * COW_BLOCK <= offset);
        let differs = changed.get(i).is_some_and(|&b| b * COW_BLOCK < cell_end);
        if differs && !smaller.is_empty() {
            cut(offset, cell_end, changed, smaller, out);
        } else {
            out.push(Cell {
                offset,
                len: cell_end - offset,
                changed: differs,
            });
        }
        offset = cell_end;
    }
}

/// The sha256 of cells of the base image, by (offset, length): unchanged cells are hashed once
/// for all nodes of a run.
#[derive(Debug, Default)]
pub struct BaseDigests {
    known: HashMap<(u64, u64), String>,
}

impl BaseDigests {
    /// The sha256 (hex) of each of `cells` of `image` (named `name` in errors): unchanged
    /// cells from what is known of the base, the rest hashed on `jobs` threads.
    pub fn digests(
        &mut self,
        image: &CowImage,
        name: &Path,
        cells: &[Cell],
        jobs: usize,
    ) -> Result<Vec<String>, ChunkError> {
        let mut out: Vec<Option<String>> = cells
            .iter()
            .map(|c| match c.changed {
                false => self.known.get(&(c.offset, c.len)).cloned(),
                true => None,
            })
            .collect();
        let todo: Vec<usize> = (0..cells.len()).filter(|&i| out[i].is_none()).collect();
        let hashed = hash_cells(image, name, cells, &todo, jobs)?;
        for (i, digest) in todo.into_iter().zip(hashed) {
            let c = &cells[i];
            if !c.changed {
                self.known.insert((c.offset, c.len), digest.clone());
            }
            out[i] = Some(digest);
        }
        out.into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| PathError::new(name, io::Error::other("a chunk was not hashed")).into())
    }
}

/// The sha256 of `cells[i]` for each `i` in `todo`, in that order, on `jobs` threads.
fn hash_cells(
    image: &CowImage,
    name: &Path,
    cells: &[Cell],
    todo: &[usize],
    jobs: usize,
) -> Result<Vec<String>, ChunkError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; todo.len()]);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..jobs.clamp(1, todo.len().max(1)))
            .map(|_| {
                s.spawn(|| -> io::Result<()> {
                    while !failed.load(Ordering::Relaxed) {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = todo.get(k) else {
                            return Ok(());
                        };
                        let c = cells[i];
                        let digest = sha256_range(image, c.offset, c.len).inspect_err(|_| {
                            failed.store(true, Ordering::Relaxed);
                        })?;
                        if let Ok(mut r) = results.lock() {
                            r[k] = Some(digest);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(io::Error::other("a hashing thread panicked")))
        })
    })
    .at(name)?;
    let results = results
        .into_inner()
        .map_err(|_| PathError::new(name, io::Error::other("a hashing thread panicked")))?;
    results
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| PathError::new(name, io::Error::other("a chunk was not hashed")).into())
}

/// The sha256 (hex) of `len` bytes of `image` from `offset`.
pub fn sha256_range(image: &CowImage, offset: u64, len: u64) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut range = image.range(offset, len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = range.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;

    fn spans(cells: &[Cell]) -> Vec<(u64, u64, bool)> {
        cells.iter().map(|c| (c.offset, c.len, c.changed)).collect()
    }

    #[test]
    fn only_differing_cells_are_cut_finer() {
        // 70 MiB image; block 0 (MBR) and one block at 33 MiB + 200 KiB differ.
        let b = (33 * M + 200 * K) / COW_BLOCK;
        let cells = cells(70 * M, &[0, b], &SHARED_LEVELS);
        let s = spans(&cells);
        // First 32 MiB: 1 MiB cells, the first of them in 64 KiB cells.
        assert_eq!(s[0], (0, 64 * K, true));
        assert_eq!(s[1], (64 * K, 64 * K, false));
        assert_eq!(s[16], (M, M, false));
        assert!(s.contains(&(33 * M + 192 * K, 64 * K, true)));
        assert!(s.contains(&(64 * M, 6 * M, false)), "{s:?}");
        // The cells tile the image.
        let mut at = 0;
        for c in &cells {
            assert_eq!(c.offset, at);
            at += c.len;
        }
        assert_eq!(at, 70 * M);
        assert_eq!(cells.iter().filter(|c| c.changed).count(), 2);
        // One level: a differing 32 MiB cell stays whole.
        let one = spans(&super::cells(70 * M, &[b], &[32 * M]));
        assert_eq!(
            one,
            vec![
                (0, 32 * M, false),
                (32 * M, 32 * M, true),
                (64 * M, 6 * M, false)
            ]
        );
        assert_eq!(spans(&super::cells(0, &[], &[32 * M])), vec![(0, 0, false)]);
    }
}
