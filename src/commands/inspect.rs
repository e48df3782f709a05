//! `pi-image inspect`: a human-readable report on an image, read without changing it.

use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;

use crate::bootconf::configtxt::{self, Model};
use crate::cli::InspectArgs;
use crate::image::bootfs::{BootFs, FatTimestamp};
use crate::image::ext4::{self, Ext4Fs};
use crate::image::partition::{Content, PartitionTable};
use crate::image::partview::{PartitionView, ReadOnly};
use crate::io::AtPath;
use crate::plan::release;

/// Boot-partition files shown verbatim, in this order.
const SHOWN_FILES: [&str; 4] = ["cmdline.txt", "user-data", "network-config", "meta-data"];

/// Print the report on `args.image`.
pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let model = args
        .model
        .parse()
        .map_err(|e| anyhow::anyhow!("--model {}: {e}", args.model))?;
    print!("{}", report(&args.image, model)?);
    Ok(())
}

/// Describe the image at `path`: its partitions, release, the effective config.txt for `model`,
/// the kernel command line and the cloud-init files. Never writes to the image.
pub fn report(path: &Path, model: Model) -> anyhow::Result<String> {
    let table = PartitionTable::read(path)?;
    let boot = table.boot(path)?;
    let file = File::open(path).at(path)?;
    let size = file.metadata().at(path)?.len();
    let fs = BootFs::open(
        PartitionView::new(ReadOnly(file), boot.start, boot.len).at(path)?,
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
