//! `pi-image devices`: the disks an image could go to.

use std::path::Path;

use serde::Serialize;

use crate::cli::DevicesArgs;
use crate::flash::devices::{self, Disk, SysRoot};

/// Print the disks with what the safety rules need to know about them, as a table or
/// (`--json`) as one JSON document.
pub fn devices(args: DevicesArgs) -> anyhow::Result<()> {
    let root = SysRoot::new(args.sys.sys_root);
    if root.is_fake() {
        eprintln!(
            "pi-image: warning: PI_IMAGE_SYSROOT is set: the disks below are what a test tree describes, not this machine's"
        );
    }
    let disks = devices::list(&root)?;
    if args.out.json {
        return super::print_json(&DevicesJson {
            devices: disks.iter().map(DiskJson::of).collect(),
        });
    }
    print!("{}", devices::table(&disks));
    Ok(())
}

/// `devices --json` (fields in README, "JSON output").
#[derive(Serialize)]
struct DevicesJson<'a> {
    devices: Vec<DiskJson<'a>>,
}

/// One disk of `devices --json`.
#[derive(Serialize)]
struct DiskJson<'a> {
    path: &'a Path,
    name: &'a str,
    size: u64,
    model: &'a str,
    serial: &'a str,
    transport: &'a str,
    removable: bool,
    external: bool,
    partitions: &'a [String],
    mounts: &'a [String],
    swaps: &'a [String],
    holders: &'a [String],
    system: &'a [String],
}

impl DiskJson<'_> {
    fn of(d: &Disk) -> DiskJson<'_> {
        DiskJson {
            path: &d.dev_path,
            name: &d.name,
            size: d.size,
            model: &d.model,
            serial: &d.serial,
            transport: &d.transport,
            removable: d.removable,
            external: d.external(),
            partitions: &d.partitions,
            mounts: &d.mounts,
            swaps: &d.swaps,
            holders: &d.holders,
            system: &d.system,
        }
    }
}
