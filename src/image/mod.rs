//! Base images in, node images out: reading a base image as a stream (raw or `.xz`, judged by
//! its magic bytes), copying it sparsely, and writing outputs atomically (temp file in the same
//! directory, fsync, rename) so a failed build never leaves a file at the final path.

pub mod blockmap;
pub mod bmap;
pub mod bootfs;
pub mod ext4;
pub mod partition;
pub mod partview;

use crate::io::{AtPath, PathError, read_full};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Holes are made for all-zero runs of this many bytes (the usual filesystem block size).
const SPARSE_BLOCK: usize = 4096;
/// Copy buffer: large enough for few syscalls, small enough to never matter for memory.
const COPY_BUF: usize = 4 << 20;
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";
/// The xz decoder may use at most this much memory; `xz -9` needs 674 MiB with one thread.
const XZ_MEMLIMIT_STOP: u64 = 1 << 30;
/// Above this, the multi-threaded decoder falls back to fewer threads.
const XZ_MEMLIMIT_THREADING: u64 = 256 << 20;

/// Errors reading a base image or writing an output.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// I/O on a named file failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The compressed base is corrupt or truncated.
    #[error("{path}: cannot decompress: {reason}")]
    Decompress {
        /// The base image.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
}

/// Open a base image for reading as a stream of raw image bytes: `.xz` files (recognised by their
/// magic, whatever their name) are decompressed on all cores as they are read.
pub fn open_base(path: &Path) -> Result<Box<dyn Read + Send>, ImageError> {
    let file = File::open(path).at(path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let head = reader.fill_buf().at(path)?;
    if head.starts_with(XZ_MAGIC) {
        Ok(Box::new(XzStreams::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// True when the file at `path` is `.xz`-compressed (judged by its magic bytes).
pub fn is_compressed(path: &Path) -> Result<bool, ImageError> {
    Ok(Format::of_file(path)? == Format::Xz)
}

/// How a base image (local or downloaded) is compressed, judged by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.xz` (liblzma, multi-threaded).
    Xz,
    /// `.gz` (flate2; concatenated members are decoded as one).
    Gzip,
    /// `.zst` (libzstd; concatenated frames are decoded as one).
    Zstd,
    /// Not compressed: a raw disk image.
    Raw,
}

impl Format {
    /// Judge the format from the first bytes of a file (at least 6 bytes, or the whole file).
    pub fn sniff(head: &[u8]) -> Format {
        if head.starts_with(XZ_MAGIC) {
            Format::Xz
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else {
            Format::Raw
        }
    }

    /// Judge the format of the file at `path` from its first bytes.
    pub fn of_file(path: &Path) -> Result<Format, PathError> {
        let mut head = [0u8; 6];
        let mut file = File::open(path).at(path)?;
        let got = read_full(&mut file, &mut head).at(path)?;
        Ok(Format::sniff(&head[..got]))
    }

    /// A short name for messages: `xz`, `gzip`, `zstd`, `raw`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Xz => "xz",
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
            Format::Raw => "raw",
        }
    }
}

/// Wrap `reader` (positioned at the start of a file of the given format) in the matching
/// streaming decoder, so that reading it yields raw image bytes.
pub fn decoder<R: BufRead + 'static>(format: Format, reader: R) -> Box<dyn Read> {
    match format {
        Format::Xz => Box::new(XzStreams::new(reader)),
        Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Format::Zstd => Box::new(ZstdFrames::new(reader)),
        Format::Raw => Box::new(reader),
    }
}

/// One compressed stream (an xz stream, a zstd frame) decoded from a reader's position; the
/// reader comes back when the stream ends, so that the next one can follow.
trait OneStream<R>: Read + Sized {
    /// Whether NUL bytes may sit between streams (xz's stream padding).
    const NUL_PADDING: bool;
    fn start(reader: R) -> io::Result<Self>;
    fn finish(self) -> R;
}

impl<R: BufRead> OneStream<R> for liblzma::bufread::XzDecoder<R> {
    const NUL_PADDING: bool = true;

    /// liblzma's multi-threaded decoder, whose builder cannot set `LZMA_CONCATENATED`: hence
    /// the chaining in [`Concatenated`].
    fn start(reader: R) -> io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stream = liblzma::stream::MtStreamBuilder::new()
            .threads(u32::try_from(threads).unwrap_or(1))
            .memlimit_stop(XZ_MEMLIMIT_STOP)
            .memlimit_threading(XZ_MEMLIMIT_THREADING)
            .decoder()
            .map_err(io::Error::other)?;
        Ok(liblzma::bufread::XzDecoder::new_stream(reader, stream))
    }

    fn finish(self) -> R {
        self.into_inner()
    }
}

impl<R: BufRead> OneStream<R> for zstd::stream::read::Decoder<'static, R> {
    const NUL_PADDING: bool = false;

    fn start(reader: R) -> io::Result<Self> {
        Ok(zstd::stream::read::Decoder::with_buffer(reader)?.single_frame())
    }

    fn finish(self) -> R {
        zstd::stream::read::Decoder::finish(self)
    }
}

/// Decodes every concatenated stream of the input, one [`OneStream`] after another (both
/// decoders read a single stream).
struct Concatenated<R, D> {
    current: Option<D>,
    idle: Option<R>,
}

impl<R: BufRead, D: OneStream<R>> Concatenated<R, D> {
    fn new(reader: R) -> Self {
        Concatenated {
            current: None,
            idle: Some(reader),
        }
    }
}

impl<R: BufRead, D: OneStream<R>> Read for Concatenated<R, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(dec) = &mut self.current {
                let n = dec.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.idle = self.current.take().map(D::finish);
            }
            let Some(mut reader) = self.idle.take() else {
                return Ok(0);
            };
            if D::NUL_PADDING {
                loop {
                    let head = reader.fill_buf()?;
                    let zeros = head.iter().take_while(|&&b| b == 0).count();
                    let more_padding = zeros > 0 && zeros == head.len();
                    reader.consume(zeros);
                    if !more_padding {
                        break;
                    }
                }
            }
            if reader.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.current = Some(D::start(reader)?);
        }
    }
}

/// `.xz` input: every stream, each decoded on all cores.
type XzStreams<R> = Concatenated<R, liblzma::bufread::XzDecoder<R>>;
/// `.zst` input: every frame.
type ZstdFrames<R> = Concatenated<R, zstd::stream::read::Decoder<'static, R>>;

/// Copy `src` into `dst` from its current position, leaving holes where whole 4 KiB blocks are
/// zero, and set `dst`'s length to what was copied. Returns the number of bytes copied.
pub fn copy_sparse(src: &mut dyn Read, dst: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut written: u64 = 0;
    loop {
        let filled = read_full(src, &mut buf)?;
        if filled == 0 {
            break;
        }
        let mut pending_seek = false;
        for block in buf[..filled].chunks(SPARSE_BLOCK) {
            if block.iter().all(|&b| b == 0) {
                pending_seek = true;
            } else {
                if pending_seek {
                    dst.seek(SeekFrom::Start(written))?;
                    pending_seek = false;
                }
                dst.write_all(block)?;
            }
            written += block.len() as u64;
        }
        if pending_seek {
            dst.seek(SeekFrom::Start(written))?;
        }
    }
    dst.set_len(written)?;
    Ok(written)
}

/// An output file being written: a temp file beside the final path, renamed into place by
/// [`PendingOutput::commit`]. Dropped without commit, the temp file is removed.
#[derive(Debug)]
pub struct PendingOutput {
    temp: PathBuf,
    target: PathBuf,
    file: File,
    committed: bool,
}

impl PendingOutput {
    /// Create the temp file for `target` in the same directory (so the rename is atomic).
    pub fn create(target: &Path) -> Result<PendingOutput, ImageError> {
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .at(&temp)?;
        Ok(PendingOutput {
            temp,
            target: target.to_owned(),
            file,
            committed: false,
        })
    }

    /// The open temp file.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The temp file's path (for tools that open it by name).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// fsync the temp file, rename it to the final path and fsync the directory.
    pub fn commit(mut self) -> Result<PathBuf, ImageError> {
        self.file.sync_all().at(&self.temp)?;
        fs::rename(&self.temp, &self.target).at(&self.target)?;
        self.committed = true;
        let dir = parent_dir(&self.target);
        File::open(&dir).and_then(|d| d.sync_all()).at(&dir)?;
        Ok(self.target.clone())
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_bytes_and_makes_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 10 << 20];
        data[5] = 1;
        data[(9 << 20) + 17] = 2;
        let path = dir.path().join("out");
        let mut out = File::create(&path).unwrap();
        let n = copy_sparse(&mut &data[..], &mut out).unwrap();
        assert_eq!(n, data.len() as u64);
        drop(out);
        assert_eq!(fs::read(&path).unwrap(), data);
        // Two 4 KiB blocks hold data; allow for filesystem allocation granularity.
        assert!(fs::metadata(&path).unwrap().blocks() * 512 < 1 << 20);
    }

    #[test]
    fn trailing_zeros_still_give_the_full_length() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![0u8; 12345];
        let mut out = File::create(dir.path().join("z")).unwrap();
        assert_eq!(copy_sparse(&mut &data[..], &mut out).unwrap(), 12345);
        assert_eq!(out.metadata().unwrap().len(), 12345);
    }

    #[test]
    fn concatenated_xz_streams_decode_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut compressed = Vec::new();
        for part in [&b"first stream "[..], &b"second stream"[..]] {
            let mut enc = liblzma::read::XzEncoder::new(part, 6);
            enc.read_to_end(&mut compressed).unwrap();
        }
        let path = dir.path().join("two.xz");
        fs::write(&path, &compressed).unwrap();
        let mut out = String::new();
        open_base(&path).unwrap().read_to_string(&mut out).unwrap();
        assert_eq!(out, "first stream second stream");
    }

    #[test]
    fn uncommitted_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("node.img");
        {
            let mut pending = PendingOutput::create(&target).unwrap();
            pending.file().write_all(b"half").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut pending = PendingOutput::create(&target).unwrap();
        pending.file().write_all(b"whole").unwrap();
        pending.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"whole");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
