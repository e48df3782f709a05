//! One function per subcommand: each turns its parsed arguments into calls of the library and
//! prints the result. Errors get their context here, at the edge (`anyhow`).

mod bmap;
mod build;
mod cache;
mod completions;
mod devices;
mod eeprom;
mod extract;
mod fetch;
mod flash;
pub mod inspect;
mod man;
mod nodes;
mod preview;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::{FetchArgs, Global};
use crate::outdir::Request;
use crate::profile::{self, BaseSpec, Node, Profile};

pub use self::bmap::bmap;
pub use self::build::build;
pub use self::cache::cache;
pub use self::completions::completions;
pub use self::devices::devices;
pub use self::eeprom::eeprom;
pub use self::extract::extract;
pub use self::fetch::fetch;
pub use self::flash::{flash, verify};
pub use self::inspect::inspect;
pub use self::man::man;
pub use self::nodes::nodes;
pub use self::preview::preview;

/// The exit status for a `verify` that found a difference (1 is any other error, 2 a usage
/// error, as clap has it).
pub const EXIT_DIFFERS: u8 = 3;

/// `verify` found the disk to differ from the image (the error says where): exit status
/// [`EXIT_DIFFERS`].
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Differs(pub crate::flash::FlashError);

/// The exit status for a failed command: [`EXIT_DIFFERS`] for [`Differs`], else 1.
pub fn exit_status(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Differs>().is_some() {
        EXIT_DIFFERS
    } else {
        1
    }
}

/// The error and its causes as one line, `a: b: c`. A cause whose text the line already ends
/// with is left out: typed errors name their source in their own message (`PathError` is
/// `path: cause`), so anyhow's `{:#}` would print it twice.
pub fn error_message(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Print `value` as one JSON document (pretty, with a final newline) on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding the JSON output")?;
    println!("{text}");
    Ok(())
}

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

/// What node images are built from: `profile`, its base or `--base`, the cache and fetch
/// options given, and `SOURCE_DATE_EPOCH`.
fn request<'a>(
    profile: &'a Profile,
    base: Option<PathBuf>,
    global: &'a Global,
    fetch: &FetchArgs,
) -> anyhow::Result<Request<'a>> {
    Ok(Request {
        profile,
        base: match base {
            Some(b) => BaseSpec::Path(b),
            None => profile.base.clone(),
        },
        cache_dir: global.cache_dir(),
        fetch: fetch.options(),
        epoch: source_date_epoch()?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::from(crate::io::PathError::new(Path::new("/x.img"), io))
            .context("flash");
        assert_eq!(
            error_message(&e),
            "flash: /x.img: No such file or directory"
        );
    }
}
