//! `pi-image devices`: the disks an image could go to.

use crate::cli::SysArgs;
use crate::flash::devices::{self, SysRoot};

/// Print the disks with what the safety rules need to know about them.
pub fn devices(args: SysArgs) -> anyhow::Result<()> {
    print!(
        "{}",
        devices::table(&devices::list(&SysRoot::new(args.sys_root))?)
    );
    Ok(())
}
