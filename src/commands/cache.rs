//! `pi-image cache list|clean`.

use std::path::Path;

use serde::Serialize;

use crate::base::cache::{self, Cache, Metadata};
use crate::cli::{CacheCommand, Global};
use crate::dist::chunks::ChunkStore;

/// List the cached images (as a table or, with `--json`, one JSON document), or remove them
/// and the chunk store.
pub fn cache(global: &Global, action: CacheCommand) -> anyhow::Result<()> {
    let cache = Cache::open_or_default(global.cache_dir())?;
    let _lock = cache.lock()?;
    match action {
        CacheCommand::List(args) => {
            let entries = cache.list()?;
            if args.json {
                super::print_json(&CacheJson {
                    cache_dir: cache.dir(),
                    images: entries
                        .iter()
                        .map(|e| CachedJson {
                            image: &e.image,
                            meta: &e.meta,
                        })
                        .collect(),
                })?;
            } else {
                print!("{}", cache::list_table(&entries));
            }
        }
        CacheCommand::Clean => {
            let mut cleaned = cache.clean()?;
            ChunkStore::clean(cache.dir(), &mut cleaned)?;
            println!(
                "removed {} files ({} MiB) from {}",
                cleaned.files,
                cleaned.bytes >> 20,
                cache.dir().display()
            );
        }
    }
    Ok(())
}

/// `cache list --json` (fields in README, "JSON output").
#[derive(Serialize)]
struct CacheJson<'a> {
    cache_dir: &'a Path,
    images: Vec<CachedJson<'a>>,
}

/// One cached image: its file and its metadata's fields.
#[derive(Serialize)]
struct CachedJson<'a> {
    image: &'a Path,
    #[serde(flatten)]
    meta: &'a Metadata,
}
