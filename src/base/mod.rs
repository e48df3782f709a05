//! The base image: a local file, or a download ([`fetch`]) verified against a pinned sha256 or a
//! signed ([`signature`]) `SHA256SUMS`, kept in the image [`cache`].

pub mod cache;
pub mod fetch;
pub mod signature;

use std::path::{Path, PathBuf};

use self::cache::{Cache, CacheError, CacheLock};
use self::fetch::{FetchError, FetchOptions};
use crate::profile::BaseSpec;

/// The raw (or compressed local) base image a build reads. A cached image comes with the cache
/// lock, held until this value is dropped, so that `pi-image cache clean` cannot remove the
/// image while it is read.
#[derive(Debug)]
pub struct BaseImage {
    path: PathBuf,
    /// For a download: the verified sha256 of the file downloaded (the cache key).
    download_sha256: Option<String>,
    lock: Option<CacheLock>,
}

impl BaseImage {
    /// The base `spec` names: a local path as it is, or for a URL the image in the cache at
    /// `cache_dir` (default: [`Cache::default_dir`]), fetched first if the cache lacks it (never
    /// with `opts.offline`). Only a URL base opens the cache.
    pub fn resolve(
        spec: &BaseSpec,
        cache_dir: Option<&Path>,
        opts: &FetchOptions,
    ) -> Result<BaseImage, FetchError> {
        match spec {
            BaseSpec::Path(p) => Ok(BaseImage {
                path: p.clone(),
                download_sha256: None,
                lock: None,
            }),
            BaseSpec::Url(remote) => {
                let cache = Cache::open_or_default(cache_dir)?;
                let mut fetched = fetch::fetch(&cache, remote, opts)?;
                cache.touch(&mut fetched.entry)?;
                Ok(BaseImage {
                    path: fetched.entry.image,
                    download_sha256: Some(fetched.entry.meta.compressed_sha256),
                    lock: Some(fetched.lock),
                })
            }
        }
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For a downloaded base, the verified sha256 of the downloaded file; `None` for a local file.
    pub fn download_sha256(&self) -> Option<&str> {
        self.download_sha256.as_deref()
    }

    /// Make sure the cache lock is held (a local base holds none yet) for work that also keeps
    /// files in the cache, such as the chunk store of release artifacts.
    pub fn hold_cache_lock(&mut self, cache: &Cache) -> Result<(), CacheError> {
        if self.lock.is_none() {
            self.lock = Some(cache.lock()?);
        }
        Ok(())
    }
}
