//! What a Raspberry Pi 4's firmware would boot from an image's boot partition, reduced to what
//! QEMU takes: a kernel file, an initramfs file and a kernel command line. Pure: the caller reads
//! the files.
//!
//! - `config.txt` is evaluated for a Pi 4 with its includes (the same evaluator as `inspect`).
//! - `kernel=` names the kernel (default `kernel8.img` with `arm_64bit=1`, else `kernel7l.img`,
//!   which no arm64 emulator runs). When that file is U-Boot (Ubuntu 20.04's
//!   `uboot_rpi_4.bin`), U-Boot's `boot.scr` loads `vmlinuz` and `initrd.img` from the same
//!   partition and boots them with the command line the firmware read, so those are booted.
//! - `initramfs FILE followkernel` (or the older `ramfsfile=FILE`) names the initramfs.
//! - `cmdline=` names the command line file (default `cmdline.txt`); the firmware passes its
//!   first line only.
//!
//! Device trees, overlays and `device_tree_address` describe Pi hardware: QEMU's `virt` machine
//! makes its own device tree, so they are not used.

use crate::bootconf::cmdline;
use crate::bootconf::configtxt::Effective;

/// The kernel U-Boot's `boot.scr` loads on Ubuntu's images.
pub const UBOOT_KERNEL: &str = "vmlinuz";
/// The initramfs U-Boot's `boot.scr` loads on Ubuntu's images.
pub const UBOOT_INITRD: &str = "initrd.img";
/// What the preview appends to the command line: the PL011 UART of QEMU's `virt` machine, last,
/// so that it is `/dev/console` and systemd's and cloud-init's messages reach the console log.
pub const CONSOLE: &str = "console=ttyAMA0";
/// Parameters the preview drops: they only hide boot messages the report is made from.
pub const DROPPED: &[&str] = &["quiet", "splash"];

/// The files to boot, as the firmware chose them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootChoice {
    /// The kernel file on the boot partition.
    pub kernel: String,
    /// The initramfs file, if any.
    pub initrd: Option<String>,
    /// The command line file.
    pub cmdline_file: String,
    /// How they were chosen, for the report (`config.txt: kernel=vmlinux`, ...).
    pub how: String,
}

/// Choose kernel, initramfs and command line file from the effective config.txt for a Pi 4.
/// `is_uboot` tells whether a boot partition file is U-Boot (by name or content).
pub fn choose(config: &Effective, is_uboot: &dyn Fn(&str) -> bool) -> BootChoice {
    let cmdline_file = config.get("cmdline").unwrap_or("cmdline.txt").to_owned();
    let (kernel, how) = match config.get("kernel") {
        Some(k) => (k.to_owned(), format!("config.txt: kernel={k}")),
        None if config.get("arm_64bit") == Some("1") => (
            "kernel8.img".to_owned(),
            "config.txt: no kernel=, arm_64bit=1: kernel8.img".to_owned(),
        ),
        None => (
            "kernel7l.img".to_owned(),
            "config.txt: no kernel=, no arm_64bit=1: the 32-bit kernel7l.img".to_owned(),
        ),
    };
    if is_uboot(&kernel) {
        return BootChoice {
            kernel: UBOOT_KERNEL.to_owned(),
            initrd: Some(UBOOT_INITRD.to_owned()),
            cmdline_file,
            how: format!("{how} is U-Boot; its boot.scr loads {UBOOT_KERNEL} and {UBOOT_INITRD}"),
        };
    }
    let initrd = config
        .get("initramfs")
        .and_then(|v| v.split_whitespace().next())
        .or_else(|| config.get("ramfsfile"))
        .map(str::to_owned);
    BootChoice {
        kernel,
        initrd,
        cmdline_file,
        how,
    }
}

/// Whether a boot partition file is U-Boot: by its name (`uboot_rpi_4.bin`, `u-boot.bin`) or
/// by the `U-Boot ` version banner every U-Boot binary carries.
pub fn looks_like_uboot(name: &str, content: Option<&[u8]>) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("uboot")
        || lower.starts_with("u-boot")
        || content.is_some_and(|c| c.windows(7).any(|w| w == b"U-Boot "))
}

/// The command line QEMU gets: the file's first line, as the firmware passes it, without
/// [`DROPPED`], with [`CONSOLE`] last. Every other parameter (`root=` above all) is kept.
pub fn qemu_cmdline(text: &str) -> String {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = body.lines().next().unwrap_or("");
    let mut remove = DROPPED.to_vec();
    remove.push(CONSOLE);
    cmdline::apply(first, &[CONSOLE], &remove)
        .trim_end()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootconf::configtxt::{Model, effective};
    use std::collections::HashMap;

    fn choice(files: &[(&str, &str)]) -> BootChoice {
        let files: HashMap<String, String> = files
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        let eff = effective("config.txt", &|n| files.get(n).cloned(), Model::Pi4);
        choose(&eff, &|name| looks_like_uboot(name, None))
    }

    /// The stock 20.04.5 files, as tests/fixtures/bootfiles/focal-20.04.5 has them.
    fn focal(usercfg: &str) -> BootChoice {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/bootfiles/focal-20.04.5"
        );
        let read = |n: &str| std::fs::read_to_string(format!("{dir}/{n}")).unwrap();
        choice(&[
            ("config.txt", &read("config.txt")),
            ("syscfg.txt", &read("syscfg.txt")),
            ("usercfg.txt", usercfg),
        ])
    }

    #[test]
    fn stock_focal_boots_through_uboot_so_vmlinuz_and_initrd_img() {
        let c = focal("");
        assert_eq!(c.kernel, "vmlinuz");
        assert_eq!(c.initrd.as_deref(), Some("initrd.img"));
        assert_eq!(c.cmdline_file, "cmdline.txt");
        assert!(
            c.how.contains("kernel=uboot_rpi_4.bin is U-Boot"),
            "{}",
            c.how
        );
    }

    #[test]
    fn ssd_nodes_name_the_kernel_in_usercfg() {
        let c = focal("[pi4]\nkernel=vmlinux\ninitramfs initrd.img followkernel\n");
        assert_eq!(
            (c.kernel.as_str(), c.initrd.as_deref()),
            ("vmlinux", Some("initrd.img"))
        );
        let c = focal("[pi4]\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n");
        assert_eq!(c.kernel, "vmlinuz");
        // A Pi 3 section does not apply to the Pi 4.
        let c = focal("[pi3]\nkernel=vmlinux\n");
        assert_eq!(c.kernel, "vmlinuz");
        assert!(c.how.contains("U-Boot"));
    }

    #[test]
    fn jammy_style_and_defaults() {
        let c = choice(&[(
            "config.txt",
            "[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\ninitramfs initrd.img followkernel\narm_64bit=1\n",
        )]);
        assert_eq!(
            (
                c.kernel.as_str(),
                c.initrd.as_deref(),
                c.cmdline_file.as_str()
            ),
            ("vmlinuz", Some("initrd.img"), "cmdline.txt")
        );
        let c = choice(&[("config.txt", "arm_64bit=1\ncmdline=cmd.txt\n")]);
        assert_eq!(
            (c.kernel.as_str(), c.initrd, c.cmdline_file.as_str()),
            ("kernel8.img", None, "cmd.txt")
        );
        let c = choice(&[("config.txt", "ramfsfile=rd.img\n")]);
        assert_eq!(
            (c.kernel.as_str(), c.initrd.as_deref()),
            ("kernel7l.img", Some("rd.img"))
        );
    }

    #[test]
    fn uboot_by_content() {
        assert!(looks_like_uboot(
            "boot.bin",
            Some(b"\0\0U-Boot 2021.01 (Jan 01)\0")
        ));
        assert!(!looks_like_uboot("vmlinuz", Some(b"\x1f\x8b\x08 U-Boo")));
        assert!(looks_like_uboot("uboot_rpi_4.bin", None));
    }

    #[test]
    fn cmdline_keeps_root_drops_quiet_and_ends_with_the_console() {
        let stock = "elevator=deadline net.ifnames=0 console=serial0,115200 dwc_otg.lpm_enable=0 console=tty1 root=PARTUUID=9e41c1cb-02 rootfstype=ext4 rootwait fixrtc quiet splash\n";
        assert_eq!(
            qemu_cmdline(stock),
            "elevator=deadline net.ifnames=0 console=serial0,115200 dwc_otg.lpm_enable=0 console=tty1 root=PARTUUID=9e41c1cb-02 rootfstype=ext4 rootwait fixrtc console=ttyAMA0"
        );
        // Only the first line counts; an earlier console=ttyAMA0 moves to the end.
        assert_eq!(
            qemu_cmdline("console=ttyAMA0 root=/dev/vda2\nignored=1\n"),
            "root=/dev/vda2 console=ttyAMA0"
        );
        assert_eq!(qemu_cmdline(""), "console=ttyAMA0");
    }
}
