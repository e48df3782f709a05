//! The command line: clap's types for every subcommand, with their help text. `main.rs` parses
//! a [`Cli`] and hands each subcommand's arguments to its function in [`crate::commands`].

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::base::fetch::{FetchOptions, SignaturePolicy};
use crate::dist::Shard;
use crate::dist::chunks::Codec;

/// Turn the stock Ubuntu Raspberry Pi image into per-node, ready-to-boot images for a cluster.
#[derive(Parser)]
#[command(version, about, after_help = EXIT_STATUS)]
pub struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: Global,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The exit statuses, shown under `pi-image --help` and in the man page.
const EXIT_STATUS: &str = "\
Exit status: 0 success, 1 error, 2 usage error (bad arguments), 3 `verify` found a difference.

Example:
  $ pi-image build --node pi3 && sudo pi-image flash /dev/sdb";

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

/// The subcommands. Each shows one real example under its `--help` (`after_help`, a line
/// starting `  $ `; a test parses every one of them).
#[derive(Subcommand)]
pub enum Command {
    /// Build one image per node: `<out>/<node>.img`, or with --compress `<out>/<node>.img.xz`
    /// (.zst, .gz) plus SHA256SUMS and os_list.json, or with --chunked a shared-chunk release;
    /// recorded in `<out>/.pi-image/build.json`.
    #[command(
        after_help = "Example: build node pi3 into out/pi3.img\n  $ pi-image build --node pi3"
    )]
    Build(BuildArgs),
    /// Write one node's raw image out of a shared-chunk release (`build --chunked`), checked.
    #[command(
        after_help = "Example: node w017's raw image out of the release in dist/\n  $ pi-image extract --release dist --node w017 -o w017.img"
    )]
    Extract(ExtractArgs),
    /// Download the profile's base image into the cache and verify it (once; later runs reuse it).
    #[command(
        after_help = "Example: download and verify the profile's base image\n  $ pi-image fetch --retries 5"
    )]
    Fetch(FetchArgs),
    /// Show or clear the image cache.
    #[command(after_help = "Example: what is cached, as JSON\n  $ pi-image cache list --json")]
    Cache {
        /// What to do.
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// Show what is in an image: partitions, release, effective config.txt, cmdline, cloud-init.
    #[command(
        after_help = "Example: the config.txt a Pi 3 would see in out/pi3.img\n  $ pi-image inspect out/pi3.img --model pi3"
    )]
    Inspect(InspectArgs),
    /// List the nodes a profile defines.
    #[command(
        after_help = "Example: the nodes of another profile\n  $ pi-image nodes --profile profiles/cluster.toml"
    )]
    Nodes(JsonArg),
    /// List the disks an image could be flashed to: size, model, serial, transport, what uses them.
    #[command(after_help = "Example: find the SD card or SSD to flash\n  $ pi-image devices")]
    Devices(DevicesArgs),
    /// Write a node's image to a disk: `flash DEVICE` writes what the last `build` wrote,
    /// `flash DEVICE --node NODE` the node's current image (built first when missing or
    /// stale), `flash IMAGE DEVICE...` any image; every write is read back and compared.
    #[command(
        after_help = "Example: build out/pi3.img if it is missing or stale, then write it to /dev/sdb\n  $ pi-image flash /dev/sdb --node pi3"
    )]
    Flash(FlashArgs),
    /// Check that a disk (or file) holds an image, without writing (exit status 3 if it does not).
    #[command(
        after_help = "Example: check a card written earlier\n  $ pi-image verify out/pi3.img /dev/sdb"
    )]
    Verify(VerifyArgs),
    /// Write a block map (bmaptool's .bmap format) of a raw image: the blocks a copy needs.
    #[command(after_help = "Example: write out/pi3.img.bmap\n  $ pi-image bmap out/pi3.img")]
    Bmap(BmapArgs),
    /// Write a small SD card image that updates a Pi 4's bootloader EEPROM (boot order, settings).
    #[command(
        after_help = "Example: a card that makes a Pi 4 boot from USB first, then SD\n  $ pi-image eeprom --boot-order 0xf14 --firmware pieeprom-2024-xx.bin --recovery recovery.bin --out eeprom.img"
    )]
    Eeprom(EepromArgs),
    /// Boot a node's image in QEMU and report whether it came up as the profile says: boot
    /// stages, cloud-init, hostname, address, default route, ssh keys.
    #[command(
        after_help = "Example: boot pi3's current image, wait for cloud-init, then ssh in\n  $ pi-image preview pi3 --ssh"
    )]
    Preview(PreviewArgs),
    /// Print a shell completion script for bash, zsh or fish (generated from these definitions).
    #[command(
        after_help = "Example: completions for bash, for your user\n  $ pi-image completions bash > ~/.local/share/bash-completion/completions/pi-image"
    )]
    Completions(CompletionsArgs),
    /// Print the man page (roff), or with --dir write one page per command into a directory.
    #[command(
        after_help = "Example: read the man page without installing it\n  $ pi-image man | man -l -"
    )]
    Man(ManArgs),
}

/// `--json`.
#[derive(Args)]
pub struct JsonArg {
    /// Print one JSON document on stdout instead of text (its fields: README, "JSON output").
    #[arg(long)]
    pub json: bool,
}

/// `pi-image completions`.
#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// `pi-image man`.
#[derive(Args)]
pub struct ManArgs {
    /// Write pi-image.1 and pi-image-<command>.1 for every command into this directory instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `pi-image devices`.
#[derive(Args)]
pub struct DevicesArgs {
    /// Where sysfs and procfs are read.
    #[command(flatten)]
    pub sys: SysArgs,
    /// Output format.
    #[command(flatten)]
    pub out: JsonArg,
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
    #[command(after_help = "Example:\n  $ pi-image cache list")]
    List(JsonArg),
    /// Remove every cached image and partial download.
    #[command(
        after_help = "Example: free the space, with another cache directory\n  $ pi-image cache clean --cache-dir /var/cache/pi-image"
    )]
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
    /// Output format of the summary.
    #[command(flatten)]
    pub output: JsonArg,
}

/// `pi-image inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// The image to inspect.
    pub image: PathBuf,
    /// The board whose effective config.txt to show (pi4, pi400, cm4, pi3, ...).
    #[arg(long, default_value = "pi4")]
    pub model: String,
    /// Output format.
    #[command(flatten)]
    pub output: JsonArg,
}

/// `pi-image flash`. The forms: `flash DEVICE` (the image the last `build` into --out wrote),
/// `flash DEVICE... --node NODE` (NODE's current image), `flash --node NODE DEVICE --node NODE
/// DEVICE` (several nodes, each to its disk) and `flash IMAGE DEVICE...` (any image).
#[derive(Args)]
pub struct FlashArgs {
    /// DEVICE: write the image the last `build` into --out wrote (with --node NODE: that
    /// node's). IMAGE DEVICE [DEVICE...]: write IMAGE (.img, .img.xz, .img.gz, .img.zst, or a
    /// release's <node>.chunks.json).
    #[arg(value_name = "[IMAGE] DEVICE")]
    pub args: Vec<PathBuf>,
    /// `--node NODE [DEVICE]`, as given.
    #[command(flatten)]
    pub node: NodeArgs,
    /// Where `build` wrote its images (and where --node builds them).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
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
    /// Output format of the summary.
    #[command(flatten)]
    pub output: JsonArg,
}

/// `flash --node NODE [DEVICE]`, repeatable: each occurrence's values kept together, which
/// clap's derive does not do for a `Vec<Vec<_>>` (without its unstable-v5 feature).
#[derive(Debug, Clone, Default)]
pub struct NodeArgs {
    /// One entry per `--node`: `[NODE]` or `[NODE, DEVICE]`.
    pub groups: Vec<Vec<String>>,
}

impl NodeArgs {
    const ID: &'static str = "node";

    /// Whether `--node` was given.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

impl clap::FromArgMatches for NodeArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(NodeArgs {
            groups: m
                .get_occurrences::<String>(Self::ID)
                .map(|o| o.map(|values| values.cloned().collect()).collect())
                .unwrap_or_default(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for NodeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            clap::Arg::new(Self::ID)
                .long("node")
                .num_args(1..=2)
                .value_names(["NODE", "DEVICE"])
                .action(clap::ArgAction::Append)
                .help(
                    "NODE's current image, <out>/NODE.img, built first when missing or stale: \
                     `--node NODE` for the DEVICE(s) given, or `--node NODE DEVICE` (repeatable, \
                     one disk per node)",
                ),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
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
    /// Output format.
    #[command(flatten)]
    pub output: JsonArg,
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

/// `pi-image preview`.
#[derive(Args)]
pub struct PreviewArgs {
    /// A node of the profile (its image is built into --out first), or an image file (a path
    /// with a `/` or ending in `.img`), checked against the cloud-init files in it.
    #[arg(value_name = "NODE|IMAGE", required_unless_present = "all")]
    pub target: Option<String>,
    /// Every node of the profile, one after another (or --jobs N at a time).
    #[arg(long, conflicts_with = "target")]
    pub all: bool,
    /// With --all: boot N nodes at once (each takes about 2 GiB of memory and, without KVM, two
    /// CPU cores).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "all", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: u32,
    /// After the checks, open an ssh session on the node; the node stops when it ends.
    #[arg(long, conflicts_with_all = ["console", "all", "json"])]
    pub ssh: bool,
    /// Boot with the node's serial console on this terminal (Ctrl-A x quits QEMU); no checks.
    #[arg(long, conflicts_with_all = ["all", "json"])]
    pub console: bool,
    /// The private key to log in with [default: ~/.ssh/id_ed25519, id_ecdsa or id_rsa, if its
    /// .pub is one of the node's keys]. Without one, keys are read from the guest's disk after
    /// it powered off.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Seconds cloud-init may take to finish, from QEMU's start (a TCG boot on 2 cores takes
    /// 2-6 minutes).
    #[arg(long, value_name = "SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Print one JSON document on stdout instead of the report (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// The base image to build node images from (.img or .img.xz); overrides the profile's.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Where node images are built and console logs kept (`<out>/<node>.console.log`).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// How the base is fetched.
    #[command(flatten)]
    pub fetch: FetchArgs,
}
