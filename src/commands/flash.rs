//! `pi-image flash` and `pi-image verify`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::base::cache::Cache;
use crate::build::{self, BuildOptions};
use crate::cli::{FlashArgs, Global, VerifyArgs};
use crate::dist::reader::ReleaseImage;
use crate::flash::devices::{self, SysRoot};
use crate::flash::{self, FlashOptions, Job, Source, Target};
use crate::io::AtPath;
use crate::profile::{Node, Profile};

/// Write images to disks (or files), each target checked before anything is written.
pub fn flash(global: &Global, args: FlashArgs) -> anyhow::Result<()> {
    // Built node images (and the cache lock of their base) live until flashing is done.
    let mut _built = None;
    let mut pairs: Vec<(Source, Vec<PathBuf>)> = Vec::new();
    if args.node.is_empty() {
        let Some((image, devs)) = args.args.split_first() else {
            bail!("flash: give IMAGE DEVICE [DEVICE...], or --node NODE DEVICE");
        };
        if devs.is_empty() {
            bail!("flash: no DEVICE given after {}", image.display());
        }
        pairs.push((Source::open(image)?, devs.to_vec()));
    } else if let Some(dir) = &args.release {
        if let Some(image) = args.args.first() {
            bail!(
                "flash: with --release DIR --node NODE DEVICE give no IMAGE (got {})",
                image.display()
            );
        }
        for pair in args.node.chunks(2) {
            let image = ReleaseImage::open(dir, &pair[0])?;
            pairs.push((Source::release(image), vec![PathBuf::from(&pair[1])]));
        }
    } else {
        if let Some(image) = args.args.first() {
            bail!(
                "flash: with --node NODE DEVICE give no IMAGE (got {})",
                image.display()
            );
        }
        let profile = super::load_profile(&global.profile)?;
        let nodes = args
            .node
            .chunks(2)
            .map(|pair| super::find_node(&profile, &pair[0]))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let base = super::resolve_base(&profile, args.base.clone(), global, &args.fetch)?;
        let cache = Cache::open_or_default(global.cache_dir())?;
        let images = NodeImages::build(
            &profile,
            &nodes,
            base.path(),
            cache.dir(),
            super::source_date_epoch()?,
        )?;
        for ((_, image), pair) in images.images.iter().zip(args.node.chunks(2)) {
            pairs.push((Source::open(image)?, vec![PathBuf::from(&pair[1])]));
        }
        _built = Some((images, base));
    }
    // The same disk twice would get two writers racing each other.
    let mut seen = HashSet::new();
    for dev in pairs.iter().flat_map(|(_, devs)| devs) {
        let key = std::fs::canonicalize(dev).unwrap_or_else(|_| dev.clone());
        if !seen.insert(key) {
            bail!("flash: {} is given more than once", dev.display());
        }
    }
    let root = SysRoot::new(args.sys.sys_root);
    let mut jobs = Vec::new();
    for (mut source, devs) in pairs {
        let image = source.path.clone();
        if source.map.is_none() && !args.to_file {
            match source.release {
                Some(_) => eprintln!(
                    "pi-image: {} has no block map: writing every block of the image",
                    image.display()
                ),
                None => eprintln!(
                    "pi-image: no .bmap beside {}: reading it once to learn its size, then writing every block (`pi-image bmap` on the raw image avoids both)",
                    image.display()
                ),
            }
        }
        let size = if args.to_file {
            source.size.unwrap_or(0)
        } else {
            source.learn_size()?
        };
        let targets = devs
            .iter()
            .map(|d| Target::check(d, &image, size, args.to_file, args.force, &root))
            .collect::<Result<Vec<_>, _>>()?;
        jobs.push(Job { source, targets });
    }
    if !args.yes && !args.to_file {
        flash::confirm(&jobs, &mut std::io::stdin().lock(), &mut std::io::stderr())?;
    }
    let outcomes = flash::flash(
        &jobs,
        FlashOptions {
            verify: !args.no_verify,
            progress: true,
        },
    );
    print!("{}", flash::summary(&outcomes));
    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err())
        .collect();
    for e in &failed {
        eprintln!("pi-image: error: {e}");
    }
    if !failed.is_empty() {
        bail!("{} of {} targets failed", failed.len(), outcomes.len());
    }
    Ok(())
}

/// Check that a disk (or file) holds an image, without writing.
pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let source = Source::open(&args.image)?;
    let checked = flash::verify(&source, &args.device, true)?;
    println!(
        "{}: matches {} ({} checked)",
        args.device.display(),
        args.image.display(),
        devices::human(checked)
    );
    Ok(())
}

/// Node images built only to be flashed: a directory in the image cache, removed with the value.
struct NodeImages {
    dir: PathBuf,
    /// (node name, image path) in the order asked for.
    images: Vec<(String, PathBuf)>,
}

impl NodeImages {
    /// Build `nodes` of `profile` from `base` into a fresh directory under `cache_dir`, exactly
    /// as `build` would (same code, same bytes), for flashing straight away.
    fn build(
        profile: &Profile,
        nodes: &[&Node],
        base: &Path,
        cache_dir: &Path,
        epoch: i64,
    ) -> anyhow::Result<NodeImages> {
        let dir = cache_dir.join(format!("flash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).at(&dir)?;
        let mut this = NodeImages {
            dir,
            images: Vec::new(),
        };
        let opts = BuildOptions {
            base: base.to_owned(),
            out_dir: this.dir.clone(),
            epoch,
        };
        this.images = build::build_nodes(profile, nodes, &opts)?
            .into_iter()
            .map(|b| (b.node, b.path))
            .collect();
        Ok(this)
    }
}

impl Drop for NodeImages {
    fn drop(&mut self) {
        // Best effort: nothing to report to, and a leftover directory only takes space.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
