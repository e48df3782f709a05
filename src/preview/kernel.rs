//! Can QEMU run this kernel, and can the kernel drive QEMU's `virt` machine?
//!
//! The kernel file from the boot partition must be an arm64 Linux Image (plain, or gzip as
//! Ubuntu's `vmlinuz` is; QEMU's `-kernel` takes both), recognised by its `ARM\x64` magic. Its
//! `Linux version <release>` banner names the release, whose `/boot/config-<release>` (or, without
//! it, `/lib/modules/<release>`) in the root file system tells whether it has what `virt` needs:
//! the generic PCI host, virtio-pci, virtio-blk and virtio-net (built in or as modules, which the
//! initramfs must then load), and the PL011 serial console built in.

use std::io::{self, Read};

/// The arm64 Image header's magic and where it sits.
const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";
const ARM64_MAGIC_OFFSET: usize = 0x38;
/// Where the kernel's version banner starts.
const BANNER: &[u8] = b"Linux version ";
/// How far a kernel is read looking for its banner (Ubuntu's Image is about 25 MiB).
const MAX_SCAN: u64 = 256 << 20;

/// What the kernel file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// Whether the file is gzip-compressed.
    pub gzip: bool,
    /// The release from its `Linux version` banner.
    pub release: String,
}

/// Why a kernel file cannot be booted.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Not an arm64 Linux Image.
    #[error("is not an arm64 Linux kernel Image (no ARM\\x64 magic at 0x38{})", if *gzip { " after gunzip" } else { "" })]
    NotArm64 {
        /// Whether it was gzip-compressed.
        gzip: bool,
    },
    /// An arm64 Image header without a kernel behind it (a placeholder, a boot loader).
    #[error("has an arm64 Image header but no 'Linux version' banner: it is not a Linux kernel")]
    NoBanner,
    /// Reading or decompressing it failed.
    #[error("cannot read it: {0}")]
    Read(#[from] io::Error),
}

/// Look at a kernel file's bytes: its format and release.
pub fn inspect(mut file: impl Read) -> Result<KernelImage, KernelError> {
    let mut magic = [0u8; 2];
    let got = crate::io::read_full(&mut file, &mut magic)?;
    let gzip = got == 2 && magic == [0x1f, 0x8b];
    let whole = (&magic[..got]).chain(file);
    let mut stream: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(whole))
    } else {
        Box::new(whole)
    };
    let mut head = [0u8; 64];
    let got = crate::io::read_full(&mut stream, &mut head)?;
    if got < head.len() || &head[ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4] != ARM64_MAGIC {
        return Err(KernelError::NotArm64 { gzip });
    }
    let release = find_release(&mut stream.take(MAX_SCAN))?.ok_or(KernelError::NoBanner)?;
    Ok(KernelImage { gzip, release })
}

/// The release named after the first `Linux version ` in the stream.
fn find_release(stream: &mut dyn Read) -> io::Result<Option<String>> {
    let mut buf = vec![0u8; 1 << 20];
    let mut filled = 0;
    loop {
        let got = crate::io::read_full(stream, &mut buf[filled..])?;
        let end_of_input = filled + got < buf.len();
        filled += got;
        // Carried over to the next read: from a banner whose release is not complete yet, else
        // the bytes a banner split across two reads could start with.
        let carry_from = match buf[..filled]
            .windows(BANNER.len())
            .position(|w| w == BANNER)
        {
            Some(at) => {
                let rest = &buf[at + BANNER.len()..filled];
                let end = rest.iter().position(|&b| b == b' ' || b == 0 || b == b'\n');
                if end.is_some() || end_of_input || at == 0 {
                    let release = String::from_utf8_lossy(&rest[..end.unwrap_or(rest.len())]);
                    return Ok((!release.is_empty()).then(|| release.into_owned()));
                }
                at
            }
            None => filled.saturating_sub(BANNER.len() - 1),
        };
        if end_of_input {
            return Ok(None);
        }
        buf.copy_within(carry_from..filled, 0);
        filled -= carry_from;
    }
}

/// What QEMU's `virt` machine needs from a kernel: the config option, the module that option
/// builds (relative to `/lib/modules/<release>/kernel/`), and whether a module will not do.
const VIRT_NEEDS: &[(&str, &str, bool)] = &[
    (
        "CONFIG_PCI_HOST_GENERIC",
        "drivers/pci/controller/pci-host-generic",
        false,
    ),
    ("CONFIG_VIRTIO_PCI", "drivers/virtio/virtio_pci", false),
    ("CONFIG_VIRTIO_BLK", "drivers/block/virtio_blk", false),
    ("CONFIG_VIRTIO_NET", "drivers/net/virtio_net", false),
    (
        "CONFIG_SERIAL_AMBA_PL011_CONSOLE",
        "drivers/tty/serial/amba-pl011",
        true,
    ),
];

/// The options `virt` needs that a kernel config (`/boot/config-<release>`) lacks; empty when
/// it has them all.
pub fn virt_missing_from_config(config: &str) -> Vec<&'static str> {
    let value = |name: &str| {
        config.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::trim)
        })
    };
    VIRT_NEEDS
        .iter()
        .filter(|(option, _, builtin)| match value(option) {
            Some("y") => false,
            Some("m") => *builtin,
            _ => true,
        })
        .map(|(option, _, _)| *option)
        .collect()
}

/// The options `virt` needs that a kernel's modules directory shows no sign of: `builtin` is
/// its `modules.builtin`, `has_module` tells whether `kernel/<path>.ko` (or `.ko.xz`, `.ko.zst`,
/// `.ko.gz`) exists.
pub fn virt_missing_from_modules(
    builtin: &str,
    has_module: &dyn Fn(&str) -> bool,
) -> Vec<&'static str> {
    VIRT_NEEDS
        .iter()
        .filter(|(_, path, needs_builtin)| {
            let built_in = builtin
                .lines()
                .any(|l| l.trim() == format!("kernel/{path}.ko"));
            !(built_in || (!needs_builtin && has_module(path)))
        })
        .map(|(option, _, _)| *option)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(banner: &[u8], pad: usize) -> Vec<u8> {
        let mut img = vec![0u8; 64];
        img[ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4].copy_from_slice(ARM64_MAGIC);
        img.resize(64 + pad, 0xaa);
        img.extend_from_slice(banner);
        img.extend_from_slice(b"\0tail");
        img
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn plain_and_gzip_images_and_their_release() {
        let banner = b"Linux version 6.1.0-50-arm64 (debian-kernel@lists.debian.org) (gcc-12)";
        let plain = image(banner, 100);
        assert_eq!(
            inspect(&plain[..]).unwrap(),
            KernelImage {
                gzip: false,
                release: "6.1.0-50-arm64".into()
            }
        );
        // The banner straddles the 1 MiB read boundary.
        let far = image(
            b"Linux version 5.4.0-1069-raspi (buildd@bos02-arm64-052)",
            (1 << 20) - 70,
        );
        let k = inspect(&gzip(&far)[..]).unwrap();
        assert!(k.gzip);
        assert_eq!(k.release, "5.4.0-1069-raspi");
        assert!(matches!(
            inspect(&image(b"no banner", 10)[..]).unwrap_err(),
            KernelError::NoBanner
        ));
    }

    #[test]
    fn placeholders_and_other_architectures_are_refused() {
        let e = inspect(&b"placeholder vmlinuz\n"[..]).unwrap_err();
        assert!(matches!(e, KernelError::NotArm64 { gzip: false }), "{e}");
        let e = inspect(&gzip(&[0x7f; 4096])[..]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "is not an arm64 Linux kernel Image (no ARM\\x64 magic at 0x38 after gunzip)"
        );
        assert!(matches!(
            inspect(&b"\x1f\x8bnot gzip at all"[..]).unwrap_err(),
            KernelError::Read(_)
        ));
    }

    #[test]
    fn config_check() {
        let debian = "CONFIG_PCI_HOST_GENERIC=y\nCONFIG_VIRTIO_PCI=m\nCONFIG_VIRTIO_BLK=m\n\
                      CONFIG_VIRTIO_NET=m\nCONFIG_SERIAL_AMBA_PL011=y\nCONFIG_SERIAL_AMBA_PL011_CONSOLE=y\n";
        assert!(virt_missing_from_config(debian).is_empty());
        let no_virtio = "CONFIG_PCI_HOST_GENERIC=y\n# CONFIG_VIRTIO_PCI is not set\n\
                         CONFIG_VIRTIO_BLK=m\nCONFIG_SERIAL_AMBA_PL011_CONSOLE=m\n";
        assert_eq!(
            virt_missing_from_config(no_virtio),
            [
                "CONFIG_VIRTIO_PCI",
                "CONFIG_VIRTIO_NET",
                "CONFIG_SERIAL_AMBA_PL011_CONSOLE"
            ]
        );
    }

    #[test]
    fn modules_check() {
        let builtin = "kernel/drivers/pci/controller/pci-host-generic.ko\nkernel/drivers/tty/serial/amba-pl011.ko\n";
        let modules = [
            "drivers/virtio/virtio_pci",
            "drivers/block/virtio_blk",
            "drivers/net/virtio_net",
        ];
        assert!(virt_missing_from_modules(builtin, &|p| modules.contains(&p)).is_empty());
        // PL011 as a module cannot be the console.
        assert_eq!(
            virt_missing_from_modules("", &|p| modules.contains(&p)
                || p.ends_with("amba-pl011")
                || p.ends_with("pci-host-generic")),
            ["CONFIG_SERIAL_AMBA_PL011_CONSOLE"]
        );
    }
}
