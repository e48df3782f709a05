//! `pi-image extract`: one node's raw image out of a shared-chunk release.

use std::io::Read;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::cli::ExtractArgs;
use crate::dist::reader::ReleaseImage;
use crate::image::{PendingOutput, copy_sparse};
use crate::io::hex;

/// Write `--node`'s image from `--release` to `--out`: sparse, every chunk checked, renamed into
/// place only when all of it was written.
pub fn extract(args: ExtractArgs) -> anyhow::Result<()> {
    let image = ReleaseImage::open(&args.release, &args.node)?;
    let mut out = PendingOutput::create(&args.out)?;
    let mut hashed = Hashing {
        inner: image.reader(),
        sha: Sha256::new(),
    };
    let size = copy_sparse(&mut hashed, out.file()).with_context(|| {
        format!(
            "extracting node {} from {}",
            args.node,
            args.release.display()
        )
    })?;
    let path = out.commit()?;
    println!(
        "{:<8} {}  {} MiB  sha256 {}",
        args.node,
        path.display(),
        size >> 20,
        hex(&hashed.sha.finalize())
    );
    Ok(())
}

/// A reader that hashes what it yields.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}
