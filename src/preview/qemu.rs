//! Running `qemu-system-aarch64`: whether it is there, whether the host has the memory, KVM or
//! TCG, the command line of a `virt` machine booting a node's kernel and disk, and the running
//! child, which is killed when dropped.
//!
//! The serial console and QEMU's monitor share QEMU's stdin/stdout (a mux chardev): stdout is
//! the console (also written to the log file by QEMU itself), and the monitor is reached by
//! writing `Ctrl-A c` and a command to stdin, which is how a clean shutdown is asked for
//! (`system_powerdown`, the machine's power button).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};

use super::PreviewError;
use super::slirp::SlirpNet;

/// The emulator.
pub const QEMU: &str = "qemu-system-aarch64";
/// The Debian/Ubuntu package that has it.
pub const QEMU_PACKAGE: &str = "qemu-system-arm";
/// Guest memory, MiB: what a Pi 4 with 2 GB would leave cloud-init, and enough for Ubuntu's
/// first boot.
pub const GUEST_MIB: u64 = 1536;
/// What QEMU itself takes beside the guest's memory (TCG's translation cache), MiB.
const OVERHEAD_MIB: u64 = 512;
/// Virtual CPUs: two keep a TCG boot within minutes on a 2-core host.
pub const CPUS: u32 = 2;

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// The host's own CPU through /dev/kvm (arm64 hosts).
    Kvm,
    /// QEMU's translator (any host; minutes per boot).
    Tcg,
}

impl Accel {
    /// KVM on an arm64 host that lets us open /dev/kvm, else TCG.
    pub fn detect() -> Accel {
        let kvm = std::env::consts::ARCH == "aarch64"
            && std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
        if kvm { Accel::Kvm } else { Accel::Tcg }
    }

    /// `kvm` or `tcg`.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A program's path, found on PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Refuse when `/proc/meminfo`'s MemAvailable is less than `boots` guests need.
pub fn check_memory(boots: usize) -> Result<(), PreviewError> {
    match std::fs::read_to_string("/proc/meminfo") {
        Ok(meminfo) => memory_for(&meminfo, boots),
        Err(_) => Ok(()), // not Linux's procfs: nothing to judge by
    }
}

/// [`check_memory`] on the text of a `/proc/meminfo`.
fn memory_for(meminfo: &str, boots: usize) -> Result<(), PreviewError> {
    let available_kib = meminfo.lines().find_map(|l| {
        l.strip_prefix("MemAvailable:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()
    });
    let need_mib = (GUEST_MIB + OVERHEAD_MIB) * boots as u64;
    match available_kib {
        Some(kib) if kib / 1024 < need_mib => Err(PreviewError::Memory {
            available_mib: kib / 1024,
            need_mib,
            boots,
        }),
        _ => Ok(()),
    }
}

/// Where the console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleMode {
    /// Piped to us (and logged); stdin is ours to reach the monitor.
    Watched,
    /// The user's terminal (and logged): an interactive serial console, `Ctrl-A x` quits.
    Interactive,
}

/// Everything one boot needs.
#[derive(Debug, Clone)]
pub struct Machine<'a> {
    /// The emulator.
    pub qemu: &'a Path,
    /// KVM or TCG.
    pub accel: Accel,
    /// The kernel file.
    pub kernel: &'a Path,
    /// The initramfs file.
    pub initrd: Option<&'a Path>,
    /// The kernel command line.
    pub append: &'a str,
    /// The scratch disk image.
    pub disk: &'a Path,
    /// The user network.
    pub net: &'a SlirpNet,
    /// The host port forwarded to the guest's ssh.
    pub ssh_port: u16,
    /// The console log QEMU writes.
    pub log: &'a Path,
}

impl Machine<'_> {
    /// QEMU's arguments (without the program).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        push("-M");
        push("virt");
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "cortex-a72"),
        };
        for s in ["-accel", accel, "-cpu", cpu] {
            push(s);
        }
        for s in [
            "-smp",
            &CPUS.to_string(),
            "-m",
            &GUEST_MIB.to_string(),
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
        ] {
            push(s);
        }
        push("-chardev");
        a.push(option_value(
            "stdio,id=con,mux=on,signal=off,logfile=",
            self.log,
            "",
        ));
        for s in [
            "-serial",
            "chardev:con",
            "-mon",
            "chardev=con,mode=readline",
        ] {
            a.push(s.into());
        }
        a.push("-kernel".into());
        a.push(self.kernel.into());
        if let Some(initrd) = self.initrd {
            a.push("-initrd".into());
            a.push(initrd.into());
        }
        a.push("-append".into());
        a.push(self.append.into());
        a.push("-drive".into());
        a.push(option_value(
            "file=",
            self.disk,
            ",format=raw,if=none,id=disk,cache=unsafe",
        ));
        for s in [
            "-device",
            "virtio-blk-pci,drive=disk",
            "-netdev",
            &self.net.netdev_arg("net", self.ssh_port),
            // romfile=: no iPXE ROM needed (or installed) for a kernel booted directly.
            "-device",
            "virtio-net-pci,netdev=net,romfile=",
        ] {
            a.push(s.into());
        }
        a
    }

    /// Start QEMU. Watched: stdin, stdout and stderr piped, in its own process group (Ctrl-C
    /// reaches us, and we stop it), killed if this process dies. Interactive: on the terminal.
    pub fn spawn(&self, mode: ConsoleMode) -> Result<Qemu, PreviewError> {
        let mut cmd = Command::new(self.qemu);
        cmd.args(self.args());
        if mode == ConsoleMode::Watched {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            // SAFETY: prctl is async-signal-safe and touches no memory of ours.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|source| PreviewError::Spawn {
            program: self.qemu.to_owned(),
            source,
        })?;
        Ok(Qemu { child })
    }
}

/// `before`, the path with its commas doubled (QEMU's option syntax), `after`.
fn option_value(before: &str, path: &Path, after: &str) -> OsString {
    let mut out = before.as_bytes().to_vec();
    for &b in path.as_os_str().as_encoded_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    out.extend_from_slice(after.as_bytes());
    // SAFETY: valid OsStr bytes with ASCII inserted at ASCII boundaries (after a comma, or
    // before and after the whole).
    unsafe { OsString::from_encoded_bytes_unchecked(out) }
}

/// A running QEMU; killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Qemu {
    /// The process.
    pub child: Child,
}

impl Qemu {
    /// Its stdin, while it is ours.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Its exit status, if it has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Press the machine's power button (through the monitor on `stdin`).
    pub fn power_button(stdin: &mut ChildStdin) -> std::io::Result<()> {
        stdin.write_all(b"\x01csystem_powerdown\n")?;
        stdin.flush()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_checked_against_memavailable() {
        let meminfo =
            "MemTotal:        4000000 kB\nMemFree:  100 kB\nMemAvailable:    3000000 kB\n";
        assert!(memory_for(meminfo, 1).is_ok());
        let e = memory_for(meminfo, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not enough memory: 2 boot(s) at once need about 4096 MiB (1536 MiB per guest plus QEMU), but only 2929 MiB are available (MemAvailable in /proc/meminfo); free memory or boot fewer at once (--jobs)"
        );
        assert!(memory_for("MemTotal: 1 kB\n", 8).is_ok());
    }

    #[test]
    fn the_command_line() {
        let net = SlirpNet::for_node(None).unwrap();
        let m = Machine {
            qemu: Path::new("/usr/bin/qemu-system-aarch64"),
            accel: Accel::Tcg,
            kernel: Path::new("/s/kernel"),
            initrd: Some(Path::new("/s/initrd")),
            append: "root=PARTUUID=9e41c1cb-02 console=ttyAMA0",
            disk: Path::new("/s/a,b.img"),
            net: &net,
            ssh_port: 2222,
            log: Path::new("/s/console.log"),
        };
        let args: Vec<String> = m
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "-M virt -accel tcg -cpu cortex-a72 -smp 2 -m 1536 -nodefaults -no-reboot -display none \
             -chardev stdio,id=con,mux=on,signal=off,logfile=/s/console.log -serial chardev:con \
             -mon chardev=con,mode=readline -kernel /s/kernel -initrd /s/initrd \
             -append root=PARTUUID=9e41c1cb-02 console=ttyAMA0 \
             -drive file=/s/a,,b.img,format=raw,if=none,id=disk,cache=unsafe \
             -device virtio-blk-pci,drive=disk \
             -netdev user,id=net,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15,restrict=on,hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22 \
             -device virtio-net-pci,netdev=net,romfile="
        );
    }
}
