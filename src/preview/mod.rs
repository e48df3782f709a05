//! `pi-image preview`: boot a node's image in QEMU and report whether it came up as it should.
//!
//! One preview: read the boot partition as a Pi 4's firmware would ([`firmware`]), check that
//! QEMU can run the kernel and that the kernel can drive QEMU's `virt` machine ([`kernel`]),
//! boot a scratch copy of the image ([`scratch`]) on a user network laid out as the node's LAN
//! ([`slirp`]), follow the serial console stage by stage ([`console`]), then gather the facts
//! (over ssh when a private key of the node's is at hand, else from the guest's disk after a
//! clean power-off, and the console) and compare them with what the profile or the image's seed
//! says ([`expect`], [`checks`]). The image itself is only ever read.

pub mod checks;
pub mod console;
pub mod expect;
pub mod firmware;
pub mod kernel;
pub mod qemu;
pub mod scratch;
pub mod slirp;
pub mod ssh;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::Serialize;

use self::checks::{Check, CloudInitResult, Facts, Source};
use self::console::{Console, Event, Stage};
use self::expect::{Expected, SeedError};
use self::kernel::KernelError;
use self::qemu::{Accel, ConsoleMode, Machine, Qemu};
use self::scratch::Scratch;
use self::slirp::{SlirpError, SlirpNet};
use crate::bootconf::configtxt::{self, Model};
use crate::image::bootfs::{BootFs, BootFsError, FatTimestamp};
use crate::image::ext4::{Ext4Error, Ext4Fs};
use crate::image::partition::{Partition, PartitionError, PartitionTable};
use crate::image::partview::{PartitionView, ReadOnly};
use crate::image::{ImageError, PendingOutput};
use crate::io::{AtPath, PathError};

/// No console output at all for this long: the kernel did not start.
const NO_OUTPUT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long sshd may take to answer after cloud-init finished.
const SSH_WAIT: Duration = Duration::from_secs(120);
/// How long the guest may take to power off after the power button.
const POWEROFF_WAIT: Duration = Duration::from_secs(120);
/// Console lines kept for the report of a boot that failed.
const TAIL_LINES: usize = 6;
/// Notes kept at most (failed units, cloud-init warnings).
const MAX_NOTES: usize = 20;
/// Tries at a free port for QEMU's ssh forwarding (another process may take it between our
/// probe and QEMU's bind).
const PORT_TRIES: usize = 3;

/// Why a preview could not be made (a node that boots but does not match is a [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// No emulator.
    #[error(
        "{} not found on PATH: install it (Debian/Ubuntu: apt-get install {})",
        qemu::QEMU,
        qemu::QEMU_PACKAGE
    )]
    QemuMissing,
    /// No ssh client, and one is needed.
    #[error(
        "{} not found on PATH, needed to log in to the node: install it (Debian/Ubuntu: apt-get install {})",
        ssh::SSH,
        ssh::SSH_PACKAGE
    )]
    SshMissing,
    /// Not enough memory for the guests.
    #[error(
        "not enough memory: {boots} boot(s) at once need about {need_mib} MiB ({} MiB per guest plus QEMU), but only {available_mib} MiB are available (MemAvailable in /proc/meminfo); free memory or boot fewer at once (--jobs)",
        qemu::GUEST_MIB
    )]
    Memory {
        /// MemAvailable, MiB.
        available_mib: u64,
        /// What the boots need, MiB.
        need_mib: u64,
        /// How many at once.
        boots: usize,
    },
    /// QEMU (or ssh) could not be started.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// I/O on a named file.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The console log could not be kept.
    #[error(transparent)]
    Output(#[from] ImageError),
    /// The image's partition table.
    #[error(transparent)]
    Partition(#[from] PartitionError),
    /// The image's boot partition.
    #[error(transparent)]
    BootFs(#[from] BootFsError),
    /// The image's root file system.
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
    /// The firmware would boot a file the boot partition lacks.
    #[error("{}: the boot partition has no {file} ({how})", image.display())]
    MissingBootFile {
        /// The image.
        image: PathBuf,
        /// The file.
        file: String,
        /// Why it is needed.
        how: String,
    },
    /// The kernel file is not one QEMU can boot.
    #[error("{}: {file} on the boot partition {source}; QEMU cannot boot it", image.display())]
    Kernel {
        /// The image.
        image: PathBuf,
        /// The kernel file.
        file: String,
        /// Why.
        source: KernelError,
    },
    /// The kernel cannot drive QEMU's `virt` machine.
    #[error(
        "{}: kernel {release} lacks what QEMU's virt machine needs ({missing}; from {evidence}); booting it on QEMU's raspi3b machine instead is not implemented",
        image.display()
    )]
    NoVirt {
        /// The image.
        image: PathBuf,
        /// The kernel release.
        release: String,
        /// The config options missing.
        missing: String,
        /// Where that was read.
        evidence: String,
    },
    /// Nothing in the root file system tells what the kernel supports.
    #[error(
        "{}: {problem}; cannot tell whether the kernel can drive QEMU's virt machine",
        image.display()
    )]
    UnknownKernel {
        /// The image.
        image: PathBuf,
        /// What is missing.
        problem: String,
    },
    /// The node's subnet cannot be QEMU's user network.
    #[error(transparent)]
    Network(#[from] SlirpError),
    /// The private key given cannot log in to the node.
    #[error("--identity {}: {problem}", path.display())]
    Identity {
        /// The key file.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// The image's NoCloud seed does not say what the node should be.
    #[error("{}: the cloud-init seed on its boot partition: {source}", image.display())]
    Seed {
        /// The image.
        image: PathBuf,
        /// What is wrong.
        source: SeedError,
    },
    /// `--ssh` without a private key of the node's.
    #[error(
        "--ssh needs the private key of one of the node's ssh_keys (none of ~/.ssh/id_ed25519, id_ecdsa, id_rsa matches): give --identity FILE"
    )]
    NoIdentity,
}

/// What the preview does once the node is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Check and report, then stop the node.
    Check,
    /// Check and report, then log in interactively; the node stops when the session ends.
    Ssh,
    /// The serial console on the terminal from power-on (`Ctrl-A x` quits); no checks.
    Console,
}

/// The emulator and how it runs, found once for all previews.
#[derive(Debug, Clone)]
pub struct Host {
    /// `qemu-system-aarch64`.
    pub qemu: PathBuf,
    /// `ssh`, if installed.
    pub ssh: Option<PathBuf>,
    /// KVM or TCG.
    pub accel: Accel,
}

impl Host {
    /// Find QEMU (an error names its package when missing), ssh, KVM, and check that the host
    /// has the memory for `boots` guests at once.
    pub fn detect(boots: usize) -> Result<Host, PreviewError> {
        let qemu = qemu::find_program(qemu::QEMU).ok_or(PreviewError::QemuMissing)?;
        qemu::check_memory(boots)?;
        Ok(Host {
            qemu,
            ssh: qemu::find_program(ssh::SSH),
            accel: Accel::detect(),
        })
    }

    /// The machine, for the report.
    pub fn describe(&self) -> String {
        let cpu = match self.accel {
            Accel::Kvm => "the host's CPU",
            Accel::Tcg => "emulated Cortex-A72",
        };
        format!(
            "QEMU virt ({}, {} x {cpu}, {} MiB)",
            self.accel.name(),
            qemu::CPUS,
            qemu::GUEST_MIB
        )
    }
}

/// What one preview is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node's name (or the image's), for messages and the scratch directory.
    pub label: String,
    /// What the node should show.
    pub expected: Expected,
    /// Check, ssh or console.
    pub mode: Mode,
    /// How long cloud-init may take to finish, from QEMU's start.
    pub timeout: Duration,
    /// The private key to log in with (`--identity`); else `~/.ssh/id_*` if one matches.
    pub identity: Option<PathBuf>,
    /// Where the console log is kept.
    pub log: PathBuf,
    /// When the command started: times in the report are also given from here.
    pub started: Instant,
}

/// One stage in the report.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// The stage.
    pub stage: Stage,
    /// Seconds from QEMU's start to the console line; `None` when not seen.
    pub seconds: Option<f64>,
    /// What the line showed.
    pub detail: String,
}

/// What a preview found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The node (or image) label.
    pub node: String,
    /// The image booted (a scratch copy of it).
    pub image: PathBuf,
    /// Where the expected values came from.
    pub expected_from: String,
    /// The console log.
    pub console_log: PathBuf,
    /// The machine: `virt`, accelerator, CPUs, memory.
    pub machine: String,
    /// The kernel file and release.
    pub kernel: String,
    /// The initramfs file.
    pub initrd: Option<String>,
    /// How the firmware's choice was made.
    pub boot_files: String,
    /// The command line the kernel got.
    pub cmdline: String,
    /// The user network.
    pub network: String,
    /// Seconds from the command's start to QEMU's start (build, copy, checks).
    pub qemu_started_seconds: f64,
    /// Every stage, reached or not.
    pub stages: Vec<StageReport>,
    /// Seconds from the command's start to cloud-init's "finished" line.
    pub finished_seconds: Option<f64>,
    /// The comparisons (empty when the boot did not finish).
    pub checks: Vec<Check>,
    /// Failed units, cloud-init warnings, how facts were gathered.
    pub notes: Vec<String>,
    /// The first thing that did not match; `None` when everything did.
    pub failure: Option<String>,
}

impl Report {
    /// Whether the node came up as it should.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// The report as lines: when cloud-init finished, each check, the notes, the verdict.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(f) = self.finished_seconds {
            lines.push(format!(
                "cloud-init finished {:.1} s after QEMU started, {f:.1} s after the command started",
                f - self.qemu_started_seconds
            ));
        }
        for c in &self.checks {
            let source = match c.source {
                "" => String::new(),
                s => format!("  [{s}]"),
            };
            lines.push(match c.ok {
                true => format!("ok    {:<10} {}{source}", c.name, c.found),
                false => format!(
                    "FAIL  {:<10} expected {}, found {}{source}",
                    c.name, c.expected, c.found
                ),
            });
        }
        lines.extend(self.notes.iter().map(|n| format!("note: {n}")));
        lines.push(match &self.failure {
            None => format!(
                "PASS: came up as {} says; console log {}",
                self.expected_from,
                self.console_log.display()
            ),
            Some(f) => format!("FAIL: {f}; console log {}", self.console_log.display()),
        });
        lines
    }
}

/// What the boot partition and the root file system say about booting the image.
struct Prepared {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    kernel_text: String,
    initrd_name: Option<String>,
    how: String,
    cmdline: String,
    root: Partition,
}

/// Boot `image` once and report. Errors are for previews that could not be made at all; a node
/// that boots badly or not at all is a [`Report`] whose `failure` says why. `progress` gets
/// the stages as they come and, at the end, the report's lines ([`Report::summary`]).
pub fn run(
    host: &Host,
    image: &Path,
    opts: &Options,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report, PreviewError> {
    let identity = match opts.mode {
        Mode::Console => None,
        _ => ssh::find_identity(opts.identity.as_deref(), &opts.expected.keys)?,
    };
    if opts.mode == Mode::Ssh && identity.is_none() {
        return Err(PreviewError::NoIdentity);
    }
    let login_with = match (identity, &host.ssh) {
        (Some(_), None) => return Err(PreviewError::SshMissing),
        (Some(key), Some(program)) => Some((program.clone(), key)),
        (None, _) => None,
    };
    let net = SlirpNet::for_node(opts.expected.network.as_ref())?;
    let scratch = Scratch::create(image, &opts.label)?;
    let prepared = prepare(image, &scratch)?;
    let disk = scratch.copy_image(image, "disk.img")?;
    let log = scratch.path("console.log");
    let mut report = Report {
        node: opts.label.clone(),
        image: image.to_owned(),
        expected_from: opts.expected.source.clone(),
        console_log: opts.log.clone(),
        machine: host.describe(),
        kernel: prepared.kernel_text.clone(),
        initrd: prepared.initrd_name.clone(),
        boot_files: prepared.how.clone(),
        cmdline: prepared.cmdline.clone(),
        network: String::new(),
        qemu_started_seconds: 0.0,
        stages: Vec::new(),
        finished_seconds: None,
        checks: Vec::new(),
        notes: Vec::new(),
        failure: None,
    };
    progress(&format!(
        "booting {} on {}",
        image.display(),
        report.machine
    ));
    progress(&format!(
        "kernel {}, initramfs {} ({})",
        report.kernel,
        report.initrd.as_deref().unwrap_or("none"),
        report.boot_files
    ));
    progress(&format!("command line: {}", report.cmdline));
    let machine = |port| Machine {
        qemu: &host.qemu,
        accel: host.accel,
        kernel: &prepared.kernel,
        initrd: prepared.initrd.as_deref(),
        append: &prepared.cmdline,
        disk: &disk,
        net: &net,
        ssh_port: port,
        log: &log,
    };
    if opts.mode == Mode::Console {
        let port = free_port().at(Path::new("127.0.0.1:0"))?;
        report.network = describe_net(&net, port);
        return interactive_console(report, &machine(port), &log, opts, progress);
    }

    let (mut watch, port) = match start(&mut report, &machine, opts, progress)? {
        Ok(started) => started,
        Err(failure) => {
            report.failure = Some(failure);
            return finish(report, &log, opts, progress);
        }
    };
    let outcome = watch.until_finished(opts.timeout, progress);
    report.stages = watch.stage_reports();
    report.finished_seconds = watch
        .stage_time(Stage::Finished)
        .map(|t| t + report.qemu_started_seconds);
    if let Err(failure) = outcome {
        report.failure = Some(failure);
        report.notes = std::mem::take(&mut watch.notes);
        drop(watch);
        return finish(report, &log, opts, progress);
    }

    let known_hosts = match watch.console.facts.host_keys.as_slice() {
        [] => None,
        keys => {
            let path = scratch.path("known_hosts");
            std::fs::write(&path, ssh::known_hosts(keys)).at(&path)?;
            Some(path)
        }
    };
    let login = login_with.as_ref().map(|(program, key)| ssh::Login {
        ssh: program,
        identity: key,
        user: &opts.expected.user,
        port,
        known_hosts: known_hosts.as_deref(),
    });
    let mut facts = match &login {
        Some(login) => ssh_facts(login, &opts.expected.interface, progress),
        None => {
            watch.notes.push(
                "no private key of the node's at hand (--identity): hostname, keys and cloud-init's result read from the guest's disk after it powered off".into(),
            );
            progress("powering the node off to read its disk");
            match watch.power_off(POWEROFF_WAIT) {
                Ok(()) => {
                    disk_facts(&disk, &prepared.root, &opts.expected.user).unwrap_or_else(|why| {
                        Facts {
                            keys_problem: Some(why),
                            ..Facts::default()
                        }
                    })
                }
                Err(why) => Facts {
                    keys_problem: Some(why),
                    ..Facts::default()
                },
            }
        }
    };
    facts.fill_from_console(&watch.console.facts);
    report.notes = std::mem::take(&mut watch.notes);

    let mut all = vec![root_check(
        &prepared.root,
        &report.stages,
        &prepared.cmdline,
    )];
    all.extend(checks::compare(&opts.expected, &net, &facts));
    report.failure = all
        .iter()
        .find(|c| !c.ok)
        .map(|c| format!("{}: expected {}, found {}", c.name, c.expected, c.found));
    report.checks = all;
    if let (Mode::Ssh, Some(login), None) = (opts.mode, &login, &facts.keys_problem) {
        for line in report.summary() {
            progress(&line);
        }
        progress(&format!(
            "ssh session; the node stops when it ends: {}",
            login.command_line()
        ));
        let _ = login.interactive();
        drop(watch);
        keep_log(&log, &opts.log)?;
        return Ok(report);
    }
    drop(watch);
    finish(report, &log, opts, progress)
}

/// Keep the console log and give `progress` the report's lines.
fn finish(
    report: Report,
    log: &Path,
    opts: &Options,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report, PreviewError> {
    keep_log(log, &opts.log)?;
    for line in report.summary() {
        progress(&line);
    }
    Ok(report)
}

/// Start QEMU watched, on a free port (another one if QEMU finds it taken). The inner `Err`
/// says why QEMU did not start.
fn start<'m>(
    report: &mut Report,
    machine: &dyn Fn(u16) -> Machine<'m>,
    opts: &Options,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Result<(Watch, u16), String>, PreviewError> {
    for attempt in 1..=PORT_TRIES {
        let port = free_port().at(Path::new("127.0.0.1:0"))?;
        report.network = describe_net(machine(port).net, port);
        progress(&format!("network: {}", report.network));
        report.qemu_started_seconds = opts.started.elapsed().as_secs_f64();
        let qemu = machine(port).spawn(ConsoleMode::Watched)?;
        match Watch::start(qemu, &opts.label) {
            Ok(watch) => return Ok(Ok((watch, port))),
            Err(stderr) if stderr.contains("host forwarding") && attempt < PORT_TRIES => {
                progress(&format!("port {port} was taken; trying another"));
            }
            Err(stderr) => return Ok(Err(format!("QEMU did not start: {}", stderr.trim()))),
        }
    }
    Ok(Err("QEMU did not start".into()))
}

/// `--console`: QEMU on the terminal until the user quits it; the stages come from the log.
fn interactive_console<'m>(
    mut report: Report,
    machine: &Machine<'m>,
    log: &Path,
    opts: &Options,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report, PreviewError> {
    progress(&format!("network: {}", report.network));
    progress("serial console: Ctrl-A x quits QEMU, Ctrl-A h lists the other keys");
    report.qemu_started_seconds = opts.started.elapsed().as_secs_f64();
    let mut qemu = machine.spawn(ConsoleMode::Interactive)?;
    let _ = qemu.child.wait();
    let mut console = Console::new();
    let mut seen: Vec<(Stage, String)> = Vec::new();
    let text = std::fs::read(log).unwrap_or_default();
    for line in String::from_utf8_lossy(&text).lines() {
        for event in console.line(line) {
            if let Event::Stage(stage, detail) = event
                && !seen.iter().any(|(s, _)| *s == stage)
            {
                seen.push((stage, detail));
            }
        }
    }
    report.stages = Stage::ALL
        .iter()
        .map(|&stage| StageReport {
            stage,
            seconds: None,
            detail: seen
                .iter()
                .find(|(s, _)| *s == stage)
                .map_or_else(|| "not seen".into(), |(_, d)| d.clone()),
        })
        .collect();
    keep_log(log, &opts.log)?;
    for s in &report.stages {
        progress(&format!("{}: {}", s.stage, s.detail));
    }
    progress(&format!("console log {}", opts.log.display()));
    Ok(report)
}

/// The facts over ssh; what ssh said when it could not log in.
fn ssh_facts(login: &ssh::Login<'_>, interface: &str, progress: &(dyn Fn(&str) + Sync)) -> Facts {
    progress(&format!(
        "logging in: ssh -i {} -p {} {}@127.0.0.1",
        login.identity.display(),
        login.port,
        login.user
    ));
    match login.run(&checks::SSH_FACTS.replace("{iface}", interface), SSH_WAIT) {
        Ok(out) => checks::parse_ssh_facts(&out),
        Err(why) => Facts {
            keys_problem: Some(why),
            ..Facts::default()
        },
    }
}

/// Take the kernel and initramfs out of the boot partition into the scratch directory, read the
/// command line, and check the kernel against the root file system.
fn prepare(image: &Path, scratch: &Scratch) -> Result<Prepared, PreviewError> {
    let (table, fs) = open_boot(image)?;
    let root = table.root(image)?.clone();
    let text = |name: &str| read_text(&fs, name).ok().flatten();
    let config = configtxt::effective("config.txt", &text, Model::Pi4);
    let choice = firmware::choose(&config, &|name| {
        firmware::looks_like_uboot(name, fs.read_file(name).ok().flatten().as_deref())
    });
    let missing = |file: &str| PreviewError::MissingBootFile {
        image: image.to_owned(),
        file: file.to_owned(),
        how: choice.how.clone(),
    };
    let cmdline = text(&choice.cmdline_file).ok_or_else(|| missing(&choice.cmdline_file))?;
    let extract = |name: &str, to: &str| -> Result<PathBuf, PreviewError> {
        if !fs.exists(name) {
            return Err(missing(name));
        }
        let (mut out, path) = scratch.create_file(to)?;
        fs.copy_file_to(name, &mut out)?;
        Ok(path)
    };
    let kernel = extract(&choice.kernel, "kernel")?;
    let initrd = choice
        .initrd
        .as_deref()
        .map(|name| extract(name, "initrd"))
        .transpose()?;
    let inspected = kernel::inspect(File::open(&kernel).at(&kernel)?).map_err(|source| {
        PreviewError::Kernel {
            image: image.to_owned(),
            file: choice.kernel.clone(),
            source,
        }
    })?;
    let release = inspected.release;
    check_virt(image, &root, &release)?;
    Ok(Prepared {
        kernel,
        initrd,
        kernel_text: format!(
            "{} ({}arm64 Linux {release})",
            choice.kernel,
            if inspected.gzip { "gzip " } else { "" }
        ),
        initrd_name: choice.initrd.clone(),
        how: choice.how,
        cmdline: firmware::qemu_cmdline(&cmdline),
        root,
    })
}

/// The image's boot partition, read-only.
fn open_boot(image: &Path) -> Result<(PartitionTable, BootFs<BootView>), PreviewError> {
    let table = PartitionTable::read(image)?;
    let boot = table.boot(image)?;
    let file = File::open(image).at(image)?;
    let fs = BootFs::open(
        PartitionView::new(ReadOnly(file), boot.start, boot.len).at(image)?,
        FatTimestamp::from_unix(0),
    )?;
    Ok((table, fs))
}

/// A boot partition opened read-only.
type BootView = PartitionView<ReadOnly<File>>;

/// A boot partition file as text (`None` when missing).
fn read_text(fs: &BootFs<BootView>, name: &str) -> Result<Option<String>, BootFsError> {
    Ok(fs
        .read_file(name)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// What the NoCloud seed on `image`'s boot partition says the node should be.
pub fn seed_expectations(image: &Path) -> Result<Expected, PreviewError> {
    let (_, fs) = open_boot(image)?;
    Expected::from_seed(
        read_text(&fs, "meta-data")?.as_deref(),
        read_text(&fs, "user-data")?.as_deref(),
        read_text(&fs, "network-config")?.as_deref(),
    )
    .map_err(|source| PreviewError::Seed {
        image: image.to_owned(),
        source,
    })
}

/// Whether kernel `release` can drive QEMU's `virt` machine, by its config in the root file
/// system, else by its modules.
fn check_virt(image: &Path, root: &Partition, release: &str) -> Result<(), PreviewError> {
    let fs = Ext4Fs::open(image, root.start, root.len, false)?;
    let no_virt = |missing: Vec<&str>, evidence: String| PreviewError::NoVirt {
        image: image.to_owned(),
        release: release.to_owned(),
        missing: missing.join(", "),
        evidence,
    };
    let config_path = format!("/boot/config-{release}");
    if let Some(config) = fs.read_file(&config_path)? {
        let missing = kernel::virt_missing_from_config(&String::from_utf8_lossy(&config));
        return match missing.is_empty() {
            true => Ok(()),
            false => Err(no_virt(missing, config_path)),
        };
    }
    let modules = format!("/lib/modules/{release}");
    if !fs.exists(&modules)? {
        return Err(PreviewError::UnknownKernel {
            image: image.to_owned(),
            problem: format!("the root file system has neither {config_path} nor {modules}"),
        });
    }
    let builtin = fs
        .read_file(&format!("{modules}/modules.builtin"))?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let has_module = |path: &str| {
        ["ko", "ko.xz", "ko.zst", "ko.gz"].iter().any(|ext| {
            fs.exists(&format!("{modules}/kernel/{path}.{ext}"))
                .unwrap_or(false)
        })
    };
    let missing = kernel::virt_missing_from_modules(&builtin, &has_module);
    match missing.is_empty() {
        true => Ok(()),
        false => Err(no_virt(missing, modules)),
    }
}

/// The root file system the kernel mounted must be the image's root partition.
fn root_check(root: &Partition, stages: &[StageReport], cmdline: &str) -> Check {
    let param = crate::bootconf::cmdline::get(cmdline, "root").unwrap_or("(none)");
    let expected = format!("partition {} (root={param})", root.number);
    let mounted = stages
        .iter()
        .find(|s| s.stage == Stage::Root && s.seconds.is_some())
        .map(|s| s.detail.clone());
    let Some(device) = mounted else {
        return Check {
            name: "root",
            ok: false,
            expected,
            found: "no root mount seen on the console".into(),
            source: "console",
        };
    };
    // vda2, mmcblk0p2, sda2: the partition number is the trailing digits.
    let digits = device.len() - device.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let number: Option<u32> = device[device.len() - digits..].parse().ok();
    Check {
        name: "root",
        ok: number == Some(root.number),
        expected,
        found: device,
        source: "console",
    }
}

/// The facts on the guest's disk after it powered off: its hostname, the user's
/// authorized_keys (home from /etc/passwd), cloud-init's result.
fn disk_facts(disk: &Path, root: &Partition, user: &str) -> Result<Facts, String> {
    let fs = Ext4Fs::open(disk, root.start, root.len, false).map_err(|e| e.to_string())?;
    let read = |p: &str| -> Result<Option<String>, String> {
        fs.read_file(p)
            .map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| e.to_string())
    };
    let mut facts = Facts::default();
    if let Some(h) = read("/etc/hostname")? {
        facts.hostname = Some((h.trim().to_owned(), Source::Disk));
    }
    let passwd = read("/etc/passwd")?.unwrap_or_default();
    let home = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[0] == user && f[5].starts_with('/')).then(|| f[5].to_owned())
    });
    match home {
        None => facts.keys_problem = Some(format!("no user {user} in the guest's /etc/passwd")),
        Some(home) => {
            let path = format!("{}/.ssh/authorized_keys", home.trim_end_matches('/'));
            match read(&path)? {
                Some(keys) => facts.authorized_keys = Some((keys, Source::Disk)),
                None => facts.keys_problem = Some(format!("no {path} on the guest's disk")),
            }
        }
    }
    if let Some(json) = read("/var/lib/cloud/data/result.json")? {
        facts.cloud_init = CloudInitResult::parse(&json).map(|r| (r, Source::Disk));
    }
    Ok(facts)
}

/// Keep the console log at `to` (replacing what is there; a temp file renamed into place).
fn keep_log(log: &Path, to: &Path) -> Result<(), PreviewError> {
    let mut out = PendingOutput::create(to)?;
    if let Ok(mut f) = File::open(log) {
        std::io::copy(&mut f, out.file()).at(out.temp_path())?;
    }
    out.commit()?;
    Ok(())
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn describe_net(net: &SlirpNet, port: u16) -> String {
    format!(
        "QEMU user network {}/{}: QEMU at {} (the node's gateway), DNS {}, node {}{}, ssh on 127.0.0.1:{port}, nothing else reachable (restrict=on)",
        net.net,
        net.prefix,
        net.host,
        net.dns,
        net.guest,
        if net.static_address { "" } else { " by DHCP" }
    )
}

/// A running boot: QEMU, the console's lines (read by a thread), what they showed so far.
struct Watch {
    qemu: Qemu,
    lines: Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    start: Instant,
    console: Console,
    seen: Vec<(Stage, f64, String)>,
    notes: Vec<String>,
    tail: Vec<String>,
    label: String,
}

impl Watch {
    /// Start reading QEMU's console. `Err` with QEMU's stderr when it exited at once (a
    /// taken port, a bad option).
    fn start(mut qemu: Qemu, label: &str) -> Result<Watch, String> {
        let (tx, rx) = mpsc::channel();
        let stdout = qemu.child.stdout.take();
        std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        let stderr = qemu.child.stderr.take();
        let stderr = std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(e) = stderr {
                let _ = e.take(64 << 10).read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        });
        let start = Instant::now();
        // QEMU refuses a taken forwarding port (and bad options) within its first moments.
        std::thread::sleep(Duration::from_millis(500));
        if qemu.exited().is_some() {
            drop(qemu);
            return Err(stderr.join().unwrap_or_default());
        }
        Ok(Watch {
            qemu,
            lines: rx,
            stderr,
            start,
            console: Console::new(),
            seen: Vec::new(),
            notes: Vec::new(),
            tail: Vec::new(),
            label: label.to_owned(),
        })
    }

    fn stage_time(&self, stage: Stage) -> Option<f64> {
        self.seen
            .iter()
            .find(|(s, _, _)| *s == stage)
            .map(|(_, t, _)| *t)
    }

    fn stage_reports(&self) -> Vec<StageReport> {
        Stage::ALL
            .iter()
            .map(
                |&stage| match self.seen.iter().find(|(s, _, _)| *s == stage) {
                    Some((_, t, d)) => StageReport {
                        stage,
                        seconds: Some(*t),
                        detail: d.clone(),
                    },
                    None => StageReport {
                        stage,
                        seconds: None,
                        detail: "not seen".into(),
                    },
                },
            )
            .collect()
    }

    fn last_stage(&self) -> String {
        match self.seen.iter().max_by_key(|(s, _, _)| *s) {
            Some((s, t, _)) => format!("last stage seen: {s} at {t:.1} s"),
            None => "no boot stage seen".into(),
        }
    }

    fn tail_text(&self) -> String {
        match self.tail.as_slice() {
            [] => "the console stayed empty".into(),
            lines => format!("last console lines: {}", lines.join(" | ")),
        }
    }

    /// Handle one console line; `Some` when it ends the watch (finished, or fatal).
    fn line(&mut self, raw: &str, progress: &(dyn Fn(&str) + Sync)) -> Option<Result<(), String>> {
        let t = self.start.elapsed().as_secs_f64();
        let shown = raw.trim();
        if !shown.is_empty() {
            if self.tail.len() == TAIL_LINES {
                self.tail.remove(0);
            }
            self.tail.push(shown.chars().take(200).collect());
        }
        for event in self.console.line(raw) {
            match event {
                Event::Stage(stage, detail) => {
                    if self.stage_time(stage).is_none() {
                        progress(&format!("{t:>7.1} s  {stage}: {detail}"));
                        self.seen.push((stage, t, detail));
                    }
                    if stage == Stage::Finished {
                        return Some(Ok(()));
                    }
                }
                Event::Fatal(line) => {
                    return Some(Err(format!(
                        "{t:.1} s: the boot cannot go on: {line} ({})",
                        self.last_stage()
                    )));
                }
                Event::Note(note) => {
                    if self.notes.len() < MAX_NOTES && !self.notes.contains(&note) {
                        progress(&format!("{t:>7.1} s  note: {note}"));
                        self.notes.push(note);
                    }
                }
            }
        }
        None
    }

    /// Follow the console until cloud-init finishes (`Ok`), or say why it did not.
    fn until_finished(
        &mut self,
        timeout: Duration,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(), String> {
        loop {
            if scratch::interrupted() {
                return Err(format!("interrupted ({})", self.last_stage()));
            }
            match self.lines.recv_timeout(Duration::from_millis(250)) {
                Ok(line) => {
                    if let Some(end) = self.line(&line, progress) {
                        return end;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // stdout closed: QEMU is ending.
                    let _ = self.qemu.child.wait();
                }
            }
            if let Some(status) = self.qemu.exited() {
                // The last lines may still be queued: they often say why.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    if let Some(end) = self.line(&line, progress) {
                        return end;
                    }
                }
                let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
                let stderr = stderr.join().unwrap_or_default();
                let why = if status.success() {
                    "the guest powered off or rebooted".to_owned()
                } else {
                    format!("{status}: {}", stderr.trim())
                };
                return Err(format!(
                    "QEMU exited before cloud-init finished ({why}; {}; {})",
                    self.last_stage(),
                    self.tail_text()
                ));
            }
            let elapsed = self.start.elapsed();
            if self.tail.is_empty() && elapsed > NO_OUTPUT_TIMEOUT {
                return Err(format!(
                    "no output on the serial console after {} s: the kernel did not start",
                    NO_OUTPUT_TIMEOUT.as_secs()
                ));
            }
            if elapsed > timeout {
                return Err(format!(
                    "cloud-init did not finish within {} s ({}; {})",
                    timeout.as_secs(),
                    self.last_stage(),
                    self.tail_text()
                ));
            }
        }
    }

    /// Press the power button and wait for QEMU to end; the guest's disk is then clean.
    fn power_off(&mut self, wait: Duration) -> Result<(), String> {
        let mut stdin = self
            .qemu
            .take_stdin()
            .ok_or_else(|| "QEMU's monitor is not reachable".to_owned())?;
        Qemu::power_button(&mut stdin).map_err(|e| format!("QEMU's monitor: {e}"))?;
        let until = Instant::now() + wait;
        let quiet = |_: &str| {};
        while Instant::now() < until && !scratch::interrupted() {
            if self.qemu.exited().is_some() {
                return Ok(());
            }
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(250)) {
                let _ = self.line(&line, &quiet);
            }
        }
        Err(format!(
            "{}: the guest did not power off within {} s after the power button; its disk was not read",
            self.label,
            wait.as_secs()
        ))
    }
}
