//! `pi-image flash` and `pi-image verify`.

use std::collections::HashSet;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;

use crate::cli::{FlashArgs, Global, VerifyArgs};
use crate::dist::nodeindex::INDEX_SUFFIX;
use crate::dist::reader::ReleaseImage;
use crate::flash::devices::{self, SysRoot};
use crate::flash::{
    self, About, FlashError, FlashOptions, Job, NodeFacts, Source, Streamed, Target,
};
use crate::io::tempfiles::parent_dir;
use crate::outdir::{self, LastBuilt, NodeImage, OutDir};

/// What `flash` was asked to write, by the form of its arguments.
enum Form {
    /// `flash DEVICE`: the image the last `build` into `--out` wrote.
    LastBuild(PathBuf),
    /// `flash DEVICE... --node NODE`, `flash --node NODE DEVICE --node NODE DEVICE`: each node's
    /// current image to its devices.
    Nodes(Vec<(String, Vec<PathBuf>)>),
    /// `flash IMAGE DEVICE...`.
    Image(PathBuf, Vec<PathBuf>),
    /// `flash --release DIR` with either `--node` form: each node's image in the shared-chunk
    /// release in DIR to its devices.
    Release(PathBuf, Vec<(String, Vec<PathBuf>)>),
}

impl Form {
    fn of(args: &FlashArgs) -> anyhow::Result<Form> {
        match (Form::of_paths(args)?, &args.release) {
            (Form::Nodes(wanted), Some(dir)) => Ok(Form::Release(dir.clone(), wanted)),
            // clap lets --release through only with --node, which makes one of the Nodes forms.
            (_, Some(_)) => bail!("flash: --release DIR takes --node NODE DEVICE"),
            (form, None) => Ok(form),
        }
    }

    /// The form by the positional arguments and `--node` alone.
    fn of_paths(args: &FlashArgs) -> anyhow::Result<Form> {
        let given = &args.args;
        match args.node.groups.as_slice() {
            [] => match given.as_slice() {
                [] => bail!(
                    "flash: give the DEVICE to write (`pi-image devices` lists them): `pi-image flash DEVICE` writes what the last `pi-image build` wrote, `pi-image flash IMAGE DEVICE` an image file"
                ),
                [device] => Ok(Form::LastBuild(device.clone())),
                [image, devices @ ..] => {
                    if is_block_device(image) {
                        bail!(
                            "flash: {} is a device, not an image: give one DEVICE to write what the last build wrote, or the image first: pi-image flash out/NODE.img {}",
                            image.display(),
                            given
                                .iter()
                                .map(|d| d.display().to_string())
                                .collect::<Vec<_>>()
                                .join(" ")
                        );
                    }
                    Ok(Form::Image(image.clone(), devices.to_vec()))
                }
            },
            [one] if one.len() == 1 => {
                if given.is_empty() {
                    bail!(
                        "flash: where should node {0} go? Give the device: pi-image flash DEVICE --node {0} (`pi-image devices` lists the disks)",
                        one[0]
                    );
                }
                Ok(Form::Nodes(vec![(one[0].clone(), given.clone())]))
            }
            groups if groups.iter().all(|g| g.len() == 2) && given.is_empty() => Ok(Form::Nodes(
                groups
                    .iter()
                    .map(|g| (g[0].clone(), vec![PathBuf::from(&g[1])]))
                    .collect(),
            )),
            _ => bail!(
                "flash: give each node its disk (--node pi2 /dev/sdb --node pi4 /dev/sdc), or one --node NODE with its DEVICE(s) (pi-image flash /dev/sdb --node pi3); not a mix, and no IMAGE with --node"
            ),
        }
    }
}

fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Write images to disks (or files), each target checked before anything is written.
pub fn flash(global: &Global, args: FlashArgs) -> anyhow::Result<()> {
    // Holds the output (or release) directory's lock, shared while flashing, until the images
    // are written.
    let mut _held: Option<OutDir> = None;
    let mut pairs: Vec<(Source, Vec<PathBuf>, About)> = Vec::new();
    match Form::of(&args)? {
        Form::Image(image, devices) => {
            let source = open_source(&image)?;
            let about = about_source(&source);
            pairs.push((source, devices, about));
        }
        Form::LastBuild(device) => {
            let out = _held.insert(OutDir::for_reading(&args.out)?);
            let image = match outdir::last_built(out)? {
                LastBuilt::One {
                    image,
                    profile_changed,
                } => {
                    if profile_changed {
                        eprintln!(
                            "pi-image: note: {} changed since {} was built; `pi-image flash {} --node {}` rebuilds it first",
                            image.entry.profile.display(),
                            image.path.display(),
                            device.display(),
                            image.node
                        );
                    }
                    image
                }
                LastBuilt::Several(nodes) => bail!(
                    "flash: the last build into {} wrote {} nodes; say which one goes to {}:\n{}",
                    args.out.display(),
                    nodes.len(),
                    device.display(),
                    nodes
                        .iter()
                        .map(|n| format!("  pi-image flash {} --node {n}", device.display()))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
                LastBuilt::Nothing => bail!(
                    "flash: no image built into {} yet: run `pi-image build --node NAME` first{}",
                    args.out.display(),
                    super::load_profile(&global.profile)
                        .map(|p| format!(
                            " (nodes in {}: {})",
                            p.path.display(),
                            p.nodes
                                .iter()
                                .map(|n| n.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                        .unwrap_or_default()
                ),
            };
            // A `build --chunked` record names the node's index: Source reads it from the release.
            let source = open_source(&image.path)?;
            let about = about_source(&source);
            pairs.push((source, vec![device], about));
        }
        Form::Nodes(wanted) => {
            let profile = super::load_profile(&global.profile)?;
            let nodes = wanted
                .iter()
                .map(|(name, _)| super::find_node(&profile, name))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let req = super::request(&profile, args.base.clone(), global, &args.fetch)?;
            let out = OutDir::for_building(&args.out)?;
            let images = outdir::current_images(&out, &req, &nodes, &mut |node, why| {
                eprintln!("pi-image: building {node} first: {why}");
            })?;
            out.share()?;
            _held = Some(out);
            for (image, (_, devices)) in images.iter().zip(wanted) {
                pairs.push((Source::open(&image.path)?, devices, about(image)));
            }
        }
        Form::Release(dir, wanted) => {
            // A build into the release directory waits until the images are written.
            _held = Some(OutDir::for_reading(&dir)?);
            for (node, devices) in wanted {
                let source = release_source(ReleaseImage::open(&dir, &node)?);
                let about = about_source(&source);
                pairs.push((source, devices, about));
            }
        }
    }
    // The same disk twice would get two writers racing each other.
    let mut seen = HashSet::new();
    for dev in pairs.iter().flat_map(|(_, devs, _)| devs) {
        let key = std::fs::canonicalize(dev).unwrap_or_else(|_| dev.clone());
        if !seen.insert(key) {
            bail!("flash: {} is given more than once", dev.display());
        }
    }
    let root = SysRoot::new(args.sys.sys_root);
    let mut jobs = Vec::new();
    let mut abouts = Vec::new();
    for (mut source, devs, about) in pairs {
        let image = source.path.clone();
        if let (Some(map), Some(bmap)) = (&source.map, &source.bmap_path) {
            let total = map.ranges.len();
            let unchecked = map.checksums.as_ref().map_or(total, |c| c.missing());
            if unchecked > 0 && !args.no_verify {
                eprintln!(
                    "pi-image: warning: {}: {unchecked} of {total} ranges have no checksum; those are not checked against it",
                    bmap.display()
                );
            }
        }
        if source.map.is_none() && !args.to_file {
            match source.streamed {
                Some(_) => eprintln!(
                    "pi-image: {} has no block map: writing every block of the image",
                    image.display()
                ),
                None => eprintln!(
                    "pi-image: no .bmap beside {}: reading it once to learn its size, then writing every block (`pi-image bmap` on the raw image avoids both)",
                    image.display()
                ),
            }
        }
        let size = if args.to_file {
            source.size.unwrap_or(0)
        } else {
            source.learn_size()?
        };
        let targets = devs
            .iter()
            .map(|d| Target::check(d, &image, size, args.to_file, args.force, &root))
            .collect::<Result<Vec<_>, _>>()?;
        jobs.push(Job { source, targets });
        abouts.push(about);
    }
    if !args.yes && !args.to_file {
        flash::confirm(
            &jobs,
            &abouts,
            &mut std::io::stdin().lock(),
            &mut std::io::stderr(),
        )?;
    }
    let outcomes = flash::flash(
        &jobs,
        FlashOptions {
            verify: !args.no_verify,
            progress: true,
        },
    );
    if args.output.json {
        // One entry per target, in the order the jobs list them (as `flash` returns them).
        let per_target = jobs
            .iter()
            .zip(&abouts)
            .flat_map(|(j, a)| j.targets.iter().map(move |_| a));
        let targets: Vec<_> = outcomes
            .iter()
            .zip(per_target)
            .map(|(o, a)| FlashedJson {
                device: &o.target,
                image: &o.image,
                node: a.node.as_ref().map(|n| n.name.as_str()),
                image_sha256: a.sha256.as_deref(),
                result: if o.result.is_ok() { "ok" } else { "failed" },
                error: o.result.as_ref().err().map(|e| e.to_string()),
                bytes_written: o.bytes,
                write_seconds: o.write_secs,
                verify_seconds: (o.verify_secs > 0.0).then_some(o.verify_secs),
            })
            .collect();
        super::print_json(&FlashJson { targets })?;
    } else {
        print!("{}", flash::summary(&outcomes));
    }
    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err())
        .collect();
    for e in &failed {
        eprintln!("pi-image: error: {e}");
    }
    if !failed.is_empty() {
        bail!("{} of {} targets failed", failed.len(), outcomes.len());
    }
    Ok(())
}

/// What the prompt says about a recorded node image.
fn about(image: &NodeImage) -> About {
    let e = &image.entry;
    About {
        node: Some(NodeFacts {
            name: image.node.clone(),
            hostname: e.hostname.clone(),
            address: e.address.clone(),
            target: e.target.clone(),
        }),
        sha256: Some(e.sha256().to_string()),
    }
}

/// What the prompt says about `source`: what `build` recorded about the file, if anything; for
/// a node's image in a release the image's sha256 from its index, when it has one (the record
/// has the index file's).
fn about_source(source: &Source) -> About {
    let recorded = outdir::recorded_image(&source.path).map_or_else(About::default, |i| about(&i));
    match &source.streamed {
        Some(image) => About {
            node: recorded.node,
            sha256: image.sha256().map(str::to_string),
        },
        None => recorded,
    }
}

/// The image at `path`: a `<node>.chunks.json` is that node's image in the shared-chunk release
/// the index is in; anything else an image file ([`Source::open`]).
fn open_source(path: &Path) -> anyhow::Result<Source> {
    let node = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(INDEX_SUFFIX));
    Ok(match node {
        Some(node) => release_source(ReleaseImage::open(&parent_dir(path), node)?),
        None => Source::open(path)?,
    })
}

/// A node's image in a shared-chunk release as a source, named by its index: its size from the
/// index, its bytes read from its chunks, each checked before it is passed on.
fn release_source(image: ReleaseImage) -> Source {
    let path = image.index_path().to_owned();
    Source::streamed(&path, std::sync::Arc::new(FromRelease(image)))
}

/// A release image as flash reads a [`Streamed`] image.
#[derive(Debug)]
struct FromRelease(ReleaseImage);

impl Streamed for FromRelease {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn sha256(&self) -> Option<&str> {
        self.0.index().image_sha256.as_deref()
    }

    fn reader(&self) -> Box<dyn std::io::Read + Send> {
        Box::new(self.0.reader())
    }
}

/// `flash --json`.
#[derive(Serialize)]
struct FlashJson<'a> {
    targets: Vec<FlashedJson<'a>>,
}

/// One target of `flash --json`.
#[derive(Serialize)]
struct FlashedJson<'a> {
    device: &'a Path,
    image: &'a Path,
    node: Option<&'a str>,
    image_sha256: Option<&'a str>,
    result: &'static str,
    error: Option<String>,
    bytes_written: u64,
    write_seconds: f64,
    verify_seconds: Option<f64>,
}

/// `verify --json`.
#[derive(Serialize)]
struct VerifyJson<'a> {
    image: &'a Path,
    device: &'a Path,
    result: &'static str,
    bytes_checked: Option<u64>,
    first_difference: Option<u64>,
}

/// Check that a disk (or file) holds an image, without writing. A difference is returned as
/// [`super::Differs`] (exit status 3).
pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let source = open_source(&args.image)?;
    let result = flash::verify(&source, &args.device, true);
    let difference = match &result {
        Err(FlashError::Mismatch { offset, .. }) => Some(*offset),
        Err(FlashError::TooShort { len, .. }) => Some(*len),
        _ => None,
    };
    if args.output.json && (result.is_ok() || difference.is_some()) {
        super::print_json(&VerifyJson {
            image: &args.image,
            device: &args.device,
            result: if difference.is_none() {
                "match"
            } else {
                "differs"
            },
            bytes_checked: result.as_ref().ok().copied(),
            first_difference: difference,
        })?;
    }
    match result {
        Ok(checked) => {
            if !args.output.json {
                println!(
                    "{}: matches {} ({} checked)",
                    args.device.display(),
                    args.image.display(),
                    devices::human(checked)
                );
            }
            Ok(())
        }
        Err(e) if difference.is_some() => Err(super::Differs(e).into()),
        Err(e) => Err(e.into()),
    }
}
