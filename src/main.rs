//! The `pi-image` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use pi_image::image::blockmap::BlockMap;
use pi_image::build::{self, BuildOptions};
use pi_image::dist::chunks::{ChunkStore, Codec, Compression};
use pi_image::flash::devices::{self, SysRoot};
use pi_image::dist::{self, Shard};
use pi_image::bootconf::eeprom::BootOrder;
use pi_image::build::eeprom::{self, EepromSpec};
use pi_image::base::fetch::{self, FetchOptions, SignaturePolicy};
use pi_image::flash::{self, FlashOptions, Job, NodeImages, Source, Target};
use pi_image::image::PendingOutput;
use pi_image::profile::{BaseSpec, Profile};
use pi_image::base::cache;
use pi_image::commands::inspect;
use pi_image::profile;

/// Turn the stock Ubuntu Raspberry Pi image into per-node, ready-to-boot images for a cluster.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The cluster profile.
    #[arg(long, global = true, default_value = "profiles/cluster.toml")]
    profile: PathBuf,
    /// The image cache [default: $XDG_CACHE_HOME/pi-image, else ~/.cache/pi-image].
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// How a base image named by URL is downloaded and verified.
#[derive(Args)]
struct FetchArgs {
    /// Never touch the network: use the cached image, or fail if the cache lacks it.
    #[arg(long)]
    offline: bool,
    /// OpenPGP public key trusted to sign SHA256SUMS (armored or binary) [default: the built-in
    /// Ubuntu CD image signing key].
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// Do NOT check the OpenPGP signature of SHA256SUMS (the checksum itself is still checked).
    #[arg(long, conflicts_with = "signing_key")]
    insecure_skip_signature: bool,
    /// Retries of an interrupted download or a server error (each resumes where it stopped).
    #[arg(long, default_value_t = 3)]
    retries: u32,
}

impl FetchArgs {
    fn options(&self) -> FetchOptions {
        FetchOptions {
            offline: self.offline,
            retries: self.retries,
            signature: if self.insecure_skip_signature {
                SignaturePolicy::Skip
            } else {
                SignaturePolicy::Verify(self.signing_key.clone())
            },
            progress: true,
        }
    }
}

/// Where sysfs and procfs are read (a fake tree in tests).
#[derive(Args)]
struct SysArgs {
    #[arg(long, hide = true, env = "PI_IMAGE_SYSROOT", default_value = "/")]
    sys_root: PathBuf,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// What is cached: release, raw size, sha256, last use, source URL.
    List,
    /// Remove every cached image and partial download.
    Clean,
}

#[derive(Subcommand)]
enum Command {
    /// Build one image per node: `<out>/<node>.img`, or with --compress `<out>/<node>.img.xz`
    /// (.zst, .gz) plus SHA256SUMS and os_list.json.
    Build {
        /// The node to build (repeatable).
        #[arg(long, required_unless_present = "all")]
        node: Vec<String>,
        /// Build every node of the profile.
        #[arg(long, conflicts_with = "node")]
        all: bool,
        /// With --all: build only nodes K, K+N, K+2N, ... of the profile (1-based), e.g. 2/4.
        #[arg(long, value_name = "K/N", conflicts_with = "node")]
        shard: Option<Shard>,
        /// Write compressed release artifacts (xz, zstd or gz) instead of raw images.
        #[arg(long, value_name = "FORMAT")]
        compress: Option<Codec>,
        /// Compression level [default: xz 6, zstd 19, gz 6].
        #[arg(long, requires = "compress")]
        level: Option<u32>,
        /// Threads for compressing [default: the number of CPUs]; the output does not depend on it.
        #[arg(long, value_name = "N", requires = "compress", value_parser = clap::value_parser!(u32).range(1..))]
        jobs: Option<u32>,
        /// The base image (.img or .img.xz); overrides the profile's `base`.
        #[arg(long)]
        base: Option<PathBuf>,
        /// Output directory.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        #[command(flatten)]
        fetch: FetchArgs,
    },
    /// Download the profile's base image into the cache and verify it (once; later runs reuse it).
    Fetch {
        #[command(flatten)]
        fetch: FetchArgs,
    },
    /// Show or clear the image cache.
    Cache {
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// Show what is in an image: partitions, release, effective config.txt, cmdline, cloud-init.
    Inspect {
        /// The image to inspect.
        image: PathBuf,
        /// The board whose effective config.txt to show (pi4, pi400, cm4, pi3, ...).
        #[arg(long, default_value = "pi4")]
        model: String,
    },
    /// List the nodes a profile defines.
    Nodes,
    /// List the disks an image could be flashed to: size, model, serial, transport, what uses them.
    Devices {
        #[command(flatten)]
        sys: SysArgs,
    },
    /// Write an image to one or more disks (or files), verified; or build nodes and write them
    /// to disks with `--node NODE DEVICE`.
    Flash {
        /// IMAGE DEVICE [DEVICE...]: an .img, .img.xz, .img.gz or .img.zst and where it goes
        /// (nothing with --node).
        #[arg(value_name = "IMAGE DEVICE")]
        args: Vec<PathBuf>,
        /// Build NODE from the base and write it to DEVICE (repeatable); the image is built in a
        /// temporary directory in the cache and deleted afterwards.
        #[arg(long, num_args = 2, value_names = ["NODE", "DEVICE"])]
        node: Vec<String>,
        /// The base image for --node (.img or .img.xz); overrides the profile's `base`.
        #[arg(long, requires = "node")]
        base: Option<PathBuf>,
        /// Write to regular files instead of block devices (image copies, tests).
        #[arg(long)]
        to_file: bool,
        /// Skip reading everything back after writing.
        #[arg(long)]
        no_verify: bool,
        /// Allow an internal (non-removable, non-USB) disk.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        sys: SysArgs,
        #[command(flatten)]
        fetch: FetchArgs,
    },
    /// Check that a disk (or file) holds an image, without writing.
    Verify {
        /// The image (.img, .img.xz, .img.gz, .img.zst; a .bmap beside it is used).
        image: PathBuf,
        /// The disk or file to check.
        device: PathBuf,
    },
    /// Write a block map (bmaptool's .bmap format) of a raw image: the blocks a copy needs.
    Bmap {
        /// The raw image.
        image: PathBuf,
        /// The .bmap file to write [default: IMAGE.bmap].
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Write a small SD card image that updates a Pi 4's bootloader EEPROM (boot order, settings).
    Eeprom {
        /// BOOT_ORDER, read right to left: 0xf14 = USB, then SD, then restart.
        #[arg(long)]
        boot_order: String,
        /// Another bootloader setting, KEY=VALUE (repeatable), e.g. POWER_OFF_ON_HALT=1.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The pieeprom-*.bin to start from (from the rpi-eeprom repository's firmware-2711).
        #[arg(long)]
        firmware: Option<PathBuf>,
        /// The recovery.bin of the same rpi-eeprom release.
        #[arg(long)]
        recovery: Option<PathBuf>,
        /// The card image to write.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pi-image: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build {
            node,
            all,
            shard,
            compress,
            level,
            jobs,
            base,
            out,
            fetch,
        } => {
            let profile = load_profile(&cli.profile)?;
            let nodes = if all {
                let every = profile.nodes.iter().collect::<Vec<_>>();
                match shard {
                    Some(s) => s.select(&every),
                    None => every,
                }
            } else {
                node.iter()
                    .map(|name| find_node(&profile, name))
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            let base_spec = match base {
                Some(b) => BaseSpec::Path(b),
                None => profile.base.clone(),
            };
            let compression = compress
                .map(|c| Compression::new(c, level).map_err(|e| anyhow::anyhow!("--level: {e}")))
                .transpose()?;
            // `_fetched` holds the cache lock until the build has read the base.
            let (base, _fetched) =
                fetch::base_for_build(&base_spec, cli.cache_dir.as_deref(), &fetch.options())?;
            let epoch = source_date_epoch()?;
            let opts = BuildOptions {
                base,
                out_dir: out,
                epoch,
            };
            if let Some(compression) = compression {
                let cache = fetch::open_cache(cli.cache_dir.as_deref())?;
                // The chunk store is part of the cache: hold its lock (`_fetched` may already).
                let _lock = match _fetched {
                    Some(_) => None,
                    None => Some(cache.lock()?),
                };
                let store = ChunkStore::open(cache.dir(), compression)?;
                let jobs = match jobs {
                    Some(j) => j as usize,
                    None => std::thread::available_parallelism().map_or(1, |n| n.get()),
                };
                dist::build_artifacts(&profile, &nodes, &opts, &store, jobs, &mut |a| {
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
                })?;
                println!(
                    "{}, {} updated",
                    opts.out_dir.join(dist::SHA256SUMS).display(),
                    opts.out_dir.join(dist::OS_LIST).display()
                );
                return Ok(());
            }
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
            Ok(())
        }
        Command::Fetch { fetch } => {
            let profile = load_profile(&cli.profile)?;
            let BaseSpec::Url(remote) = &profile.base else {
                bail!(
                    "{}: cluster.base is a local file, nothing to fetch",
                    profile.path.display()
                );
            };
            let cache = fetch::open_cache(cli.cache_dir.as_deref())?;
            let fetched = fetch::fetch(&cache, remote, &fetch.options())?;
            let m = &fetched.entry.meta;
            println!(
                "{}  {} MiB raw  sha256 {}  {}  ({})",
                fetched.entry.image.display(),
                m.raw_size >> 20,
                m.compressed_sha256,
                m.release.as_deref().unwrap_or("release unknown"),
                if fetched.downloaded {
                    "downloaded and verified"
                } else {
                    "already cached"
                }
            );
            Ok(())
        }
        Command::Cache { action } => {
            let cache = fetch::open_cache(cli.cache_dir.as_deref())?;
            let _lock = cache.lock()?;
            match action {
                CacheCommand::List => print!("{}", cache::list_table(&cache.list()?)),
                CacheCommand::Clean => {
                    let c = cache.clean()?;
                    println!(
                        "removed {} files ({} MiB) from {}",
                        c.files,
                        c.bytes >> 20,
                        cache.dir().display()
                    );
                }
            }
            Ok(())
        }
        Command::Inspect { image, model } => {
            let model = model
                .parse()
                .map_err(|e| anyhow::anyhow!("--model {model}: {e}"))?;
            print!("{}", inspect::inspect(&image, model)?);
            Ok(())
        }
        Command::Eeprom {
            boot_order,
            set,
            firmware,
            recovery,
            out,
        } => {
            let spec = EepromSpec {
                boot_order: BootOrder::parse(&boot_order)
                    .map_err(|e| anyhow::anyhow!("--boot-order: {e}"))?,
                settings: set
                    .iter()
                    .map(|s| {
                        eeprom::parse_setting(s).map_err(|e| anyhow::anyhow!("--set: {e}"))
                    })
                    .collect::<anyhow::Result<_>>()?,
                firmware,
                recovery,
            };
            let epoch = source_date_epoch()?;
            let files = eeprom::update_files(&spec, epoch)?;
            let card = eeprom::write_card(&files, &out, epoch)?;
            println!(
                "{}  {} MiB  BOOT_ORDER={} ({})  pieeprom.upd sha256 {}",
                card.path.display(),
                card.size >> 20,
                files.boot_order,
                files.boot_order.describe(),
                card.upd_sha256
            );
            Ok(())
        }
        Command::Devices { sys } => {
            print!(
                "{}",
                devices::table(&devices::list(&SysRoot::new(sys.sys_root))?)
            );
            Ok(())
        }
        Command::Flash {
            args,
            node,
            base,
            to_file,
            no_verify,
            force,
            yes,
            sys,
            fetch,
        } => {
            // Keeps the cache lock and the temporary node images until flashing is done.
            let mut _keep = None;
            let mut pairs: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
            if node.is_empty() {
                let Some((image, devs)) = args.split_first() else {
                    bail!("flash: give IMAGE DEVICE [DEVICE...], or --node NODE DEVICE");
                };
                if devs.is_empty() {
                    bail!("flash: no DEVICE given after {}", image.display());
                }
                pairs.push((image.clone(), devs.to_vec()));
            } else {
                if !args.is_empty() {
                    bail!(
                        "flash: with --node NODE DEVICE give no IMAGE (got {})",
                        args[0].display()
                    );
                }
                let profile = load_profile(&cli.profile)?;
                let mut nodes = Vec::new();
                for pair in node.chunks(2) {
                    nodes.push(find_node(&profile, &pair[0])?);
                }
                let base_spec = match base {
                    Some(b) => BaseSpec::Path(b),
                    None => profile.base.clone(),
                };
                let (base, fetched) =
                    fetch::base_for_build(&base_spec, cli.cache_dir.as_deref(), &fetch.options())?;
                let cache = fetch::open_cache(cli.cache_dir.as_deref())?;
                let built =
                    NodeImages::build(&profile, &nodes, base, cache.dir(), source_date_epoch()?)?;
                for ((_, image), pair) in built.images.iter().zip(node.chunks(2)) {
                    pairs.push((image.clone(), vec![PathBuf::from(&pair[1])]));
                }
                _keep = Some((built, fetched));
            }
            // The same disk twice would get two writers racing each other.
            let mut seen = std::collections::HashSet::new();
            for dev in pairs.iter().flat_map(|(_, devs)| devs) {
                let key = std::fs::canonicalize(dev).unwrap_or_else(|_| dev.clone());
                if !seen.insert(key) {
                    bail!("flash: {} is given more than once", dev.display());
                }
            }
            let root = SysRoot::new(sys.sys_root);
            let mut jobs = Vec::new();
            for (image, devs) in pairs {
                let mut source = Source::open(&image)?;
                if source.map.is_none() && !to_file {
                    eprintln!(
                        "pi-image: no .bmap beside {}: reading it once to learn its size, then writing every block (`pi-image bmap` on the raw image avoids both)",
                        image.display()
                    );
                }
                let size = if to_file {
                    source.size.unwrap_or(0)
                } else {
                    source.learn_size()?
                };
                let targets = devs
                    .iter()
                    .map(|d| Target::check(d, &image, size, to_file, force, &root))
                    .collect::<Result<Vec<_>, _>>()?;
                jobs.push(Job { source, targets });
            }
            if !yes && !to_file {
                flash::confirm(&jobs, &mut std::io::stdin().lock(), &mut std::io::stderr())?;
            }
            let outcomes = flash::flash(
                &jobs,
                FlashOptions {
                    verify: !no_verify,
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
        Command::Verify { image, device } => {
            let source = Source::open(&image)?;
            let checked = flash::verify(&source, &device, true)?;
            println!(
                "{}: matches {} ({} checked)",
                device.display(),
                image.display(),
                devices::human(checked)
            );
            Ok(())
        }
        Command::Bmap { image, out } => {
            let out = out.unwrap_or_else(|| {
                let mut name = image.clone().into_os_string();
                name.push(".bmap");
                PathBuf::from(name)
            });
            let map = BlockMap::of_image(&image)?;
            let mut pending = PendingOutput::create(&out)?;
            map.write_bmap(&image, pending.file())
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
        Command::Nodes => {
            let profile = load_profile(&cli.profile)?;
            print!("{}", inspect::nodes_table(&profile));
            Ok(())
        }
    }
}

fn find_node<'p>(profile: &'p Profile, name: &str) -> anyhow::Result<&'p profile::Node> {
    profile.node(name).with_context(|| {
        format!(
            "{}: no node named '{name}' (nodes: {})",
            profile.path.display(),
            profile
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn load_profile(path: &std::path::Path) -> anyhow::Result<Profile> {
    Ok(profile::Profile::load(path)?)
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org) or the fixed default.
fn source_date_epoch() -> anyhow::Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970")
        }),
        Err(_) => Ok(build::DEFAULT_EPOCH),
    }
}
