//! The `pi-image` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use pi_image::build::{self, BuildOptions};
use pi_image::eeprom::BootOrder;
use pi_image::eepromcard::{self, EepromSpec};
use pi_image::fetch::{self, FetchOptions, SignaturePolicy};
use pi_image::profile::{BaseSpec, Profile};
use pi_image::{cache, inspect, profile};

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

#[derive(Subcommand)]
enum CacheCommand {
    /// What is cached: release, raw size, sha256, last use, source URL.
    List,
    /// Remove every cached image and partial download.
    Clean,
}

#[derive(Subcommand)]
enum Command {
    /// Build one image per node: `<out>/<node>.img`.
    Build {
        /// The node to build (repeatable).
        #[arg(long, required_unless_present = "all")]
        node: Vec<String>,
        /// Build every node of the profile.
        #[arg(long, conflicts_with = "node")]
        all: bool,
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
            base,
            out,
            fetch,
        } => {
            let profile = load_profile(&cli.profile)?;
            let nodes = if all {
                profile.nodes.iter().collect::<Vec<_>>()
            } else {
                node.iter()
                    .map(|name| {
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
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            let base_spec = match base {
                Some(b) => BaseSpec::Path(b),
                None => profile.base.clone(),
            };
            // `_fetched` holds the cache lock until the build has read the base.
            let (base, _fetched) =
                fetch::base_for_build(&base_spec, cli.cache_dir.as_deref(), &fetch.options())?;
            let epoch = source_date_epoch()?;
            let opts = BuildOptions {
                base,
                out_dir: out,
                epoch,
            };
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
                        eepromcard::parse_setting(s).map_err(|e| anyhow::anyhow!("--set: {e}"))
                    })
                    .collect::<anyhow::Result<_>>()?,
                firmware,
                recovery,
            };
            let epoch = source_date_epoch()?;
            let files = eepromcard::update_files(&spec, epoch)?;
            let card = eepromcard::write_card(&files, &out, epoch)?;
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
        Command::Nodes => {
            let profile = load_profile(&cli.profile)?;
            print!("{}", inspect::nodes_table(&profile));
            Ok(())
        }
    }
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
