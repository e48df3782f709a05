//! `pi-image inspect`: a human-readable report on an image, read without changing it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bootconf::configtxt::{self, Model};
use crate::cli::InspectArgs;
use crate::image::bootfs::{BootFs, FatTimestamp};
use crate::image::ext4::{self, Ext4Fs};
use crate::image::partition::{Content, PartitionTable, TableKind};
use crate::image::partview::{PartitionView, ReadOnly};
use crate::io::AtPath;
use crate::plan::release;

/// Boot-partition files shown verbatim, in this order.
const SHOWN_FILES: [&str; 4] = ["cmdline.txt", "user-data", "network-config", "meta-data"];

/// Print the report on `args.image`, as text or (`--json`) as one JSON document.
pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let model = args
        .model
        .parse()
        .map_err(|e| anyhow::anyhow!("--model {}: {e}", args.model))?;
    let facts = Facts::read(&args.image, model)?;
    if args.output.json {
        super::print_json(&facts)
    } else {
        print!("{}", facts.text());
        Ok(())
    }
}

/// Describe the image at `path`: its partitions, release, the effective config.txt for `model`,
/// the kernel command line and the cloud-init files. Never writes to the image.
pub fn report(path: &Path, model: Model) -> anyhow::Result<String> {
    Ok(Facts::read(path, model)?.text())
}

/// What `inspect` reports (its `--json` document; fields in README, "JSON output").
#[derive(Debug, Serialize)]
struct Facts {
    image: PathBuf,
    size: u64,
    /// `mbr` or `gpt`.
    partition_table: &'static str,
    #[serde(skip)]
    table_kind: TableKind,
    disk_id: String,
    partitions: Vec<PartitionFacts>,
    release: Option<String>,
    release_problem: Option<String>,
    os_release: String,
    kernels: Vec<String>,
    model: String,
    config_txt: String,
    /// Boot-partition files by name (`SHOWN_FILES`); `null` when missing.
    files: BTreeMap<&'static str, Option<String>>,
}

/// One partition in [`Facts`].
#[derive(Debug, Serialize)]
struct PartitionFacts {
    number: u32,
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    type_id: String,
    bootable: bool,
    filesystem: Option<&'static str>,
    label: Option<String>,
}

impl Facts {
    fn read(path: &Path, model: Model) -> anyhow::Result<Facts> {
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
        let partitions = table
            .partitions
            .iter()
            .map(|p| {
                let (filesystem, label) = match &p.content {
                    Content::Fat { label } => (Some("fat"), Some(label.clone())),
                    Content::Ext4 { label } => (Some("ext4"), Some(label.clone())),
                    Content::Unknown => (None, None),
                };
                PartitionFacts {
                    number: p.number,
                    start: p.start,
                    size: p.len,
                    type_id: p.type_id.clone(),
                    bootable: p.bootable,
                    filesystem,
                    label,
                }
            })
            .collect();
        let root = table.root(path)?;
        let rootfs = Ext4Fs::open(path, root.start, root.len, false)?;
        let os = ext4::os_release(&rootfs)?;
        let (release, release_problem) =
            match release::detect(&os, &text("config.txt").unwrap_or_default()) {
                Ok(r) => (Some(r.to_string()), None),
                Err(e) => (None, Some(e.to_string())),
            };
        Ok(Facts {
            image: path.to_owned(),
            size,
            partition_table: match table.kind {
                TableKind::Mbr => "mbr",
                TableKind::Gpt => "gpt",
            },
            table_kind: table.kind,
            disk_id: table.disk_id.clone(),
            partitions,
            release,
            release_problem,
            os_release: os.pretty_name.clone().unwrap_or(os.version_id.clone()),
            kernels: ext4::kernel_versions(&rootfs)?,
            model: model.to_string(),
            config_txt: configtxt::effective("config.txt", &text, model).to_string(),
            files: SHOWN_FILES.iter().map(|&name| (name, text(name))).collect(),
        })
    }

    /// The human-readable report.
    fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "image: {} ({} bytes)", self.image.display(), self.size);
        let _ = writeln!(
            out,
            "partition table: {}, disk id {}",
            self.table_kind, self.disk_id
        );
        let _ = writeln!(
            out,
            "  {:>2}  {:>12}  {:>12}  {:<6} {:<4} content",
            "#", "start", "size", "type", "boot"
        );
        for p in &self.partitions {
            let content = match (p.filesystem, &p.label) {
                (Some("fat"), Some(l)) => format!("FAT \"{l}\""),
                (Some(fs), Some(l)) => format!("{fs} \"{l}\""),
                _ => "unknown".into(),
            };
            let _ = writeln!(
                out,
                "  {:>2}  {:>12}  {:>12}  {:<6} {:<4} {content}",
                p.number,
                p.start,
                p.size,
                p.type_id,
                if p.bootable { "*" } else { "" }
            );
        }
        let release = match (&self.release, &self.release_problem) {
            (Some(r), _) => r.clone(),
            (None, p) => format!("unsupported: {}", p.as_deref().unwrap_or("")),
        };
        let _ = writeln!(
            out,
            "release: {release}; /etc/os-release: {}",
            self.os_release
        );
        let _ = writeln!(out, "kernels: {}", self.kernels.join(", "));
        let _ = writeln!(out, "\n== effective config.txt for {} ==", self.model);
        let _ = write!(out, "{}", self.config_txt);
        for name in SHOWN_FILES {
            let _ = writeln!(out, "\n== {name} ==");
            match self.files.get(name).and_then(|t| t.as_deref()) {
                Some(t) => {
                    out.push_str(t);
                    if !t.ends_with('\n') {
                        out.push('\n');
                    }
                }
                None => out.push_str("(missing)\n"),
            }
        }
        out
    }
}
