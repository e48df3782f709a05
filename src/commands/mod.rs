//! One function per subcommand: each turns its parsed arguments into calls of the library and
//! prints the result. Errors get their context here, at the edge (`anyhow`).

mod bmap;
mod build;
mod cache;
mod devices;
mod eeprom;
mod extract;
mod fetch;
mod flash;
pub mod inspect;
mod nodes;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::base::BaseImage;
use crate::cli::{FetchArgs, Global};
use crate::profile::{self, BaseSpec, Node, Profile};

pub use self::bmap::bmap;
pub use self::build::build;
pub use self::cache::cache;
pub use self::devices::devices;
pub use self::eeprom::eeprom;
pub use self::extract::extract;
pub use self::fetch::fetch;
pub use self::flash::{flash, verify};
pub use self::inspect::inspect;
pub use self::nodes::nodes;

/// The profile at `path`, loaded and validated.
fn load_profile(path: &Path) -> anyhow::Result<Profile> {
    Ok(profile::Profile::load(path)?)
}

/// The node named `name`, or an error listing the profile's nodes.
fn find_node<'p>(profile: &'p Profile, name: &str) -> anyhow::Result<&'p Node> {
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

/// The base to build from: `--base` if given, else the profile's (fetched into the cache if it
/// is a URL the cache lacks).
fn resolve_base(
    profile: &Profile,
    base: Option<PathBuf>,
    global: &Global,
    fetch: &FetchArgs,
) -> anyhow::Result<BaseImage> {
    let spec = match base {
        Some(b) => BaseSpec::Path(b),
        None => profile.base.clone(),
    };
    Ok(BaseImage::resolve(
        &spec,
        global.cache_dir(),
        &fetch.options(),
    )?)
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org) or the fixed default.
fn source_date_epoch() -> anyhow::Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970")
        }),
        Err(_) => Ok(crate::build::DEFAULT_EPOCH),
    }
}
