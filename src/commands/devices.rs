//! `pi-image devices`: the disks an image could go to.

use crate::cli::SysArgs;
use crate::flash::devices::{self, SysRoot};

/// Print the disks with what the safety rules need to know about them.
pub fn devices(args: SysArgs) -> anyhow::Result<()> {
    let root = SysRoot::new(args.sys_root);
    if root.is_fake() {
        eprintln!(
            "pi-image: warning: PI_IMAGE_SYSROOT is set: the disks below are what a test tree describes, not this machine's"
        );
    }
    print!("{}", devices::table(&devices::list(&root)?));
    Ok(())
}
