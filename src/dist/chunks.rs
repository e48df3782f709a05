//! Chunked compression of disk images, with a cache of compressed chunks.
//!
//! The raw image is cut into [`CHUNK_SIZE`] pieces, each compressed on its own: an xz stream, a
//! zstd frame or a gzip member. Concatenated, they form one valid `.xz`/`.zst`/`.gz` file that
//! `xz -d`, `zstd -d`, `gzip -d` and Raspberry Pi Imager read as a whole. Each compressed chunk is
//! kept in a [`ChunkStore`] keyed by the sha256 of its raw bytes, so nodes built from the same base
//! (which differ only in the few chunks their edits touched) share almost every chunk: the first
//! node costs one compression, each further node only its changed chunks.
//!
//! Output never depends on the number of threads: each chunk is compressed single-threaded with
//! fixed settings, and the file is assembled in chunk order.
//!
//! The store is a cache on disk, so a chunk in it is not trusted: the first time a run reuses a
//! chunk, it is decompressed and its raw sha256 (its file name) checked; a chunk that fails is
//! compressed again, with a warning. The sha256 of every chunk's compressed bytes, as compressed
//! or checked, is kept for the run, and each chunk is hashed again as it is copied into an
//! artifact, so an artifact always decompresses to the raw image whose sha256 it is published
//! with, even if a chunk file is replaced while the run uses it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::base::cache::Cleaned;
use crate::image::{Format, ImageError, PendingOutput};
use crate::io::{AtPath, FileRange, PathError, hex, sha256_hex, tempfiles};

/// Raw bytes per chunk: 32 MiB. Four times xz -6's 8 MiB dictionary, so a chunk boundary costs
/// little ratio (the size grows well under 2 % against one stream), while a node's few edits
/// (boot files, MBR, rootfs overlay blocks) touch only a handful of chunks to recompress.
pub const CHUNK_SIZE: u64 = 32 << 20;

/// Read buffer for hashing and copying.
const BUF: usize = 1 << 20;

/// Errors compressing an image or using the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// I/O on a named file failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// Reading a chunk of the image or writing its compressed form failed.
    #[error("compressing bytes {start}..{end} of {} into {}: {source}", image.display(), chunk.display())]
    Compress {
        /// The raw image.
        image: PathBuf,
        /// The chunk's first byte.
        start: u64,
        /// The byte after its last.
        end: u64,
        /// The chunk file being written.
        chunk: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A chunk file could not be written or moved into place.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A chunk file changed between being checked and being copied into the artifact.
    #[error(
        "{}: changed while this run was using it (another process writing the chunk store?); nothing was published",
        chunk.display()
    )]
    Changed {
        /// The chunk file.
        chunk: PathBuf,
    },
}

/// A compression format for release artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// `.xz`: liblzma, one stream per chunk, CRC64 check.
    Xz,
    /// `.zst`: libzstd, one frame per chunk, with content size and checksum.
    Zstd,
    /// `.gz`: deflate, one member per chunk, mtime 0 and no file name.
    Gzip,
}

impl Codec {
    /// The file name extension, without the dot: `xz`, `zst`, `gz`.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Xz => "xz",
            Codec::Zstd => "zst",
            Codec::Gzip => "gz",
        }
    }

    /// The name the CLI takes: `xz`, `zstd`, `gz`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Xz => "xz",
            Codec::Zstd => "zstd",
            Codec::Gzip => "gz",
        }
    }

    /// The level used when none is given: xz 6 (xz's default), zstd 19 (close to xz in size,
    /// decompresses much faster), gzip 6 (gzip's default).
    pub fn default_level(self) -> u32 {
        match self {
            Codec::Xz | Codec::Gzip => 6,
            Codec::Zstd => 19,
        }
    }

    /// The levels this codec accepts.
    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Codec::Xz => 0..=9,
            Codec::Zstd => 1..=19,
            Codec::Gzip => 1..=9,
        }
    }
}

/// A compression name or level that pi-image does not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    /// Not one of the formats.
    #[error("'{0}' is not a compression (expected xz, zstd or gz)")]
    Codec(String),
    /// A level outside the format's range.
    #[error("{level} is not a valid {} level (expected {} to {})", codec.name(), codec.levels().start(), codec.levels().end())]
    Level {
        /// The format.
        codec: Codec,
        /// The level given.
        level: u32,
    },
}

impl FromStr for Codec {
    type Err = CompressionError;

    fn from_str(s: &str) -> Result<Codec, CompressionError> {
        match s {
            "xz" => Ok(Codec::Xz),
            "zstd" | "zst" => Ok(Codec::Zstd),
            "gz" | "gzip" => Ok(Codec::Gzip),
            _ => Err(CompressionError::Codec(s.to_string())),
        }
    }
}

/// A codec with its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// The format.
    pub codec: Codec,
    /// The level, within [`Codec::levels`].
    pub level: u32,
}

impl Compression {
    /// `codec` at `level` (its default when `None`), checking the level's range.
    pub fn new(codec: Codec, level: Option<u32>) -> Result<Compression, CompressionError> {
        let level = level.unwrap_or(codec.default_level());
        if !codec.levels().contains(&level) {
            return Err(CompressionError::Level { codec, level });
        }
        Ok(Compression { codec, level })
    }

    /// Compress all of `src` into `dst` as one self-contained stream, frame or member.
    fn encode(self, src: &mut dyn Read, len: u64, dst: &mut dyn Write) -> io::Result<()> {
        match self.codec {
            Codec::Xz => {
                let stream = liblzma::stream::Stream::new_easy_encoder(
                    self.level,
                    liblzma::stream::Check::Crc64,
                )
                .map_err(io::Error::other)?;
                let mut enc = liblzma::write::XzEncoder::new_stream(dst, stream);
                io::copy(src, &mut enc)?;
                enc.finish()?;
            }
            Codec::Zstd => {
                // Levels are at most 19 (checked in `new`), so the cast cannot wrap.
                let mut enc = zstd::stream::write::Encoder::new(dst, self.level as i32)?;
                enc.include_checksum(true)?;
                enc.set_pledged_src_size(Some(len))?;
                io::copy(src, &mut enc)?;
                enc.finish()?;
            }
            Codec::Gzip => {
                let mut enc = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(dst, flate2::Compression::new(self.level));
                io::copy(src, &mut enc)?;
                enc.finish()?;
            }
        }
        Ok(())
    }
}

/// Compressed chunks on disk: `<cache>/chunks/<codec>-<level>/<sha256 of the raw chunk>.<ext>`.
/// Each file is written to a temp file, fsynced and renamed, so a chunk under its final name is
/// always complete; two runs writing the same chunk write the same bytes.
#[derive(Debug)]
pub struct ChunkStore {
    dir: PathBuf,
    compression: Compression,
    /// Chunks this run compressed or checked: raw sha256 (the key) → sha256 of the compressed
    /// file as it was then.
    trusted: Mutex<HashMap<String, String>>,
}

impl ChunkStore {
    /// The store for `compression` under the cache directory `cache_dir` (created if needed).
    pub fn open(cache_dir: &Path, compression: Compression) -> Result<ChunkStore, ChunkError> {
        let dir = Self::root(cache_dir).join(format!(
            "{}-{}",
            compression.codec.name(),
            compression.level
        ));
        fs::create_dir_all(&dir).at(&dir)?;
        tempfiles::sweep_stale(&dir).at(&dir)?;
        Ok(ChunkStore {
            dir,
            compression,
            trusted: Mutex::new(HashMap::new()),
        })
    }

    /// The compression of every chunk in this store.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Where every store lives under a cache directory.
    fn root(cache_dir: &Path) -> PathBuf {
        cache_dir.join("chunks")
    }

    /// Remove every store's chunks (and interrupted chunk writes) under `cache_dir`, counting
    /// them in `cleaned`: `pi-image cache clean`.
    pub fn clean(cache_dir: &Path, cleaned: &mut Cleaned) -> Result<(), ChunkError> {
        let root = Self::root(cache_dir);
        let stores = match fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(PathError::new(&root, e).into()),
        };
        for store in stores {
            let dir = store.at(&root)?.path();
            if !dir.is_dir() {
                continue;
            }
            cleaned.remove_temps(&dir)?;
            for chunk in fs::read_dir(&dir).at(&dir)? {
                let path = chunk.at(&dir)?.path();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let ours = [".xz", ".zst", ".gz"].iter().any(|e| name.ends_with(e));
                if ours && path.is_file() {
                    cleaned.remove(&path)?;
                }
            }
        }
        Ok(())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{key}.{}", self.compression.codec.extension()))
    }

    fn trusted(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.trusted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The compressed sha256 of chunk `key` if this run compressed or checked it.
    fn trusted_sha(&self, key: &str) -> Option<String> {
        self.trusted().get(key).cloned()
    }

    /// Check a stored chunk not yet trusted in this run: it must decompress to exactly
    /// `raw_len` bytes whose sha256 is `key`. Returns whether it does (and trusts it then).
    fn check(&self, key: &str, raw_len: u64) -> Result<bool, ChunkError> {
        let path = self.path(key);
        let file = File::open(&path).at(&path)?;
        // A compressed chunk is never much larger than its raw bytes; a larger file is bad.
        let limit = raw_len + raw_len / 8 + (1 << 20);
        let mut compressed = Vec::new();
        (&file)
            .take(limit + 1)
            .read_to_end(&mut compressed)
            .at(&path)?;
        if compressed.len() as u64 > limit {
            return Ok(false);
        }
        let format = match self.compression.codec {
            Codec::Xz => Format::Xz,
            Codec::Zstd => Format::Zstd,
            Codec::Gzip => Format::Gzip,
        };
        let compressed_sha = hex(&Sha256::digest(&compressed));
        let mut decoded =
            crate::image::decoder(format, io::Cursor::new(compressed)).take(raw_len + 1);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; BUF];
        let mut len = 0u64;
        loop {
            match decoded.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    len += n as u64;
                }
                Err(_) => return Ok(false),
            }
        }
        if len != raw_len || hex(&hasher.finalize()) != key {
            return Ok(false);
        }
        self.trusted().insert(key.to_string(), compressed_sha);
        Ok(true)
    }
}

/// What [`compress_image`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compressed {
    /// The compressed file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256, hex.
    pub sha256: String,
    /// The raw image's size in bytes.
    pub raw_size: u64,
    /// The raw image's sha256, hex.
    pub raw_sha256: String,
    /// How many chunks the image has.
    pub chunks: usize,
    /// How many distinct chunks had to be compressed now.
    pub compressed: usize,
    /// How many chunks were taken from the store as they were (compressed by an earlier node or run).
    pub reused: usize,
}

/// Compress the raw image `raw` for `out` with the chunks of `store`, compressing missing chunks
/// on `jobs` threads. The file is left in its temp file beside `out`: commit it to publish it.
pub fn compress_image(
    raw: &Path,
    out: &Path,
    store: &ChunkStore,
    jobs: usize,
) -> Result<(Compressed, PendingOutput), ChunkError> {
    let jobs = jobs.max(1);
    let file = File::open(raw).at(raw)?;
    let raw_size = file.metadata().at(raw)?.len();
    // An empty image still gets one (empty) chunk, so the output is a valid compressed file.
    let chunks: Vec<(u64, u64)> = if raw_size == 0 {
        vec![(0, 0)]
    } else {
        (0..raw_size.div_ceil(CHUNK_SIZE))
            .map(|i| {
                let start = i * CHUNK_SIZE;
                (start, CHUNK_SIZE.min(raw_size - start))
            })
            .collect()
    };
    let (raw_sha256, keys) = hash_chunks(&file, raw, raw_size, &chunks, jobs)?;

    // Each key once, at its first chunk: stored chunks not yet checked in this run are checked
    // (a bad one is compressed again), missing ones compressed, on `jobs` threads.
    let mut work: Vec<(usize, &str)> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if !work.iter().any(|(_, k)| k == key) {
            work.push((i, key));
        }
    }
    let stored: HashSet<&str> = work
        .iter()
        .map(|&(_, k)| k)
        .filter(|k| store.path(k).is_file())
        .collect();
    let compressed: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    run_parallel(&work, jobs, raw, |i, key| {
        let (start, len) = chunks[i];
        if store.trusted_sha(key).is_some() {
            return Ok(());
        }
        let chunk = store.path(key);
        if chunk.is_file() {
            if store.check(key, len)? {
                return Ok(());
            }
            eprintln!(
                "pi-image: warning: {}: does not decompress to the {len} bytes whose sha256 it is named by (corrupt or replaced); compressing it again",
                chunk.display()
            );
        }
        compress_chunk(&file, raw, start, len, store, key)?;
        compressed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_string());
        Ok(())
    })?;
    let compressed = compressed
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    // Positions whose chunk came from the store as it was.
    let reused = keys
        .iter()
        .filter(|k| stored.contains(k.as_str()) && !compressed.contains(*k))
        .count();

    let (pending, size, sha256) = assemble(&keys, store, out)?;
    let done = Compressed {
        path: out.to_owned(),
        size,
        sha256,
        raw_size,
        raw_sha256,
        chunks: chunks.len(),
        compressed: compressed.len(),
        reused,
    };
    Ok((done, pending))
}

/// The sha256 of the whole image and of each chunk. One thread hashes the whole image while the
/// others hash chunks, all reading the file independently (it is in the page cache, just built).
fn hash_chunks(
    file: &File,
    path: &Path,
    size: u64,
    chunks: &[(u64, u64)],
    jobs: usize,
) -> Result<(String, Vec<String>), ChunkError> {
    let next = AtomicUsize::new(0);
    let keys: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; chunks.len()]);
    let failed = AtomicBool::new(false);
    let chunk_workers = jobs.saturating_sub(1).max(1);
    let whole = std::thread::scope(|s| {
        let workers: Vec<_> = (0..chunk_workers)
            .map(|_| {
                s.spawn(|| -> io::Result<()> {
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(start, len)) = chunks.get(i) else {
                            return Ok(());
                        };
                        let key = sha256_hex(&mut FileRange::new(file, start, len)).inspect_err(
                            |_| {
                                failed.store(true, Ordering::Relaxed);
                            },
                        )?;
                        if let Ok(mut k) = keys.lock() {
                            k[i] = Some(key);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let whole = sha256_hex(&mut FileRange::new(file, 0, size));
        if whole.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        for w in workers {
            w.join()
                .unwrap_or_else(|_| Err(io::Error::other("a hashing thread panicked")))?;
        }
        whole
    })
    .at(path)?;
    let keys = keys
        .into_inner()
        .map_err(|_| PathError::new(path, io::Error::other("a hashing thread panicked")))?;
    let keys = keys
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| PathError::new(path, io::Error::other("a chunk was not hashed")))?;
    Ok((whole, keys))
}

/// Run `each` on every (index, key) of `work` on `jobs` threads, stopping at the first error.
fn run_parallel(
    work: &[(usize, &str)],
    jobs: usize,
    path: &Path,
    each: impl Fn(usize, &str) -> Result<(), ChunkError> + Sync,
) -> Result<(), ChunkError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..jobs.min(work.len()))
            .map(|_| {
                s.spawn(|| -> Result<(), ChunkError> {
                    while !failed.load(Ordering::Relaxed) {
                        let Some(&(i, key)) = work.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return Ok(());
                        };
                        each(i, key).inspect_err(|_| {
                            failed.store(true, Ordering::Relaxed);
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join().unwrap_or_else(|_| {
                Err(PathError::new(path, io::Error::other("a compressing thread panicked")).into())
            })
        })
    })
}

fn compress_chunk(
    file: &File,
    path: &Path,
    start: u64,
    len: u64,
    store: &ChunkStore,
    key: &str,
) -> Result<(), ChunkError> {
    let mut out = PendingOutput::create(&store.path(key))?;
    let temp = out.temp_path().to_owned();
    let mut src = BufReader::with_capacity(BUF, FileRange::new(file, start, len));
    let compressed_sha = {
        let mut dst = HashingWriter {
            inner: BufWriter::with_capacity(BUF, out.file()),
            hasher: Sha256::new(),
        };
        store
            .compression
            .encode(&mut src, len, &mut dst)
            .and_then(|()| dst.inner.flush())
            .map_err(|source| ChunkError::Compress {
                image: path.to_owned(),
                start,
                end: start + len,
                chunk: temp,
                source,
            })?;
        hex(&dst.hasher.finalize())
    };
    out.commit()?;
    store.trusted().insert(key.to_string(), compressed_sha);
    Ok(())
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Concatenate the chunks named by `keys` into a temp file for `out`; returns it, its size and
/// its sha256.
fn assemble(
    keys: &[String],
    store: &ChunkStore,
    out: &Path,
) -> Result<(PendingOutput, u64, String), ChunkError> {
    let mut pending = PendingOutput::create(out)?;
    let temp = pending.temp_path().to_owned();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; BUF];
    let mut dst = BufWriter::with_capacity(BUF, pending.file());
    for key in keys {
        let path = store.path(key);
        let mut chunk = File::open(&path).at(&path)?;
        let mut chunk_hasher = Sha256::new();
        loop {
            let n = chunk.read(&mut buf).at(&path)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            chunk_hasher.update(&buf[..n]);
            dst.write_all(&buf[..n]).at(&temp)?;
            size += n as u64;
        }
        if store.trusted_sha(key) != Some(hex(&chunk_hasher.finalize())) {
            return Err(ChunkError::Changed { chunk: path });
        }
    }
    dst.flush().at(&temp)?;
    drop(dst);
    Ok((pending, size, hex(&hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, bytes: &[u8]) -> PathBuf {
        let p = dir.join("raw.img");
        fs::write(&p, bytes).unwrap();
        p
    }

    fn decode(c: Codec, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let format = match c {
            Codec::Xz => crate::image::Format::Xz,
            Codec::Zstd => crate::image::Format::Zstd,
            Codec::Gzip => crate::image::Format::Gzip,
        };
        crate::image::decoder(format, io::Cursor::new(data.to_vec()))
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Three chunks (two of them equal) and a short tail, in every codec: decodes to the input,
    /// equal chunks are compressed once, and a second run reuses every chunk.
    #[test]
    fn chunks_concatenate_to_one_valid_file_and_are_reused() {
        let mut raw = vec![0u8; (3 * CHUNK_SIZE + 1000) as usize];
        for (i, b) in raw[..CHUNK_SIZE as usize].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        raw[(3 * CHUNK_SIZE) as usize + 5] = 7;
        for codec in [Codec::Xz, Codec::Zstd, Codec::Gzip] {
            let dir = tempfile::tempdir().unwrap();
            let path = image(dir.path(), &raw);
            let store = ChunkStore::open(
                &dir.path().join("cache"),
                Compression::new(codec, Some(1)).unwrap(),
            )
            .unwrap();
            let out = dir.path().join("out.img.x");
            let (first, file) = compress_image(&path, &out, &store, 2).unwrap();
            file.commit().unwrap();
            assert_eq!((first.chunks, first.compressed, first.reused), (4, 3, 0));
            let bytes = fs::read(&out).unwrap();
            assert_eq!(first.size, bytes.len() as u64);
            assert!(decode(codec, &bytes) == raw, "{codec:?} round trip");
            let (again, _) = compress_image(&path, &out, &store, 1).unwrap();
            assert_eq!((again.compressed, again.reused), (0, 4));
            assert_eq!(again.sha256, first.sha256);
        }
    }

    #[test]
    fn levels_are_checked() {
        assert!(Compression::new(Codec::Xz, Some(10)).is_err());
        assert!(Compression::new(Codec::Gzip, Some(0)).is_err());
        assert_eq!(Compression::new(Codec::Zstd, None).unwrap().level, 19);
        let err = "lz4".parse::<Codec>().unwrap_err().to_string();
        assert!(err.contains("expected xz, zstd or gz"), "{err}");
    }
}
