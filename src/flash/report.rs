//! What the user sees around a flash: the question before anything is written, and the summary
//! table after.

use std::io::{BufRead, Write};
use std::path::Path;

use super::devices;
use super::{FlashError, Job, Outcome};
use crate::io::PathError;

/// Ask on `output` whether to write each job's image to its targets; only `yes` goes ahead.
pub fn confirm(
    jobs: &[Job],
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> Result<(), FlashError> {
    let io = |e| FlashError::from(PathError::new(Path::new("<terminal>"), e));
    for job in jobs {
        for t in &job.targets {
            writeln!(
                output,
                "write {} ({} to write) to {}",
                job.source.path.display(),
                job.source
                    .mapped_bytes()
                    .map_or_else(|| "size unknown".into(), devices::human),
                t.describe()
            )
            .map_err(io)?;
        }
    }
    write!(
        output,
        "Everything on these devices will be lost. Type 'yes' to continue: "
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
