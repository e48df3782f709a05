//! `pi-image fetch`: the profile's base image into the cache.

use anyhow::bail;

use crate::base::cache::Cache;
use crate::base::fetch;
use crate::cli::{FetchArgs, Global};
use crate::profile::BaseSpec;

/// Download and verify the profile's base, unless the cache has it.
pub fn fetch(global: &Global, args: FetchArgs) -> anyhow::Result<()> {
    let profile = super::load_profile(&global.profile)?;
    let BaseSpec::Url(remote) = &profile.base else {
        bail!(
            "{}: cluster.base is a local file, nothing to fetch",
            profile.path.display()
        );
    };
    let cache = Cache::open_or_default(global.cache_dir())?;
    let fetched = fetch::fetch(&cache, remote, &args.options())?;
    let m = &fetched.entry.meta;
    // Says "verified" only for a pinned sha256 or a checked signature.
    let how = m.verification.as_ref().map_or_else(
        || "verification unknown (cached by an older pi-image)".to_string(),
        |v| v.to_string(),
    );
    println!(
        "{}  {} MiB raw  sha256 {}  {}  ({}; {how})",
        fetched.entry.image.display(),
        m.raw_size >> 20,
        m.compressed_sha256,
        m.release.as_deref().unwrap_or("release unknown"),
        if fetched.downloaded {
            "downloaded"
        } else {
            "already cached"
        }
    );
    Ok(())
}
