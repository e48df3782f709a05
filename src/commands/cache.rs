//! `pi-image cache list|clean`.

use crate::base::cache::{self, Cache};
use crate::cli::{CacheCommand, Global};
use crate::dist::chunks::ChunkStore;

/// List the cached images, or remove them and the chunk store.
pub fn cache(global: &Global, action: CacheCommand) -> anyhow::Result<()> {
    let cache = Cache::open_or_default(global.cache_dir())?;
    let _lock = cache.lock()?;
    match action {
        CacheCommand::List => print!("{}", cache::list_table(&cache.list()?)),
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
