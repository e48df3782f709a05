//! `pi-image build`: node images, or with `--compress` release artifacts, or with `--chunked` a
//! shared-chunk release; each recorded in the output directory's build record.

use std::path::Path;

use serde::Serialize;

use crate::base::BaseImage;
use crate::base::cache::Cache;
use crate::cli::{BuildArgs, Global};
use crate::dist::chunks::{ChunkStore, Codec, Compression};
use crate::dist::nodeindex::CHUNKS_DIR;
use crate::dist::shared::{self, SharedNode, SharedOptions};
use crate::dist::{self, Artifact};
use crate::outdir::record::CHUNKED;
use crate::outdir::{self, OutDir, Recorder};

/// Build the nodes asked for into `--out`, and record them as the last build there.
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
    let req = super::request(&profile, args.base, global, &args.fetch)?;
    // Taken before the cache's lock, as every run does.
    let out = OutDir::for_building(&args.out)?;
    let Some(compression) = compression else {
        let images = outdir::build_images(&out, &req, &nodes)?;
        if args.output.json {
            return super::print_json(&BuildJson {
                out_dir: out.path(),
                compress: None,
                chunked: false,
                images: images
                    .iter()
                    .map(|i| BuiltJson {
                        node: &i.node,
                        path: &i.path,
                        size: i.entry.size(),
                        sha256: i.entry.sha256(),
                        raw_size: None,
                        raw_sha256: None,
                        target: i.entry.target.clone(),
                        release: i.entry.release.clone(),
                    })
                    .collect(),
                sha256sums: None,
                os_list: None,
            });
        }
        for i in images {
            let e = &i.entry;
            println!(
                "{:<8} {}  {:>6} MiB  sha256 {}  target {}  {}",
                i.node,
                i.path.display(),
                e.size() >> 20,
                e.sha256(),
                e.target,
                e.release
            );
        }
        return Ok(());
    };
    let base_image = BaseImage::resolve(&req.base, req.cache_dir, &req.fetch)?;
    let mut recorder = Recorder::new(&out, &req, &base_image)?;
    let opts = crate::build::BuildOptions {
        base: base_image.path().to_owned(),
        out_dir: args.out.clone(),
        epoch: req.epoch,
    };
    let jobs = match args.jobs {
        Some(j) => j as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let json = args.output.json;
    if args.chunked {
        let shared = SharedOptions {
            compression,
            jobs,
            image_sha256: args.image_sha256,
        };
        let written = shared::build_shared_release(&profile, &nodes, &opts, &shared, &mut |n| {
            if !json {
                print_shared(n);
            }
        })?;
        // Recorded like any build: the record names each node's index (what `flash DEVICE`
        // then writes, from the release), with the index file's sha256.
        for (node, n) in nodes.iter().zip(&written) {
            recorder.add(
                node,
                &n.index,
                CHUNKED,
                &n.index_sha256,
                &n.release.to_string(),
            )?;
        }
        recorder.finish(true)?;
        let sums = opts.out_dir.join(dist::SHA256SUMS);
        if json {
            return super::print_json(&BuildJson {
                out_dir: out.path(),
                compress: Some(compression.codec.name()),
                chunked: true,
                images: written
                    .iter()
                    .map(|n| BuiltJson {
                        node: &n.node,
                        path: &n.index,
                        size: n.index_size,
                        sha256: &n.index_sha256,
                        raw_size: Some(n.image_size),
                        raw_sha256: n.image_sha256.as_deref(),
                        target: n.target.to_string(),
                        release: n.release.to_string(),
                    })
                    .collect(),
                sha256sums: Some(&sums),
                os_list: None,
            });
        }
        println!(
            "{} updated: {} nodes, chunks in {}",
            sums.display(),
            written.len(),
            opts.out_dir.join(CHUNKS_DIR).display()
        );
        return Ok(());
    }
    // The chunk store is part of the cache: its lock is held while chunks are written.
    let mut base_image = base_image;
    let cache = Cache::open_or_default(global.cache_dir())?;
    base_image.hold_cache_lock(&cache)?;
    let store = ChunkStore::open(cache.dir(), compression)?;
    let artifacts = dist::build_artifacts(&profile, &nodes, &opts, &store, jobs, &mut |a| {
        if !json {
            print_artifact(a);
        }
    })?;
    for (node, a) in nodes.iter().zip(&artifacts) {
        let c = &a.compressed;
        recorder.add(
            node,
            &c.path,
            compression.codec.name(),
            &c.sha256,
            &a.release.to_string(),
        )?;
    }
    recorder.finish(true)?;
    let sums = opts.out_dir.join(dist::SHA256SUMS);
    let os_list = opts.out_dir.join(dist::OS_LIST);
    if json {
        return super::print_json(&BuildJson {
            out_dir: out.path(),
            compress: Some(compression.codec.name()),
            chunked: false,
            images: artifacts
                .iter()
                .map(|a| BuiltJson {
                    node: &a.node,
                    path: &a.compressed.path,
                    size: a.compressed.size,
                    sha256: &a.compressed.sha256,
                    raw_size: Some(a.compressed.raw_size),
                    raw_sha256: Some(&a.compressed.raw_sha256),
                    target: a.target.to_string(),
                    release: a.release.to_string(),
                })
                .collect(),
            sha256sums: Some(&sums),
            os_list: Some(&os_list),
        });
    }
    println!("{}, {} updated", sums.display(), os_list.display());
    Ok(())
}

/// `build --json` (fields in README, "JSON output").
#[derive(Serialize)]
struct BuildJson<'a> {
    out_dir: &'a Path,
    compress: Option<&'a str>,
    chunked: bool,
    images: Vec<BuiltJson<'a>>,
    sha256sums: Option<&'a Path>,
    os_list: Option<&'a Path>,
}

/// One image of `build --json`.
#[derive(Serialize)]
struct BuiltJson<'a> {
    node: &'a str,
    path: &'a Path,
    size: u64,
    sha256: &'a str,
    raw_size: Option<u64>,
    raw_sha256: Option<&'a str>,
    target: String,
    release: String,
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
