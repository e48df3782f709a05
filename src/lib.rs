//! pi-image: turn the stock Ubuntu Raspberry Pi image into per-node, ready-to-boot images.
//!
//! The folders are the layers, listed bottom up; a module uses only its own folder and those
//! listed before it (`tests/layers.rs` checks this), so data flows one way: profile → plan of
//! edits → image → outputs.
//!
//! ```text
//! io/        stream tools: errors naming their file, read_full, hex, sha256, SHA256SUMS lines,
//!            progress, calendar dates
//! bootconf/  the Pi's boot configuration formats, pure: config.txt (edit + evaluate),
//!            cmdline.txt, the EEPROM's bootconf section and BOOT_ORDER
//! profile/   the cluster profile: types, TOML, validation of the cluster and of each node's
//!            fields, SSH public keys
//! plan/      one node's edits, pure: boot files, cloud-init (NoCloud) files, disk ids and GUIDs,
//!            the Ubuntu release and os-release
//! image/     disk image formats: compressed streams, atomic sparse outputs, partition tables,
//!            a partition's byte range, FAT (bootfs), ext4 (libext2fs shim), block maps, .bmap
//! build/     a plan applied to a copy of the base: what nodes share, one node's image,
//!            overlay trees, EEPROM update files and card
//! base/      the base image: download, verify (sha256, OpenPGP), cache
//! outdir/    the output directory: the build record (what `build` wrote, from which inputs,
//!            as hashes) and each node's current image, built first when missing or stale
//! dist/      release artifacts: chunked compression and chunk store, SHA256SUMS, os_list.json
//! flash/     writing images to disks: source, reader, writers, read-back verify, the target's
//!            safety rules (devices), prompt and summary
//! preview/   booting an image in QEMU: the firmware's boot files, the kernel's fitness, the
//!            scratch copy, the node's LAN as QEMU's user network, the console's stages, the
//!            checks against the profile, ssh
//! cli.rs     clap's types
//! commands/  one function per subcommand, the orchestration (anyhow at this edge)
//! ```
//!
//! `main.rs` only parses the arguments and calls the subcommand's function.

pub mod base;
pub mod bootconf;
pub mod build;
pub mod cli;
pub mod commands;
pub mod dist;
pub mod flash;
pub mod image;
pub mod io;
pub mod outdir;
pub mod plan;
pub mod preview;
pub mod profile;
