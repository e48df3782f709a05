//! The command line: clap's types for every subcommand, with their help text. `main.rs` parses
//! a [`Cli`] and hands each subcommand's arguments to its function in [`crate::commands`].

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::base::fetch::{FetchOptions, SignaturePolicy};
use crate::dist::Shard;
use crate::dist::chunks::Codec;

/// Turn the stock Ubuntu Raspberry Pi image into per-node, ready-to-boot images for a cluster.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: Global,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Args)]
pub struct Global {
    /// The cluster profile.
    #[arg(long, global = true, default_value = "profiles/cluster.toml")]
    pub profile: PathBuf,
    /// The image cache [default: $XDG_CACHE_HOME/pi-image, else ~/.cache/pi-image].
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,
}

impl Global {
    /// The cache directory given, if any.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Build one image per node: `<out>/<node>.img`, or with --compress `<out>/<node>.img.xz`
    /// (.zst, .gz) plus SHA256SUMS and os_list.json, or with --chunked a shared-chunk release.
    Build(BuildArgs),
    /// Write one node's raw image out of a shared-chunk release (`build --chunked`), checked.
    Extract(ExtractArgs),
    /// Download the profile's base image into the cache and verify it (once; later runs reuse it).
    Fetch(FetchArgs),
    /// Show or clear the image cache.
    Cache {
        /// What to do.
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// Show what is in an image: partitions, release, effective config.txt, cmdline, cloud-init.
    Inspect(InspectArgs),
    /// List the nodes a profile defines.
    Nodes,
    /// List the disks an image could be flashed to: size, model, serial, transport, what uses them.
    Devices(SysArgs),
    /// Write an image to one or more disks (or files), verified; or build nodes and write them
    /// to disks with `--node NODE DEVICE`.
    Flash(FlashArgs),
    /// Check that a disk (or file) holds an image, without writing.
    Verify(VerifyArgs),
    /// Write a block map (bmaptool's .bmap format) of a raw image: the blocks a copy needs.
    Bmap(BmapArgs),
    /// Write a small SD card image that updates a Pi 4's bootloader EEPROM (boot order, settings).
    Eeprom(EepromArgs),
}

/// How a base image named by URL is downloaded and verified.
#[derive(Args)]
pub struct FetchArgs {
    /// Never touch the network: use the cached image, or fail if the cache lacks it.
    #[arg(long)]
    pub offline: bool,
    /// OpenPGP public key trusted to sign SHA256SUMS (armored or binary) [default: the built-in
    /// Ubuntu CD image signing key].
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Do NOT check the OpenPGP signature of SHA256SUMS (the checksum itself is still checked).
    #[arg(long, conflicts_with = "signing_key")]
    pub insecure_skip_signature: bool,
    /// Retries of an interrupted download or a server error (each resumes where it stopped).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
}

impl FetchArgs {
    /// The fetch options these arguments ask for.
    pub fn options(&self) -> FetchOptions {
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
pub struct SysArgs {
    /// The root sysfs and procfs are read under.
    #[arg(long, hide = true, env = "PI_IMAGE_SYSROOT", default_value = "/")]
    pub sys_root: PathBuf,
}

/// `pi-image cache` subcommands.
#[derive(Subcommand)]
pub enum CacheCommand {
    /// What is cached: release, raw size, sha256, last use, source URL.
    List,
    /// Remove every cached image and partial download.
    Clean,
}

/// `pi-image build`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("packed").args(["compress", "chunked"]).multiple(true)))]
pub struct BuildArgs {
    /// The node to build (repeatable).
    #[arg(long, required_unless_present = "all")]
    pub node: Vec<String>,
    /// Build every node of the profile.
    #[arg(long, conflicts_with = "node")]
    pub all: bool,
    /// With --all: build only nodes K, K+N, K+2N, ... of the profile (1-based), e.g. 2/4.
    #[arg(long, value_name = "K/N", conflicts_with = "node")]
    pub shard: Option<Shard>,
    /// Write compressed release artifacts (xz, zstd or gz) instead of raw images; with
    /// --chunked, how the chunks are compressed [default there: xz].
    #[arg(long, value_name = "FORMAT")]
    pub compress: Option<Codec>,
    /// Write a shared-chunk release instead: one chunk store (`chunks/`) and a small index per
    /// node (`<node>.chunks.json`), for large clusters; read back with `extract` or
    /// `flash --release`.
    #[arg(long)]
    pub chunked: bool,
    /// With --chunked: also put each node's whole-image sha256 into its index (reads every
    /// image in full, which costs about as much per node as the rest of the release).
    #[arg(long, requires = "chunked")]
    pub image_sha256: bool,
    /// Compression level [default: xz 6, zstd 19, gz 6].
    #[arg(long, requires = "packed")]
    pub level: Option<u32>,
    /// Threads for compressing [default: the number of CPUs]; the output does not depend on it.
    #[arg(long, value_name = "N", requires = "packed", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// The base image (.img or .img.xz); overrides the profile's `base`.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// How the base is fetched.
    #[command(flatten)]
    pub fetch: FetchArgs,
}

/// `pi-image inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// The image to inspect.
    pub image: PathBuf,
    /// The board whose effective config.txt to show (pi4, pi400, cm4, pi3, ...).
    #[arg(long, default_value = "pi4")]
    pub model: String,
}

/// `pi-image flash`.
#[derive(Args)]
pub struct FlashArgs {
    /// IMAGE DEVICE [DEVICE...]: an .img, .img.xz, .img.gz or .img.zst and where it goes
    /// (nothing with --node).
    #[arg(value_name = "IMAGE DEVICE")]
    pub args: Vec<PathBuf>,
    /// Build NODE from the base and write it to DEVICE (repeatable); the image is built in a
    /// temporary directory in the cache and deleted afterwards.
    #[arg(long, num_args = 2, value_names = ["NODE", "DEVICE"])]
    pub node: Vec<String>,
    /// The base image for --node (.img or .img.xz); overrides the profile's `base`.
    #[arg(long, requires = "node", conflicts_with = "release")]
    pub base: Option<PathBuf>,
    /// Take --node's image from this shared-chunk release (`build --chunked`) instead of
    /// building it.
    #[arg(long, value_name = "DIR", requires = "node")]
    pub release: Option<PathBuf>,
    /// Write to regular files instead of block devices (image copies, tests).
    #[arg(long)]
    pub to_file: bool,
    /// Skip reading everything back after writing.
    #[arg(long)]
    pub no_verify: bool,
    /// Allow an internal (non-removable, non-USB) disk.
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Where sysfs and procfs are read.
    #[command(flatten)]
    pub sys: SysArgs,
    /// How the base is fetched (with --node).
    #[command(flatten)]
    pub fetch: FetchArgs,
}

/// `pi-image extract`.
#[derive(Args)]
pub struct ExtractArgs {
    /// The release directory (`build --chunked --out DIR`).
    #[arg(long, value_name = "DIR")]
    pub release: PathBuf,
    /// The node whose image to write.
    #[arg(long)]
    pub node: String,
    /// The raw image to write (sparse; renamed into place only when complete and checked).
    #[arg(short, long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `pi-image verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// The image (.img, .img.xz, .img.gz, .img.zst; a .bmap beside it is used).
    pub image: PathBuf,
    /// The disk or file to check.
    pub device: PathBuf,
}

/// `pi-image bmap`.
#[derive(Args)]
pub struct BmapArgs {
    /// The raw image.
    pub image: PathBuf,
    /// The .bmap file to write [default: IMAGE.bmap].
    #[arg(short, long)]
    pub out: Option<PathBuf>,
}

/// `pi-image eeprom`.
#[derive(Args)]
pub struct EepromArgs {
    /// BOOT_ORDER, read right to left: 0xf14 = USB, then SD, then restart.
    #[arg(long)]
    pub boot_order: String,
    /// Another bootloader setting, KEY=VALUE (repeatable), e.g. POWER_OFF_ON_HALT=1.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The pieeprom-*.bin to start from (from the rpi-eeprom repository's firmware-2711).
    #[arg(long)]
    pub firmware: Option<PathBuf>,
    /// The recovery.bin of the same rpi-eeprom release.
    #[arg(long)]
    pub recovery: Option<PathBuf>,
    /// The card image to write.
    #[arg(long)]
    pub out: PathBuf,
}
