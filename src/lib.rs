//! pi-image: turn the stock Ubuntu Raspberry Pi image into per-node, ready-to-boot images.

pub mod base;
pub mod bootconf;
pub mod build;
pub mod cli;
pub mod commands;
pub mod dist;
pub mod flash;
pub mod image;
pub mod io;
pub mod plan;
pub mod profile;
