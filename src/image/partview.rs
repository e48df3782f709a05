//! A byte-range view of one partition inside an image file.
//!
//! Filesystem code gets a [`PartitionView`] instead of the image file, so it can only read and
//! write the bytes of its own partition: position 0 of the view is the partition's first byte,
//! and reads, writes and seeks past its end are refused.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// A window `[offset, offset + len)` onto an underlying `Read + Write + Seek` (an image file).
#[derive(Debug)]
pub struct PartitionView<F> {
    inner: F,
    offset: u64,
    len: u64,
    pos: u64,
}

impl<F: Seek> PartitionView<F> {
    /// A view of `len` bytes starting at byte `offset` of `inner`.
    pub fn new(mut inner: F, offset: u64, len: u64) -> io::Result<Self> {
        inner.seek(SeekFrom::Start(offset))?;
        Ok(PartitionView {
            inner,
            offset,
            len,
            pos: 0,
        })
    }

    /// The length of the partition in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length partition.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The underlying file back.
    pub fn into_inner(self) -> F {
        self.inner
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
}

impl<F: Read + Seek> Read for PartitionView<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining()).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<F: Write + Seek> Write for PartitionView<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf
            .len()
            .min(usize::try_from(self.remaining()).unwrap_or(usize::MAX));
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<F: Seek> Seek for PartitionView<F> {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let target = match from {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.filter(|&t| t <= self.len).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek outside the partition")
        })?;
        self.inner.seek(SeekFrom::Start(self.offset + target))?;
        self.pos = target;
        Ok(target)
    }
}

/// A file opened for reading, usable where `Read + Write + Seek` is required (a filesystem
/// library that opens volumes read-write): every write fails, so inspecting can never change
/// the image.
#[derive(Debug)]
pub struct ReadOnly<F>(pub F);

impl<F: Read> Read for ReadOnly<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<F: Seek> Seek for ReadOnly<F> {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        self.0.seek(from)
    }
}

impl<F> Write for ReadOnly<F> {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "opened read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_and_writes_stay_inside_the_window() {
        let mut backing = Cursor::new(vec![0u8; 32]);
        {
            let mut view = PartitionView::new(&mut backing, 8, 8).unwrap();
            view.write_all(b"abcdefgh").unwrap();
            assert!(view.write(b"x").is_err());
            view.seek(SeekFrom::Start(2)).unwrap();
            let mut buf = [0u8; 16];
            assert_eq!(view.read(&mut buf).unwrap(), 6);
            assert_eq!(&buf[..6], b"cdefgh");
            assert!(view.seek(SeekFrom::Start(9)).is_err());
            assert_eq!(view.seek(SeekFrom::End(-1)).unwrap(), 7);
        }
        let data = backing.into_inner();
        assert_eq!(&data[..8], &[0u8; 8]);
        assert_eq!(&data[8..16], b"abcdefgh");
        assert_eq!(&data[16..], &[0u8; 16]);
    }
}
