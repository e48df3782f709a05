//! The image to flash: opening it (raw, or `.xz`/`.gz`/`.zst` judged by content), finding its
//! block map (a `.bmap` beside it, else one made from a raw image's filesystems) and streaming
//! its raw bytes for the reader and for locating a verification mismatch. An image that comes
//! as a self-checking stream ([`Streamed`], e.g. a node's image in a shared-chunk release, which
//! `commands` wraps) is a source too.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{FlashError, PIECE_SIZE};
use crate::image::blockmap::BlockMap;
use crate::image::{self, Format, bmap};
use crate::io::{AtPath, read_full};

/// A raw image given as a stream that checks itself as it is read (a node's image in a
/// shared-chunk release): its size is known beforehand, it has no block map, and it is read
/// from its first byte only.
pub trait Streamed: std::fmt::Debug + Send + Sync {
    /// The raw image's length in bytes.
    fn size(&self) -> u64;
    /// The raw image's sha256, when known beforehand.
    fn sha256(&self) -> Option<&str>;
    /// The raw image from its first byte; a read fails where the bytes do not check.
    fn reader(&self) -> Box<dyn Read + Send>;
}

/// An image to flash: its compression, and the block map saying what to write.
#[derive(Debug, Clone)]
pub struct Source {
    /// The image file.
    pub path: PathBuf,
    /// How it is compressed.
    pub format: Format,
    /// What to write: from a `.bmap` beside the image if there is one, else (raw images) made
    /// from the filesystems' own maps; `None` for a compressed image without a `.bmap`, where
    /// every block is written (every non-zero block to a new file).
    pub map: Option<BlockMap>,
    /// The `.bmap` file the map was read from.
    pub bmap_path: Option<PathBuf>,
    /// The raw image's size, when known before reading it all.
    pub size: Option<u64>,
    /// The stream that gives the raw bytes, for a [`Streamed`] image (`path` only names it).
    pub streamed: Option<Arc<dyn Streamed>>,
}

impl Source {
    /// Open `path` (raw, `.xz`, `.gz` or `.zst`, judged by content) and find its block map:
    /// `IMAGE.bmap` (or, for `x.img.xz`, `x.img.bmap`) if present, else made from a raw image.
    pub fn open(path: &Path) -> Result<Source, FlashError> {
        let len = std::fs::metadata(path).at(path)?.len();
        let format = Format::of_file(path)?;
        let mut candidates = vec![with_suffix(path, ".bmap")];
        if format != Format::Raw
            && let Some(stem) = path.file_stem()
        {
            candidates.push(with_suffix(&path.with_file_name(stem), ".bmap"));
        }
        let bmap_path = candidates.into_iter().find(|p| p.is_file());
        let map = match &bmap_path {
            Some(b) => {
                let text = std::fs::read_to_string(b).at(b)?;
                let map = bmap::read(&text, &b.display().to_string())?;
                if format == Format::Raw && map.image_size != len {
                    return Err(FlashError::Source {
                        path: path.to_owned(),
                        reason: format!(
                            "has {len} bytes but {} describes an image of {} bytes",
                            b.display(),
                            map.image_size
                        ),
                    });
                }
                Some(map)
            }
            None if format == Format::Raw => Some(BlockMap::of_image(path)?),
            None => None,
        };
        let size = match (&map, format) {
            (Some(m), _) => Some(m.image_size),
            (None, Format::Raw) => Some(len),
            (None, _) => None,
        };
        Ok(Source {
            path: path.to_owned(),
            format,
            map,
            bmap_path,
            size,
            streamed: None,
        })
    }

    /// A [`Streamed`] image, named `path`: no block map (every block is written; to a new file
    /// only the non-zero ones), its bytes checked by the stream as they are read.
    pub fn streamed(path: &Path, image: Arc<dyn Streamed>) -> Source {
        Source {
            path: path.to_owned(),
            format: Format::Raw,
            map: None,
            bmap_path: None,
            size: Some(image.size()),
            streamed: Some(image),
        }
    }

    /// Whether the image is a raw file, readable at any offset (a verifier compares the target
    /// with it directly).
    pub fn is_raw_file(&self) -> bool {
        self.format == Format::Raw && self.streamed.is_none()
    }

    /// The raw image's size, decompressing the whole image once to count it if no `.bmap`
    /// says it (a device must be known to be large enough before anything is written).
    pub fn learn_size(&mut self) -> Result<u64, FlashError> {
        if let Some(s) = self.size {
            return Ok(s);
        }
        let mut stream = self.stream()?;
        let mut buf = vec![0u8; PIECE_SIZE];
        let mut n = 0u64;
        loop {
            let got = stream.read(&mut buf).map_err(|e| self.decode_err(e))?;
            if got == 0 {
                break;
            }
            n += got as u64;
        }
        self.size = Some(n);
        Ok(n)
    }

    /// The image as a stream of raw bytes.
    pub(super) fn stream(&self) -> Result<Stream, FlashError> {
        if let Some(image) = &self.streamed {
            return Ok(Stream::Decoded(image.reader(), 0));
        }
        let file = File::open(&self.path).at(&self.path)?;
        Ok(match self.format {
            Format::Raw => Stream::Raw(file),
            f => Stream::Decoded(
                image::decoder(f, BufReader::with_capacity(1 << 20, file)),
                0,
            ),
        })
    }

    /// The error for a failed read of the image's raw bytes.
    pub(super) fn decode_err(&self, e: io::Error) -> FlashError {
        FlashError::Image(image::ImageError::Decompress {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// The bytes that will be written (all of the image when there is no map).
    pub fn mapped_bytes(&self) -> Option<u64> {
        match &self.map {
            Some(m) => Some(m.mapped_bytes()),
            None => self.size,
        }
    }
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Raw image bytes from a file (seekable) or a decoder (skipped forward by reading).
pub(super) enum Stream {
    Raw(File),
    Decoded(Box<dyn Read>, u64),
}

impl Stream {
    /// Move to `pos` (never backwards for a decoder).
    pub(super) fn skip_to(&mut self, pos: u64, scratch: &mut [u8]) -> io::Result<()> {
        match self {
            Stream::Raw(f) => f.seek(SeekFrom::Start(pos)).map(|_| ()),
            Stream::Decoded(r, at) => {
                while *at < pos {
                    let n = usize::try_from(pos - *at)
                        .unwrap_or(usize::MAX)
                        .min(scratch.len());
                    let got = read_full(r, &mut scratch[..n])?;
                    if got == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the image ends at byte {at}"),
                        ));
                    }
                    *at += got as u64;
                }
                Ok(())
            }
        }
    }

    /// Read until `buf` is full or the image ends.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Raw(f) => read_full(f, buf),
            Stream::Decoded(r, at) => {
                let n = read_full(r, buf)?;
                *at += n as u64;
                Ok(n)
            }
        }
    }
}
