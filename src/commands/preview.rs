//! `pi-image preview`: boot node images in QEMU and report whether they came up as the profile
//! says.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cli::{Global, PreviewArgs};
use crate::outdir::{self, OutDir};
use crate::preview::expect::Expected;
use crate::preview::scratch::{InterruptGuard, interrupted};
use crate::preview::{self, Host, Mode, Options, Report};
use crate::profile::{Node, Profile};

/// One image to boot.
struct Target {
    label: String,
    image: PathBuf,
    expected: Expected,
    log: PathBuf,
}

/// Boot each image asked for, print the reports; fail naming the first mismatch.
pub fn preview(global: &Global, args: PreviewArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mode = match (args.ssh, args.console) {
        (true, _) => Mode::Ssh,
        (_, true) => Mode::Console,
        _ => Mode::Check,
    };
    let json = args.json;
    let say = move |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let (_held, targets) = targets(global, &args, &say)?;
    let jobs = (args.jobs as usize).min(targets.len()).max(1);
    let host = Host::detect(jobs)?;
    let _interrupts = InterruptGuard::install();
    let opts = |t: &Target| Options {
        label: t.label.clone(),
        expected: t.expected.clone(),
        mode,
        timeout: Duration::from_secs(args.timeout),
        identity: args.identity.clone(),
        log: t.log.clone(),
        started,
    };

    let results: Mutex<Vec<Option<anyhow::Result<Report>>>> =
        Mutex::new(targets.iter().map(|_| None).collect());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(t) = targets.get(i) else { break };
                    if interrupted() {
                        break;
                    }
                    let progress = |line: &str| say(&format!("{:<8} {line}", t.label));
                    let result = preview::run(&host, &t.image, &opts(t), &progress)
                        .with_context(|| format!("preview {}", t.label));
                    if let Ok(mut r) = results.lock() {
                        r[i] = Some(result);
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    let mut reports = Vec::new();
    for result in results.into_iter().flatten() {
        reports.push(result?);
    }
    if json {
        let doc = serde_json::json!({
            "ok": reports.iter().all(Report::ok) && reports.len() == targets.len(),
            "nodes": reports,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    if interrupted() {
        bail!("interrupted: QEMU stopped, scratch copies removed");
    }
    if let Some(bad) = reports.iter().find(|r| !r.ok()) {
        bail!(
            "{}: {} (console log: {})",
            bad.node,
            bad.failure.as_deref().unwrap_or(""),
            bad.console_log.display()
        );
    }
    Ok(())
}

/// The images to boot: the profile's nodes' current images (with their output directory, held
/// until the boots are over), or an image file.
fn targets(
    global: &Global,
    args: &PreviewArgs,
    say: &dyn Fn(&str),
) -> anyhow::Result<(Option<OutDir>, Vec<Target>)> {
    let named = args.target.as_deref().unwrap_or("");
    if !args.all && is_image_path(named) {
        let image = PathBuf::from(named);
        let expected = preview::seed_expectations(&image)?;
        let label = image
            .file_stem()
            .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
        return Ok((
            None,
            vec![Target {
                log: image.with_extension("console.log"),
                label,
                image,
                expected,
            }],
        ));
    }
    let profile = super::load_profile(&global.profile)?;
    let nodes: Vec<&Node> = if args.all {
        profile.nodes.iter().collect()
    } else {
        vec![super::find_node(&profile, named)?]
    };
    let (held, images) = current_images(&profile, &nodes, global, args, say)?;
    let targets = nodes
        .iter()
        .zip(images)
        .map(|(node, image)| Target {
            label: node.name.clone(),
            log: args.out.join(format!("{}.console.log", node.name)),
            image,
            expected: Expected::from_node(node),
        })
        .collect();
    Ok((Some(held), targets))
}

/// A path rather than a node name: it has a `/`, ends in `.img`, or is an existing file.
fn is_image_path(s: &str) -> bool {
    s.contains('/') || s.ends_with(".img") || Path::new(s).is_file()
}

/// The current image of each node in `--out` (built first when missing or stale, as `flash
/// --node` does), with the output directory held shared so that no build replaces them while
/// they are copied for booting.
fn current_images(
    profile: &Profile,
    nodes: &[&Node],
    global: &Global,
    args: &PreviewArgs,
    say: &dyn Fn(&str),
) -> anyhow::Result<(OutDir, Vec<PathBuf>)> {
    let req = super::request(profile, args.base.clone(), global, &args.fetch)?;
    let out = OutDir::for_building(&args.out)?;
    let images = outdir::current_images(&out, &req, nodes, &mut |node, why| {
        say(&format!("building {node} first: {why}"));
    })?;
    out.share()?;
    Ok((out, images.into_iter().map(|i| i.path).collect()))
}
