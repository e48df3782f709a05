//! Small stream tools every layer uses, one copy each: I/O errors that name their file
//! ([`PathError`], [`AtPath::at`]), reading until a buffer is full ([`read_full`]), lowercase
//! hex ([`hex`]), sha256 of a stream ([`sha256_hex`]), positioned reads of a byte range of a
//! shared file ([`FileRange`]), checksum files ([`sums`]), progress bars and log lines ([`progress`]) and UTC calendar
//! dates for timestamps ([`calendar`]); file stamps that tell whether a hash still holds
//! ([`stamp`]); temp files that are created exclusively, removed on
//! SIGINT/SIGTERM and swept once their owner is gone ([`tempfiles`], [`signal`]).

pub mod calendar;
pub mod progress;
pub mod signal;
pub mod stamp;
pub mod sums;
pub mod tempfiles;

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// An I/O error on a named file or device.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct PathError {
    /// The file or device.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

impl PathError {
    /// The error `source` on `path`.
    pub fn new(path: &Path, source: io::Error) -> PathError {
        PathError {
            path: path.to_owned(),
            source,
        }
    }
}

/// Name the file an I/O result is about: `File::open(p).at(p)?`.
pub trait AtPath<T> {
    /// The result, its error naming `path`.
    fn at(self, path: &Path) -> Result<T, PathError>;
}

impl<T> AtPath<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, PathError> {
        self.map_err(|source| PathError::new(path, source))
    }
}

/// Read until `buf` is full or the input ends; returns how many bytes were read.
pub fn read_full(src: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The sha256 of everything `src` yields, in hex.
pub fn sha256_hex(src: &mut (impl Read + ?Sized)) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = read_full(src, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Reads bytes `[pos, end)` of a file with positioned reads, so that threads can share the file
/// without sharing a cursor. A file shorter than `end` is an `UnexpectedEof` error.
pub struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> FileRange<'a> {
    /// `len` bytes of `file` from `start`.
    pub fn new(file: &'a File, start: u64, len: u64) -> FileRange<'a> {
        FileRange {
            file,
            pos: start,
            end: start.saturating_add(len),
        }
    }
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.end - self.pos).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file ends at byte {}, before byte {}",
                    self.pos, self.end
                ),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn sha256_of_a_stream() {
        assert_eq!(
            sha256_hex(&mut &b"abc"[..]).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn read_full_reads_across_short_reads() {
        let mut src = (&b"ab"[..]).chain(&b"cd"[..]);
        let mut buf = [0u8; 3];
        assert_eq!(read_full(&mut src, &mut buf).unwrap(), 3);
        assert_eq!(&buf, b"abc");
    }
}
