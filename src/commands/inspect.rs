//! `pi-image inspect` and `pi-image nodes`: human-readable reports on an image and a profile.

use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;

use crate::image::bootfs::{BootFs, FatTimestamp};
use crate::bootconf::configtxt::{self, Model};
use crate::image::ext4::{self, Ext4Fs};
use crate::image::partition::{Content, PartitionTable};
use crate::image::partview::{PartitionView, ReadOnly};
use crate::profile::Profile;
use crate::plan::release;
use crate::{Error, Result};

/// Boot-partition files shown verbatim, in this order.
const SHOWN_FILES: [&str; 4] = ["cmdline.txt", "user-data", "network-config", "meta-data"];

/// Describe the image at `path`: its partitions, release, the effective config.txt for `model`,
/// the kernel command line and the cloud-init files. Never writes to the image.
pub fn inspect(path: &Path, model: Model) -> Result<String> {
    let table = PartitionTable::read(path)?;
    let boot = table.boot(path)?;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let fs = BootFs::open(
        PartitionView::new(ReadOnly(file), boot.start, boot.len).map_err(io)?,
        FatTimestamp::from_unix(0),
    )?;
    let text = |name: &str| -> Option<String> {
        fs.read_file(name)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };

    let mut out = String::new();
    let _ = writeln!(out, "image: {} ({} bytes)", path.display(), size);
    let _ = writeln!(
        out,
        "partition table: {}, disk id {}",
        table.kind, table.disk_id
    );
    let _ = writeln!(
        out,
        "  {:>2}  {:>12}  {:>12}  {:<6} {:<4} content",
        "#", "start", "size", "type", "boot"
    );
    for p in &table.partitions {
        let content = match &p.content {
            Content::Fat { label } => format!("FAT \"{label}\""),
            Content::Ext4 { label } => format!("ext4 \"{label}\""),
            Content::Unknown => "unknown".into(),
        };
        let _ = writeln!(
            out,
            "  {:>2}  {:>12}  {:>12}  {:<6} {:<4} {content}",
            p.number,
            p.start,
            p.len,
            p.type_id,
            if p.bootable { "*" } else { "" }
        );
    }
    let root = table.root(path)?;
    let rootfs = Ext4Fs::open(path, root.start, root.len, false)?;
    let os = ext4::os_release(&rootfs)?;
    let release = match release::detect(&os, &text("config.txt").unwrap_or_default()) {
        Ok(r) => r.to_string(),
        Err(e) => format!("unsupported: {e}"),
    };
    let _ = writeln!(
        out,
        "release: {release}; /etc/os-release: {}",
        os.pretty_name.as_deref().unwrap_or(&os.version_id)
    );
    let _ = writeln!(
        out,
        "kernels: {}",
        ext4::kernel_versions(&rootfs)?.join(", ")
    );
    let effective = configtxt::effective("config.txt", &text, model);
    let _ = writeln!(out, "\n== effective config.txt for {model} ==");
    let _ = write!(out, "{effective}");
    for name in SHOWN_FILES {
        let _ = writeln!(out, "\n== {name} ==");
        match text(name) {
            Some(t) => {
                out.push_str(&t);
                if !t.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str("(missing)\n"),
        }
    }
    Ok(out)
}

/// A table of the profile's nodes: name, hostname, address, target and overlays.
pub fn nodes_table(profile: &Profile) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<24} {:<20} {:<6} overlays",
        "node", "hostname", "address", "target"
    );
    for n in &profile.nodes {
        let fqdn = match &n.domain {
            Some(d) => format!("{}.{d}", n.hostname),
            None => n.hostname.clone(),
        };
        let address = match &n.network {
            Some(net) => format!("{}/{}", net.address, net.prefix_len),
            None => "dhcp".into(),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<24} {:<20} {:<6} {}",
            n.name,
            fqdn,
            address,
            n.target.to_string(),
            n.overlays.join(",")
        );
    }
    out
}
