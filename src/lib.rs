//! pi-image: turn the stock Ubuntu Raspberry Pi image into per-node, ready-to-boot images.
//!
//! Data flows one way: a [`profile`] describes the cluster, [`plan`] turns one node of it into a
//! list of edits, and [`build`] applies those edits to a copy of the base image, using the
//! partition table ([`partition`]), a byte-range view of one partition ([`partview`]), the FAT boot
//! partition ([`bootfs`]) and the ext4 root ([`ext4`]). The text patchers ([`configtxt`],
//! [`cmdline`], [`cloudinit`]) are pure functions from text to text, and [`eeprom`] works on the
//! Pi 4 bootloader EEPROM image's bytes; [`eepromcard`] makes the update files and card from it.
//! A base image named by URL is downloaded, verified ([`signature`]) and decompressed by [`fetch`]
//! into the [`cache`]. [`blockmap`] tells which blocks of an image matter (and reads and writes
//! `.bmap` files), [`devices`] finds disks and applies the safety rules, and [`flash`] writes
//! images to them and verifies them, showing [`progress`]. Release artifacts ([`dist`]) are
//! each node's image compressed through [`chunked`], whose chunk store in the cache lets nodes
//! share every unchanged chunk.

pub mod blockmap;
pub mod bootfs;
pub mod build;
pub mod cache;
pub mod calendar;
pub mod chunked;
pub mod cloudinit;
pub mod cmdline;
pub mod configtxt;
pub mod devices;
pub mod dist;
pub mod eeprom;
pub mod eepromcard;
pub mod error;
pub mod ext4;
pub mod fetch;
pub mod flash;
pub mod image;
pub mod inspect;
pub mod overlay;
pub mod partition;
pub mod partview;
pub mod plan;
pub mod profile;
pub mod progress;
pub mod release;
pub mod signature;
pub mod sshkey;

pub use error::{Error, Result};
