//! `pi-image bmap`: write a raw image's block map in bmaptool's format.

use std::fs::File;
use std::path::PathBuf;

use anyhow::Context;

use crate::cli::BmapArgs;
use crate::image::PendingOutput;
use crate::image::blockmap::BlockMap;
use crate::image::bmap;
use crate::io::AtPath;

/// Write `IMAGE.bmap` (or `--out`).
pub fn bmap(args: BmapArgs) -> anyhow::Result<()> {
    let BmapArgs { image, out } = args;
    let out = out.unwrap_or_else(|| {
        let mut name = image.clone().into_os_string();
        name.push(".bmap");
        PathBuf::from(name)
    });
    let map = BlockMap::of_image(&image)?;
    let mut pending = PendingOutput::create(&out)?;
    let mut file = File::open(&image).at(&image)?;
    bmap::write(&map, &mut file, &image, pending.file())
        .with_context(|| format!("writing {}", out.display()))?;
    pending.commit()?;
    println!(
        "{}  {} of {} MiB mapped ({} ranges)",
        out.display(),
        map.mapped_bytes() >> 20,
        map.image_size >> 20,
        map.ranges.len()
    );
    Ok(())
}
