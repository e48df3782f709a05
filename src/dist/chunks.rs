//! Chunked compression of disk images, with a cache of compressed chunks.
//!
//! The raw image is cut into pieces of at most [`CHUNK_SIZE`] ([`layout`](super::layout)), each
//! compressed on its own: an xz stream, a
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

use super::layout::{Cell, sha256_range};
use crate::base::cache::Cleaned;
use crate::image::cow::CowImage;
use crate::image::{ImageError, PendingOutput};
use crate::io::stamp::FileStamp;
use crate::io::{AtPath, PathError, hex, tempfiles};

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

    /// The stream format its chunks are read back as.
    pub fn format(self) -> crate::image::Format {
        match self {
            Codec::Xz => crate::image::Format::Xz,
            Codec::Zstd => crate::image::Format::Zstd,
            Codec::Gzip => crate::image::Format::Gzip,
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

/// Compressed chunks on disk: `<cache>/chunks/<codec>-<level>/<sha256 of the raw chunk>.<ext>`,
/// or a shared-chunk release's `chunks/` ([`ChunkStore::in_dir`]). Each file is written to a
/// temp file, fsynced and renamed, so a chunk under its final name is always complete; two runs
/// writing the same chunk write the same bytes.
#[derive(Debug)]
pub struct ChunkStore {
    dir: PathBuf,
    compression: Compression,
    /// Chunks this run compressed or checked: raw sha256 (the key) → the compressed file as it
    /// was then.
    trusted: Mutex<HashMap<String, StoredChunk>>,
}

/// A chunk file as this run compressed or checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    /// Its length in bytes.
    pub len: u64,
    /// Its sha256, hex.
    pub sha256: String,
    /// The file's stamp right after this run wrote or checked it (`None` if it changed while
    /// it was read): while the stamp holds, the file is what was hashed and is not hashed again.
    pub stamp: Option<FileStamp>,
}

impl ChunkStore {
    /// The store for `compression` under the cache directory `cache_dir` (created if needed).
    pub fn open(cache_dir: &Path, compression: Compression) -> Result<ChunkStore, ChunkError> {
        let dir = Self::root(cache_dir).join(format!(
            "{}-{}",
            compression.codec.name(),
            compression.level
        ));
        Self::in_dir(&dir, compression)
    }

    /// A store in `dir` itself (created if needed), e.g. a shared-chunk release's `chunks/`.
    pub fn in_dir(dir: &Path, compression: Compression) -> Result<ChunkStore, ChunkError> {
        fs::create_dir_all(dir).at(dir)?;
        tempfiles::sweep_stale(dir).at(dir)?;
        Ok(ChunkStore {
            dir: dir.to_owned(),
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

    /// Where the chunk whose raw bytes have the sha256 `key` is kept.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{key}.{}", self.compression.codec.extension()))
    }

    fn trusted(&self) -> std::sync::MutexGuard<'_, HashMap<String, StoredChunk>> {
        self.trusted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The chunk file of `key` as this run compressed or checked it, if it did.
    pub fn stored(&self, key: &str) -> Option<StoredChunk> {
        self.trusted().get(key).cloned()
    }

    /// Check a stored chunk not yet trusted in this run: it must decompress to exactly
    /// `raw_len` bytes whose sha256 is `key`. Returns whether it does (and trusts it then).
    fn check(&self, key: &str, raw_len: u64) -> Result<bool, ChunkError> {
        let path = self.path(key);
        let file = File::open(&path).at(&path)?;
        let before = file.metadata().at(&path)?;
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
        let after = FileStamp::of_metadata(&file.metadata().at(&path)?);
        let stored = StoredChunk {
            len: compressed.len() as u64,
            sha256: hex(&Sha256::digest(&compressed)),
            stamp: (FileStamp::of_metadata(&before) == after).then_some(after),
        };
        let decoded =
            crate::image::decoder(self.compression.codec.format(), io::Cursor::new(compressed));
        let mut decoded = decoded.take(raw_len + 1);
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
        self.trusted().insert(key.to_string(), stored);
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
    /// Distinct chunks compressed now.
    pub compressed: usize,
    /// Chunks (positions) taken from the store as it was.
    pub reused: usize,
}

/// Compress `image` (named `name` in errors), cut into `cells` whose raw sha256 are `keys`, for
/// `out` with the chunks of `store`, compressing missing chunks on `jobs` threads while one more
/// thread hashes the whole image. The file is left in its temp file beside `out`: commit it to
/// publish it.
pub fn compress_image(
    image: &CowImage,
    name: &Path,
    cells: &[Cell],
    keys: &[String],
    out: &Path,
    store: &ChunkStore,
    jobs: usize,
) -> Result<(Compressed, PendingOutput), ChunkError> {
    // The raw image is hashed on its own thread while the chunks are stored and then
    // concatenated (for a further node of a release: while the concatenation is written).
    let (raw_sha256, assembled) = std::thread::scope(|s| {
        let whole = s.spawn(|| sha256_range(image, 0, image.len()));
        let assembled = store_cells(image, name, cells, keys, store, jobs)
            .and_then(|stored| Ok((stored, assemble(keys, store, out)?)));
        let whole = whole
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the hashing thread panicked")));
        (whole, assembled)
    });
    let raw_sha256 = raw_sha256.at(name)?;
    let (
        Stored {
            compressed, reused, ..
        },
        (pending, size, sha256),
    ) = assembled?;
    let done = Compressed {
        path: out.to_owned(),
        size,
        sha256,
        raw_size: image.len(),
        raw_sha256,
        chunks: cells.len(),
        compressed,
        reused,
    };
    Ok((done, pending))
}

/// How [`store_cells`] got the chunks into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Distinct chunks compressed now (missing, or not what their name says).
    pub compressed: usize,
    /// Their compressed bytes.
    pub bytes: u64,
    /// Chunks (positions) taken from the store as it was.
    pub reused: usize,
}

/// Make sure `store` holds the chunk of each of `cells` of `image`, whose raw sha256 are
/// `keys`, and that this run trusts it ([`ChunkStore::stored`]): each distinct key once, on
/// `jobs` threads, a stored chunk not yet checked in this run is checked (a bad one is
/// compressed again, with a warning), a missing one compressed.
pub fn store_cells(
    image: &CowImage,
    name: &Path,
    cells: &[Cell],
    keys: &[String],
    store: &ChunkStore,
    jobs: usize,
) -> Result<Stored, ChunkError> {
    let mut seen = HashSet::new();
    let work: Vec<(usize, &str)> = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| seen.insert(k.as_str()))
        .map(|(i, k)| (i, k.as_str()))
        .collect();
    let stored: HashSet<&str> = work
        .iter()
        .map(|&(_, k)| k)
        .filter(|k| store.path(k).is_file())
        .collect();
    let compressed: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    run_parallel(&work, jobs.max(1), name, |i, key| {
        let c = cells[i];
        if store.stored(key).is_some() {
            return Ok(());
        }
        let chunk = store.path(key);
        if chunk.is_file() {
            if store.check(key, c.len)? {
                return Ok(());
            }
            eprintln!(
                "pi-image: warning: {}: does not decompress to the {} bytes whose sha256 it is named by (corrupt or replaced); compressing it again",
                chunk.display(),
                c.len
            );
        }
        compress_chunk(image, name, c.offset, c.len, store, key)?;
        compressed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_string());
        Ok(())
    })?;
    let compressed = compressed
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let reused = keys
        .iter()
        .filter(|k| stored.contains(k.as_str()) && !compressed.contains(*k))
        .count();
    let bytes = compressed
        .iter()
        .filter_map(|k| store.stored(k))
        .map(|s| s.len)
        .sum();
    Ok(Stored {
        compressed: compressed.len(),
        bytes,
        reused,
    })
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
    image: &CowImage,
    name: &Path,
    start: u64,
    len: u64,
    store: &ChunkStore,
    key: &str,
) -> Result<(), ChunkError> {
    let mut out = PendingOutput::create(&store.path(key))?;
    let temp = out.temp_path().to_owned();
    // The stamp is taken from this descriptor after the rename (which changes the ctime), so
    // that it is the stamp of the file this run wrote, whatever the path holds by then.
    let written = out.file().try_clone().at(&temp)?;
    let mut src = BufReader::with_capacity(BUF, image.range(start, len));
    let stored = {
        let mut dst = HashingWriter {
            inner: BufWriter::with_capacity(BUF, out.file()),
            hasher: Sha256::new(),
            len: 0,
        };
        store
            .compression
            .encode(&mut src, len, &mut dst)
            .and_then(|()| dst.inner.flush())
            .map_err(|source| ChunkError::Compress {
                image: name.to_owned(),
                start,
                end: start + len,
                chunk: temp,
                source,
            })?;
        (dst.len, hex(&dst.hasher.finalize()))
    };
    let chunk = out.commit()?;
    let stored = StoredChunk {
        len: stored.0,
        sha256: stored.1,
        stamp: Some(FileStamp::of_metadata(&written.metadata().at(&chunk)?)),
    };
    store.trusted().insert(key.to_string(), stored);
    Ok(())
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Concatenate the chunks named by `keys` into a temp file for `out`, each checked to be the
/// file this run trusted (by its stamp, or hashed again when the stamp moved); returns it, its
/// size and its sha256.
fn assemble(
    keys: &[String],
    store: &ChunkStore,
    out: &Path,
) -> Result<(PendingOutput, u64, String), ChunkError> {
    let mut pending = PendingOutput::create(out)?;
    let temp = pending.temp_path().to_owned();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut dst = BufWriter::with_capacity(BUF, pending.file());
    let mut buf = vec![0u8; BUF];
    for key in keys {
        let path = store.path(key);
        let changed = || ChunkError::Changed {
            chunk: path.clone(),
        };
        let trusted = store.stored(key).ok_or_else(changed)?;
        let mut chunk = File::open(&path).at(&path)?;
        let opened = FileStamp::of_metadata(&chunk.metadata().at(&path)?);
        let mut chunk_hasher = (trusted.stamp.as_ref() != Some(&opened)).then(Sha256::new);
        let mut len = 0u64;
        loop {
            let n = chunk.read(&mut buf).at(&path)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if let Some(h) = &mut chunk_hasher {
                h.update(&buf[..n]);
            }
            dst.write_all(&buf[..n]).at(&temp)?;
            len += n as u64;
        }
        let same = match chunk_hasher {
            Some(h) => hex(&h.finalize()) == trusted.sha256,
            None => FileStamp::of_metadata(&chunk.metadata().at(&path)?) == opened,
        };
        if !same || len != trusted.len {
            return Err(changed());
        }
        size += len;
    }
    dst.flush().at(&temp)?;
    drop(dst);
    Ok((pending, size, hex(&hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::super::layout::{BaseDigests, cells};
    use super::*;

    fn image(dir: &Path, bytes: &[u8]) -> PathBuf {
        let p = dir.join("raw.img");
        fs::write(&p, bytes).unwrap();
        p
    }

    fn decode(c: Codec, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::image::decoder(c.format(), io::Cursor::new(data.to_vec()))
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
            let img = CowImage::new(&path, dir.path()).unwrap();
            let cells = cells(img.len(), &[], &[CHUNK_SIZE]);
            let keys = BaseDigests::default()
                .digests(&img, &path, &cells, 2)
                .unwrap();
            let compress = |jobs| compress_image(&img, &path, &cells, &keys, &out, &store, jobs);
            let (first, file) = compress(2).unwrap();
            file.commit().unwrap();
            assert_eq!((first.chunks, first.compressed, first.reused), (4, 3, 0));
            let bytes = fs::read(&out).unwrap();
            assert_eq!(first.size, bytes.len() as u64);
            assert!(decode(codec, &bytes) == raw, "{codec:?} round trip");
            assert_eq!(
                first.raw_sha256,
                crate::io::sha256_hex(&mut &raw[..]).unwrap()
            );
            // A new store object (a new run) checks the stored chunks before reusing them.
            let store = ChunkStore::open(
                &dir.path().join("cache"),
                Compression::new(codec, Some(1)).unwrap(),
            )
            .unwrap();
            let (again, _) = compress_image(&img, &path, &cells, &keys, &out, &store, 1).unwrap();
            assert_eq!((again.compressed, again.reused), (0, 4));
            assert_eq!(again.sha256, first.sha256);
        }
    }

    /// A chunk file rewritten in place after this run compressed it (same length, its times
    /// put back) is not copied into an artifact: its stamp moved, so it is hashed again.
    #[test]
    fn a_chunk_rewritten_after_it_was_trusted_is_refused_at_assembly() {
        let raw: Vec<u8> = (0..2 * CHUNK_SIZE).map(|i| (i % 249) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), &raw);
        let store = ChunkStore::open(
            &dir.path().join("cache"),
            Compression::new(Codec::Zstd, Some(1)).unwrap(),
        )
        .unwrap();
        let img = CowImage::new(&path, dir.path()).unwrap();
        let cells = cells(img.len(), &[], &[CHUNK_SIZE]);
        let keys = BaseDigests::default()
            .digests(&img, &path, &cells, 1)
            .unwrap();
        let out = dir.path().join("out.img.zst");
        let compress = || compress_image(&img, &path, &cells, &keys, &out, &store, 1);
        // Trusted and unchanged: assembled again (from the stamps) to the same bytes.
        let (first, _) = compress().unwrap();
        let (again, _) = compress().unwrap();
        assert_eq!(again.sha256, first.sha256);
        let chunk = store.path(&keys[1]);
        let mtime = fs::metadata(&chunk).unwrap().modified().unwrap();
        let mut bytes = fs::read(&chunk).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&chunk, &bytes).unwrap();
        File::options()
            .write(true)
            .open(&chunk)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let err = compress().unwrap_err();
        assert!(matches!(err, ChunkError::Changed { .. }), "{err}");
        assert!(!out.exists(), "nothing published");
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
