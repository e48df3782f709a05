//! What the user sees around a flash: the question before anything is written, and the summary
//! table after.

use std::io::{BufRead, Write};
use std::path::Path;

use super::devices;
use super::{FlashError, Job, Outcome};
use crate::io::PathError;

/// What is known about an image besides its bytes (from the build record), for the question
/// before writing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct About {
    /// The node it was built for.
    pub node: Option<NodeFacts>,
    /// Its sha256, when `build` recorded it.
    pub sha256: Option<String>,
}

/// The node an image was built for, as the prompt names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Its FQDN.
    pub hostname: String,
    /// Its static address with prefix; `None` for DHCP.
    pub address: Option<String>,
    /// Its boot target, `sd` or `ssd`.
    pub target: String,
}

/// Ask on `output` whether to write each job's image to its targets, naming for each the node
/// (hostname, address, boot target), the image and its sha256 (`about[i]` for `jobs[i]`), and
/// the device (path, size, model, serial, transport); only `yes` goes ahead.
pub fn confirm(
    jobs: &[Job],
    about: &[About],
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> Result<(), FlashError> {
    let io = |e| FlashError::from(PathError::new(Path::new("<terminal>"), e));
    let unknown = About::default();
    let mut text = String::new();
    for (i, job) in jobs.iter().enumerate() {
        let about = about.get(i).unwrap_or(&unknown);
        text.push_str(&match &about.node {
            Some(n) => format!(
                "  node    {}: {}, {}, boots from {}\n",
                n.name,
                n.hostname,
                n.address.as_deref().unwrap_or("address by DHCP"),
                match n.target.as_str() {
                    "ssd" => "a USB SSD",
                    _ => "an SD card",
                }
            ),
            None => "  node    (not recorded by a pi-image build)\n".to_string(),
        });
        let human = |n: Option<u64>| n.map_or_else(|| "size unknown".into(), devices::human);
        text.push_str(&format!(
            "  image   {} ({}, {} to write)\n  sha256  {}\n",
            job.source.path.display(),
            human(job.source.size),
            human(job.source.mapped_bytes()),
            about
                .sha256
                .as_deref()
                .unwrap_or("(not recorded by a pi-image build)")
        ));
        for t in &job.targets {
            text.push_str(&format!("  device  {}\n", t.describe()));
        }
    }
    write!(
        output,
        "pi-image is about to write:\n{text}Everything on {} will be lost. Type 'yes' to continue: ",
        if jobs.iter().map(|j| j.targets.len()).sum::<usize>() == 1 {
            "this device"
        } else {
            "these devices"
        }
    )
    .map_err(io)?;
    output.flush().map_err(io)?;
    let mut answer = String::new();
    input.read_line(&mut answer).map_err(io)?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(FlashError::NotConfirmed)
    }
}

/// The summary table: target, image, result, bytes, write and verify throughput.
pub fn summary(outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "{:<24} {:<28} {:<7} {:>10} {:>12} {:>12}\n",
        "target", "image", "result", "written", "write MiB/s", "verify MiB/s"
    );
    let rate = |bytes: u64, secs: f64| {
        if secs > 0.0 {
            format!("{:.1}", bytes as f64 / (1u64 << 20) as f64 / secs)
        } else {
            "-".into()
        }
    };
    for o in outcomes {
        out.push_str(&format!(
            "{:<24} {:<28} {:<7} {:>10} {:>12} {:>12}\n",
            o.target.display(),
            o.image
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            if o.result.is_ok() { "ok" } else { "FAILED" },
            devices::human(o.bytes),
            rate(o.bytes, o.write_secs),
            if o.verify_secs > 0.0 {
                rate(o.verified, o.verify_secs)
            } else {
                "-".into()
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::devices::Disk;
    use crate::flash::{Source, Target};
    use crate::image::Format;

    fn job(image: &str, device: &str) -> Job {
        Job {
            source: Source {
                path: image.into(),
                format: Format::Raw,
                map: None,
                bmap_path: None,
                size: Some(353 << 20),
                streamed: None,
            },
            targets: vec![Target {
                path: device.into(),
                disk: Some(Disk {
                    name: "sdb".into(),
                    dev_path: device.into(),
                    dev: "8:16".into(),
                    size: 32 << 30,
                    model: "SD/MMC".into(),
                    serial: "0123".into(),
                    transport: "usb".into(),
                    removable: true,
                    partitions: vec![],
                    mounts: vec![],
                    swaps: vec![],
                    holders: vec![],
                    system: vec![],
                }),
                device: None,
                fresh: false,
            }],
        }
    }

    #[test]
    fn the_question_names_node_image_sha256_and_device_and_wants_yes() {
        let about = About {
            node: Some(NodeFacts {
                name: "pi3".into(),
                hostname: "pi3.cluster.lan".into(),
                address: Some("192.168.1.13/24".into()),
                target: "ssd".into(),
            }),
            sha256: Some("ab".repeat(32)),
        };
        let jobs = [job("out/pi3.img", "/dev/sdb"), job("x.img", "/dev/sdc")];
        let mut shown = Vec::new();
        confirm(&jobs, &[about], &mut &b"yes\n"[..], &mut shown).unwrap();
        assert_eq!(
            String::from_utf8(shown).unwrap(),
            format!(
                "pi-image is about to write:\n\
                 \x20 node    pi3: pi3.cluster.lan, 192.168.1.13/24, boots from a USB SSD\n\
                 \x20 image   out/pi3.img (353.0 MiB, 353.0 MiB to write)\n\
                 \x20 sha256  {}\n\
                 \x20 device  /dev/sdb: 32.0 GiB, model 'SD/MMC', serial '0123', usb, removable\n\
                 \x20 node    (not recorded by a pi-image build)\n\
                 \x20 image   x.img (353.0 MiB, 353.0 MiB to write)\n\
                 \x20 sha256  (not recorded by a pi-image build)\n\
                 \x20 device  /dev/sdc: 32.0 GiB, model 'SD/MMC', serial '0123', usb, removable\n\
                 Everything on these devices will be lost. Type 'yes' to continue: ",
                "ab".repeat(32)
            )
        );
        for answer in ["y\n", "YES please\n", ""] {
            let err = confirm(&jobs, &[], &mut answer.as_bytes(), &mut Vec::new()).unwrap_err();
            assert!(matches!(err, FlashError::NotConfirmed), "{answer:?}");
        }
    }
}
