//! `pi-image build`: node images, or with `--compress` release artifacts, or with `--chunked` a
//! shared-chunk release.

use crate::base::cache::Cache;
use crate::build::{self, BuildOptions};
use crate::cli::{BuildArgs, Global};
use crate::dist::chunks::{ChunkStore, Codec, Compression};
use crate::dist::nodeindex::CHUNKS_DIR;
use crate::dist::shared::{self, SharedNode, SharedOptions};
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
    // --chunked compresses its chunks too, with xz unless --compress says otherwise.
    let codec = match args.chunked {
        true => Some(args.compress.unwrap_or(Codec::Xz)),
        false => args.compress,
    };
    let compression = codec
        .map(|c| Compression::new(c, args.level).map_err(|e| anyhow::anyhow!("--level: {e}")))
        .transpose()?;
    let mut base = super::resolve_base(&profile, args.base, global, &args.fetch)?;
    let opts = BuildOptions {
        base: base.path().to_owned(),
        out_dir: args.out,
        epoch: super::source_date_epoch()?,
    };
    let Some(compression) = compression else {
        for img in build::build_nodes(&profile, &nodes, &opts)? {
            println!(
                "{:<8} {}  {:>6} MiB  sha256 {}  target {}  {}",
                img.node,
                img.path.display(),
                img.size >> 20,
                img.sha256,
                img.target,
                img.release
            );
        }
        return Ok(());
    };
    let jobs = match args.jobs {
        Some(j) => j as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if args.chunked {
        let shared = SharedOptions {
            compression,
            jobs,
            image_sha256: args.image_sha256,
        };
        let written =
            shared::build_shared_release(&profile, &nodes, &opts, &shared, &mut print_shared)?;
        println!(
            "{} updated: {} nodes, chunks in {}",
            opts.out_dir.join(dist::SHA256SUMS).display(),
            written.len(),
            opts.out_dir.join(CHUNKS_DIR).display()
        );
        return Ok(());
    }
    // The chunk store is part of the cache: its lock is held while chunks are written.
    let cache = Cache::open_or_default(global.cache_dir())?;
    base.hold_cache_lock(&cache)?;
    let store = ChunkStore::open(cache.dir(), compression)?;
    dist::build_artifacts(&profile, &nodes, &opts, &store, jobs, &mut print_artifact)?;
    println!(
        "{}, {} updated",
        opts.out_dir.join(dist::SHA256SUMS).display(),
        opts.out_dir.join(dist::OS_LIST).display()
    );
    Ok(())
}

/// One line per node as its index is written.
fn print_shared(n: &SharedNode) {
    println!(
        "{:<8} {}  {} MiB  chunks {}: {} new ({:.1} KiB)  {}{:.2} s",
        n.node,
        n.index.display(),
        n.image_size >> 20,
        n.chunks,
        n.new_chunks,
        n.new_bytes as f64 / 1024.0,
        n.image_sha256
            .as_ref()
            .map_or(String::new(), |s| format!("sha256 {s}  ")),
        n.elapsed.as_secs_f64()
    );
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
