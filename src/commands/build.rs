//! `pi-image build`: node images, or with `--compress` release artifacts.

use crate::base::cache::Cache;
use crate::build::{self, BuildOptions};
use crate::cli::{BuildArgs, Global};
use crate::dist::chunks::{ChunkStore, Compression};
use crate::dist::{self, Artifact};

/// Build the nodes asked for into `--out`.
pub fn build(global: &Global, args: BuildArgs) -> anyhow::Result<()> {
    let profile = super::load_profile(&global.profile)?;
    let nodes = if args.all {
        let every = profile.nodes.iter().collect::<Vec<_>>();
        match &args.shard {
            Some(s) => s.select(&every),
            None => every,
        }
    } else {
        args.node
            .iter()
            .map(|name| super::find_node(&profile, name))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let compression = args
        .compress
        .map(|c| Compression::new(c, args.level).map_err(|e| anyhow::anyhow!("--level: {e}")))
        .transpose()?;
    let mut base = super::resolve_base(&profile, args.base, global, &args.fetch)?;
    let opts = BuildOptions {
        base: base.path().to_owned(),
        out_dir: args.out,
        epoch: super::source_date_epoch()?,
    };
    let Some(compression) = compression else {
        for img in build::build_nodes(&profile, &nodes, &opts, !args.no_sha256)? {
            println!(
                "{:<8} {}  {:>6} MiB  {}target {}  {}",
                img.node,
                img.path.display(),
                img.size >> 20,
                img.sha256
                    .map_or_else(String::new, |h| format!("sha256 {h}  ")),
                img.target,
                img.release
            );
        }
        return Ok(());
    };
    // The chunk store is part of the cache: its lock is held while chunks are written.
    let cache = Cache::open_or_default(global.cache_dir())?;
    base.hold_cache_lock(&cache)?;
    let store = ChunkStore::open(cache.dir(), compression)?;
    let jobs = match args.jobs {
        Some(j) => j as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    dist::build_artifacts(&profile, &nodes, &opts, &store, jobs, &mut print_artifact)?;
    println!(
        "{}, {} updated",
        opts.out_dir.join(dist::SHA256SUMS).display(),
        opts.out_dir.join(dist::OS_LIST).display()
    );
    Ok(())
}

/// One line per node as its artifact is done.
fn print_artifact(a: &Artifact) {
    let c = &a.compressed;
    println!(
        "{:<8} {}  {:>8.1} MiB (raw {} MiB)  sha256 {}  chunks {}: {} compressed, {} from cache  {:.1} s",
        a.node,
        c.path.display(),
        c.size as f64 / 1048576.0,
        c.raw_size >> 20,
        c.sha256,
        c.chunks,
        c.compressed,
        c.reused,
        a.elapsed.as_secs_f64()
    );
}
