//! Progress of a long transfer on stderr: an indicatif bar on a terminal, a plain line every few
//! seconds otherwise (CI logs would fill with bar redraws). Several bars can share a terminal
//! through an [`indicatif::MultiProgress`] (one per device when flashing several).

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

/// How often the plain (non-terminal) mode prints a line.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// One transfer's progress.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    verb: &'static str,
    done_verb: &'static str,
    name: String,
    total: Option<u64>,
    start: Instant,
    last_line: Instant,
    pos: u64,
}

impl Progress {
    /// Progress of `name` (`verb` while running, e.g. "fetching"; `done_verb` in the final plain
    /// line, e.g. "received"), out of `total` bytes if known. Nothing is shown unless `show`; a
    /// bar joins `multi` when given.
    pub fn new(
        verb: &'static str,
        done_verb: &'static str,
        name: &str,
        total: Option<u64>,
        show: bool,
        multi: Option<&indicatif::MultiProgress>,
    ) -> Progress {
        let tty = show && io::stderr().is_terminal();
        let bar = tty.then(|| {
            let bar = match total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::no_length(),
            };
            let bar = match multi {
                Some(m) => m.add(bar),
                None => bar,
            };
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(name.to_string());
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            plain: show && !tty,
            verb,
            done_verb,
            name: name.to_string(),
            total,
            start: now,
            last_line: now,
            pos: 0,
        }
    }

    /// Start over for a new phase (e.g. verifying after writing), with a new verb and total.
    pub fn restart(&mut self, verb: &'static str, done_verb: &'static str, total: Option<u64>) {
        self.verb = verb;
        self.done_verb = done_verb;
        self.total = total;
        self.start = Instant::now();
        self.last_line = self.start;
        self.pos = 0;
        if let Some(bar) = &self.bar {
            bar.reset();
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_message(format!("{} ({verb})", self.name));
        }
    }

    /// Set the number of bytes done.
    pub fn set(&mut self, pos: u64) {
        self.pos = pos;
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        } else if self.plain && self.last_line.elapsed() >= PLAIN_EVERY {
            self.last_line = Instant::now();
            eprintln!("pi-image: {} {}: {}", self.verb, self.name, self.line());
        }
    }

    fn line(&self) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = mib(self.pos) / secs;
        match self.total {
            Some(t) if t > 0 => format!(
                "{:.1} of {:.1} MiB ({:.0}%), {rate:.1} MiB/s",
                mib(self.pos),
                mib(t),
                self.pos as f64 * 100.0 / t as f64
            ),
            _ => format!("{:.1} MiB, {rate:.1} MiB/s", mib(self.pos)),
        }
    }

    /// Clear the bar; in plain mode say how it went when the whole transfer completed.
    pub fn finish(&mut self, complete: bool) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        } else if self.plain && complete {
            eprintln!(
                "pi-image: {} {}: {}",
                self.done_verb,
                self.name,
                self.line()
            );
        }
    }
}
