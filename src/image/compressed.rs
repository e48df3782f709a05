//! Compressed images read as streams of raw bytes: the format judged by content (`.xz`, `.gz`,
//! `.zst` or raw), and every concatenated xz stream or zstd frame decoded in turn, xz on all
//! cores.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::ImageError;
use crate::io::{AtPath, PathError, read_full};

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";
/// The xz decoder may use at most this much memory; `xz -9` needs 674 MiB with one thread.
const XZ_MEMLIMIT_STOP: u64 = 1 << 30;
/// Above this, the multi-threaded decoder falls back to fewer threads.
const XZ_MEMLIMIT_THREADING: u64 = 256 << 20;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
}
