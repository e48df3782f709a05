//! Reading one node's image back out of a shared-chunk release: the node's index, checked against
//! the release's `SHA256SUMS` and for soundness, then its chunks in order, each checked before a
//! byte of it is passed on (the chunk file's sha256 before it is decompressed, its raw bytes'
//! sha256 and length after), and the whole image's sha256 at the end when the index has one.
//! `flash --release` and `extract` stream images through [`ReleaseReader`].

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::index::SHA256SUMS;
use super::nodeindex::{ChunkRef, MAX_INDEX_BYTES, NodeIndex};
use crate::image;
use crate::io::{AtPath, PathError, hex, sums};

/// The largest `SHA256SUMS` read (a release of 10,000 nodes lists about 1 MB).
const MAX_SUMS_BYTES: u64 = 64 << 20;

/// Why a release cannot give a node's image.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// I/O on a named file failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The index is not sound.
    #[error(transparent)]
    Index(#[from] super::nodeindex::IndexError),
    /// The release refuses to give this node's image.
    #[error("{}: {reason}", path.display())]
    Refused {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong and what was expected.
        reason: String,
    },
}

/// One node's image in a release directory, its index read and checked.
#[derive(Debug, Clone)]
pub struct ReleaseImage {
    dir: PathBuf,
    index_path: PathBuf,
    index: Arc<NodeIndex>,
}

impl ReleaseImage {
    /// Open node `node`'s image in the release directory `dir`: its index must be listed in
    /// `SHA256SUMS` with its sha256, and sound.
    pub fn open(dir: &Path, node: &str) -> Result<ReleaseImage, ReleaseError> {
        let file_name = NodeIndex::file_name(node);
        let index_path = dir.join(&file_name);
        let refused = |path: &Path, reason: String| ReleaseError::Refused {
            path: path.to_owned(),
            reason,
        };
        // A node name never holds a path: "--node ../x" does not leave the directory.
        if node.is_empty() || node.contains(['/', '\0']) || node.starts_with('.') {
            return Err(refused(dir, format!("'{node}' is not a node name")));
        }
        let bytes = match read_bounded(&index_path, MAX_INDEX_BYTES)? {
            Some(b) => b,
            None => {
                return Err(refused(
                    &index_path,
                    format!(
                        "no such file: the release has no node '{node}' (expected {file_name} beside SHA256SUMS)"
                    ),
                ));
            }
        };
        let sums_path = dir.join(SHA256SUMS);
        let sums_bytes = read_bounded(&sums_path, MAX_SUMS_BYTES)?.ok_or_else(|| {
            refused(
                &sums_path,
                "no such file (a release lists the sha256 of every node's index there)".into(),
            )
        })?;
        let listed = sums::parse(&sums_bytes)
            .map_err(|e| refused(&sums_path, e.to_string()))?
            .into_iter()
            .find(|(name, _)| *name == file_name)
            .map(|(_, sha)| sha)
            .ok_or_else(|| refused(&sums_path, format!("does not list {file_name}")))?;
        let actual = hex(&Sha256::digest(&bytes));
        if actual != listed {
            return Err(refused(
                &index_path,
                format!(
                    "its sha256 is {actual}, but SHA256SUMS says {listed} (the index was changed or is corrupt)"
                ),
            ));
        }
        let text =
            String::from_utf8(bytes).map_err(|_| refused(&index_path, "not UTF-8 text".into()))?;
        let index = NodeIndex::parse(&text, &index_path)?;
        if index.node != node {
            return Err(refused(
                &index_path,
                format!("is the index of node '{}', not '{node}'", index.node),
            ));
        }
        Ok(ReleaseImage {
            dir: dir.to_owned(),
            index_path,
            index: Arc::new(index),
        })
    }

    /// The index file.
    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    /// The index.
    pub fn index(&self) -> &NodeIndex {
        &self.index
    }

    /// The raw image's length in bytes.
    pub fn size(&self) -> u64 {
        self.index.image_size
    }

    /// The raw image as a stream, every chunk checked before it is passed on.
    pub fn reader(&self) -> ReleaseReader {
        ReleaseReader {
            image: self.clone(),
            next: 0,
            buf: Vec::new(),
            at: 0,
            whole: Sha256::new(),
            finished: false,
        }
    }
}

/// Read `path` whole if it is a regular file of at most `limit` bytes; `None` if it does not
/// exist.
fn read_bounded(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, ReleaseError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PathError::new(path, e).into()),
    };
    if !meta.is_file() || meta.len() > limit {
        return Err(ReleaseError::Refused {
            path: path.to_owned(),
            reason: format!("not a regular file of at most {limit} bytes"),
        });
    }
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .at(path)?;
    Ok(Some(bytes))
}

/// A node's raw image read from its chunks.
#[derive(Debug)]
pub struct ReleaseReader {
    image: ReleaseImage,
    /// The next chunk to load.
    next: usize,
    /// The current chunk's raw bytes, checked.
    buf: Vec<u8>,
    /// How much of `buf` was passed on.
    at: usize,
    /// The sha256 of everything passed on.
    whole: Sha256,
    /// Every chunk was passed on and the whole image checked.
    finished: bool,
}

impl ReleaseReader {
    /// Load chunk `i`: read its file (at most the length the index gives), check its sha256,
    /// decompress it (at most its raw length plus one byte), check length and raw sha256.
    fn load(&mut self, i: usize) -> io::Result<()> {
        let index = &self.image.index;
        let chunk: &ChunkRef = &index.chunks[i];
        let path = self.image.dir.join(index.chunk_path(chunk));
        let bad = |reason: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {reason} (chunk {i} of {}, bytes {}..{} of node {})",
                    path.display(),
                    self.image.index_path.display(),
                    chunk.offset,
                    chunk.offset + chunk.length,
                    index.node
                ),
            )
        };
        let meta = fs::metadata(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => bad("missing: the release lacks this chunk".into()),
            _ => bad(e.to_string()),
        })?;
        if !meta.is_file() || meta.len() != chunk.stored_length {
            return Err(bad(format!(
                "{} bytes{}, the index says {}",
                meta.len(),
                if meta.is_file() {
                    ""
                } else {
                    " and not a regular file"
                },
                chunk.stored_length
            )));
        }
        let mut stored = Vec::new();
        File::open(&path)
            .and_then(|f| f.take(chunk.stored_length + 1).read_to_end(&mut stored))
            .map_err(|e| bad(e.to_string()))?;
        let stored_sha = hex(&Sha256::digest(&stored));
        if stored.len() as u64 != chunk.stored_length || stored_sha != chunk.stored_sha256 {
            return Err(bad(format!(
                "its sha256 is {stored_sha}, the index says {} (the chunk is corrupt)",
                chunk.stored_sha256
            )));
        }
        self.buf.clear();
        let format = index.codec().format();
        image::decoder(format, io::Cursor::new(stored))
            .take(chunk.length + 1)
            .read_to_end(&mut self.buf)
            .map_err(|e| bad(format!("cannot decompress: {e}")))?;
        let raw_sha = hex(&Sha256::digest(&self.buf));
        if self.buf.len() as u64 != chunk.length || raw_sha != chunk.sha256 {
            return Err(bad(format!(
                "decompresses to {} bytes with sha256 {raw_sha}, the index says {} bytes with sha256 {}",
                self.buf.len(),
                chunk.length,
                chunk.sha256
            )));
        }
        self.at = 0;
        Ok(())
    }

    /// After the last chunk: the whole image's sha256, when the index has it.
    fn finish(&self) -> io::Result<()> {
        let Some(expected) = &self.image.index.image_sha256 else {
            return Ok(());
        };
        let actual = hex(&self.whole.clone().finalize());
        if actual != *expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: the image's sha256 is {actual}, the index says {expected}",
                    self.image.index_path.display()
                ),
            ));
        }
        Ok(())
    }
}

impl Read for ReleaseReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.buf.len() {
            if self.finished {
                return Ok(0);
            }
            if self.next == self.image.index.chunks.len() {
                self.finish()?;
                self.finished = true;
                return Ok(0);
            }
            self.load(self.next)?;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.whole.update(&out[..n]);
        self.at += n;
        Ok(n)
    }
}
