//! Compressed images read as streams of raw bytes: the format judged by content (`.xz`, `.gz`,
//! `.zst` or raw), and every concatenated xz stream or zstd frame decoded in turn, xz on all
//! cores within a memory budget.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::ImageError;
use crate::io::{AtPath, PathError, read_full};

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";
/// The xz decoder may use at most this much memory; `xz -9` needs 674 MiB with one thread.
const XZ_MEMLIMIT_STOP: u64 = 1 << 30;
/// What the multi-threaded xz decoder may hold: it buffers each block it decodes in parallel
/// whole (compressed and decoded) besides its dictionary, so blocks of 12 MiB on two threads,
/// plus a finished one waiting to be read, would take over 40 MiB. Within this budget liblzma
/// decodes fewer blocks at a time when they are larger, and a block that does not fit alone on
/// one thread (which needs only its dictionary), so a fetch, build or flash stays within
/// 64 MiB of RSS (measured by `make bench`).
const XZ_MEMLIMIT_THREADING: u64 = 32 << 20;
/// The stream header, and the largest block header: enough to read the first block's sizes.
const XZ_HEAD_MAX: usize = 12 + 1024;

/// Open a base image for reading as a stream of raw image bytes: `.xz` files (recognised by their
/// magic, whatever their name) are decompressed on all cores as they are read.
pub fn open_base(path: &Path) -> Result<Box<dyn Read + Send>, ImageError> {
    let file = File::open(path).at(path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let head = reader.fill_buf().at(path)?;
    if head.starts_with(XZ_MAGIC) {
        Ok(Box::new(XzStreams::new(BlockWatch::new(reader))))
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
        Format::Xz => Box::new(XzStreams::new(BlockWatch::new(reader))),
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

/// `.xz` input: every stream, each decoded on all cores (its first block's size watched).
type XzStreams<R> = Concatenated<BlockWatch<R>, liblzma::bufread::XzDecoder<BlockWatch<R>>>;
/// `.zst` input: every frame.
type ZstdFrames<R> = Concatenated<R, zstd::stream::read::Decoder<'static, R>>;

/// Passes an xz file to the decoder and reads the first block's header as it goes by: when its
/// blocks are too large to decode one per core within [`XZ_MEMLIMIT_THREADING`], says on stderr
/// that fewer threads decode them (liblzma then does so by itself).
struct BlockWatch<R> {
    inner: R,
    head: Vec<u8>,
    done: bool,
}

impl<R: BufRead> BlockWatch<R> {
    fn new(inner: R) -> Self {
        BlockWatch {
            inner,
            head: Vec::new(),
            done: false,
        }
    }
}

impl<R: BufRead> Read for BlockWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_full(&mut self.fill_buf()?, buf)?;
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for BlockWatch<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        if !self.done {
            if let Ok(buf) = self.inner.fill_buf() {
                let take = n.min(buf.len()).min(XZ_HEAD_MAX - self.head.len());
                self.head.extend_from_slice(&buf[..take]);
            }
            if let Some(block) = FirstBlock::parse(&self.head) {
                self.done = true;
                if let Some(note) = block.thread_note(cores(), XZ_MEMLIMIT_THREADING) {
                    eprintln!("pi-image: {note}");
                }
            } else if self.head.len() >= XZ_HEAD_MAX || self.head.len() >= n_needed(&self.head) {
                // A header without sizes (decoded on one thread anyway) or not xz: nothing to say.
                self.done = true;
            }
        }
        self.inner.consume(n);
    }
}

/// The number of bytes needed to parse the first block header, as far as `head` tells.
fn n_needed(head: &[u8]) -> usize {
    match head.get(12) {
        Some(&size) => 12 + (usize::from(size) + 1) * 4,
        None => 13,
    }
}

/// The CPUs this process may use.
fn cores() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// What the first block header of an xz stream says about the memory a thread needs for it.
#[derive(Debug, PartialEq, Eq)]
struct FirstBlock {
    compressed: u64,
    uncompressed: u64,
    dict: u64,
}

impl FirstBlock {
    /// Parse the stream header and first block header in `head`; `None` when incomplete, when
    /// the block header does not store both sizes (then liblzma decodes on one thread anyway)
    /// or when it is not LZMA2.
    fn parse(head: &[u8]) -> Option<FirstBlock> {
        let hdr = head.get(12..n_needed(head))?;
        if hdr[0] == 0 {
            return None; // the index: a stream without blocks
        }
        let flags = hdr[1];
        if flags & 0xc0 != 0xc0 {
            return None;
        }
        let mut pos = 2;
        let compressed = vli(hdr, &mut pos)?;
        let uncompressed = vli(hdr, &mut pos)?;
        for _ in 0..=(flags & 3) {
            let id = vli(hdr, &mut pos)?;
            let props = usize::try_from(vli(hdr, &mut pos)?).ok()?;
            if id == 0x21 && props == 1 {
                let bits = u32::from(*hdr.get(pos)? & 0x3f);
                let dict = match bits {
                    40 => u64::from(u32::MAX),
                    0..40 => (2 | u64::from(bits & 1)) << (bits / 2 + 11),
                    _ => return None,
                };
                return Some(FirstBlock {
                    compressed,
                    uncompressed,
                    dict,
                });
            }
            pos += props;
        }
        None
    }

    /// The stderr note when fewer than `cores` such blocks fit into `budget` at once.
    fn thread_note(&self, cores: u64, budget: u64) -> Option<String> {
        let need = self.dict + self.compressed + self.uncompressed;
        let fit = budget / need.max(1);
        if fit >= cores {
            return None;
        }
        let mib = |n: u64| n.div_ceil(1 << 20);
        let how = match fit {
            0 => "on one thread, block after block".to_string(),
            1 => "one block at a time".to_string(),
            n => format!("{n} blocks at a time"),
        };
        Some(format!(
            "xz blocks of {} MiB (dictionary {} MiB): decoding {how} instead of one per core ({cores}) to stay within {} MiB",
            mib(self.uncompressed),
            mib(self.dict),
            mib(budget)
        ))
    }
}

/// An xz variable-length integer at `*pos`, moving `pos` past it.
fn vli(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut n: u64 = 0;
    for i in 0..9 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

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

    /// `xz` with `args` of `data`, via the xz tool (which writes block sizes when threaded).
    fn xz_tool(data: &[u8], args: &[&str]) -> Vec<u8> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("xz")
            .args(args)
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = data.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn the_first_block_header_gives_sizes_and_dictionary() {
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let xz = xz_tool(&data, &["-0", "-T2", "--block-size=1MiB"]);
        let block = FirstBlock::parse(&xz[..XZ_HEAD_MAX.min(xz.len())]).unwrap();
        assert_eq!(block.uncompressed, 1 << 20);
        assert_eq!(block.dict, 256 << 10);
        assert!(block.compressed > 0 && block.compressed < 1 << 20);
        // Single-threaded xz stores no sizes: liblzma decodes such files on one thread anyway.
        let single = xz_tool(&data, &["-0", "-T1"]);
        assert_eq!(FirstBlock::parse(&single[..64]), None);
        // Cut short: not parsed yet.
        assert_eq!(FirstBlock::parse(&xz[..14]), None);
    }

    #[test]
    fn blocks_too_large_for_every_core_are_noted() {
        let block = |mib: u64| FirstBlock {
            compressed: mib << 19,
            uncompressed: mib << 20,
            dict: 8 << 20,
        };
        assert_eq!(block(4).thread_note(2, 32 << 20), None);
        let note = block(24).thread_note(2, 32 << 20).unwrap();
        assert!(
            note.starts_with("xz blocks of 24 MiB (dictionary 8 MiB): decoding on one thread"),
            "{note}"
        );
        let note = block(12).thread_note(4, 64 << 20).unwrap();
        assert!(
            note.contains("decoding 2 blocks at a time instead of one per core (4)"),
            "{note}"
        );
    }

    #[test]
    fn large_blocks_decode_correctly_under_the_budget() {
        // 40 MiB blocks cannot be buffered within the budget: liblzma decodes them directly.
        let data: Vec<u8> = (0..48u32 << 20).map(|i| (i % 253) as u8).collect();
        let xz = xz_tool(&data, &["-0", "-T2", "--block-size=40MiB"]);
        let mut out = Vec::new();
        decoder(Format::Xz, io::BufReader::new(io::Cursor::new(xz)))
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == data);
    }
}
