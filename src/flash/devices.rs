//! Block devices as sysfs and procfs describe them, and the safety rules for writing to one.
//!
//! Everything is read through a [`SysRoot`] (`/` on a real system), so tests can describe a
//! machine with a fake tree: `sys/block`, `sys/dev/block`, `sys/class/block`,
//! `proc/self/mountinfo` and `proc/swaps` under the root. Device nodes (`/dev/sdb`) are always
//! the real ones: their device number leads into the tree.

use crate::io::{AtPath, PathError};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Mount points whose disk is the running system's: never a flash target.
const SYSTEM_MOUNTS: &[&str] = &["/", "/boot", "/boot/efi"];
/// How many levels of device-mapper/RAID stacking are followed down to the disks.
const MAX_STACK: usize = 8;

/// Errors finding a device or refusing to write to it.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Reading sysfs or procfs, or the device node, failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The target is not a block device (and `--to-file` was not given).
    #[error(
        "{}: refusing to write: not a block device (use --to-file to write an image file; `pi-image devices` lists the disks)",
        path.display()
    )]
    NotBlock {
        /// The target.
        path: PathBuf,
    },
    /// The target does not exist.
    #[error(
        "{}: no such device; `pi-image devices` lists the disks an image can go to",
        path.display()
    )]
    Missing {
        /// The target.
        path: PathBuf,
    },
    /// The target is a partition, not a whole disk.
    #[error(
        "{}: refusing to write: it is a partition of {disk}; give the whole disk /dev/{disk}",
        path.display()
    )]
    IsPartition {
        /// The target.
        path: PathBuf,
        /// The disk holding the partition.
        disk: String,
    },
    /// One of the safety rules forbids writing to the device.
    #[error("{}: refusing to write: {reason}", path.display())]
    Refused {
        /// The target.
        path: PathBuf,
        /// Which rule, with the facts behind it.
        reason: String,
    },
}

/// Where sysfs and procfs are read from: `/` normally, a fake tree in tests.
#[derive(Debug, Clone)]
pub struct SysRoot {
    root: PathBuf,
}

impl SysRoot {
    /// The tree at `root` (`/` for the running system).
    pub fn new(root: impl Into<PathBuf>) -> SysRoot {
        SysRoot { root: root.into() }
    }

    /// True for a fake tree (`PI_IMAGE_SYSROOT`, a hook for tests): what it says about disks
    /// is made up, so with it only loop devices may be written ([`Self::allows`]).
    pub fn is_fake(&self) -> bool {
        self.root != Path::new("/")
    }

    /// Refuse writing to the device with device number `rdev` when the tree is fake, unless
    /// the real sysfs says it is a loop device: a fake tree must never decide about a real disk.
    pub fn allows(&self, target: &Path, rdev: u64) -> Result<(), DeviceError> {
        if !self.is_fake() {
            return Ok(());
        }
        let real = SysRoot::new("/");
        let name = name_of_dev(&real, &dev_number(rdev));
        if name.as_deref().is_some_and(|n| n.starts_with("loop")) {
            return Ok(());
        }
        Err(DeviceError::Refused {
            path: target.to_owned(),
            reason: format!(
                "PI_IMAGE_SYSROOT={} is a test hook that describes disks with a made-up tree; with it set only loop devices are written, and this is {}",
                self.root.display(),
                name.unwrap_or_else(|| format!("device {}", dev_number(rdev)))
            ),
        })
    }

    /// `abs` (an absolute path like `/sys/block`) inside the tree.
    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn read(&self, abs: &str) -> Option<String> {
        fs::read_to_string(self.path(abs))
            .ok()
            .map(|s| s.trim().to_owned())
    }
}

/// A whole disk and what uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name: `sdb`, `mmcblk0`, `nvme0n1`, `loop3`.
    pub name: String,
    /// The device node: `/dev/<name>`.
    pub dev_path: PathBuf,
    /// `major:minor`.
    pub dev: String,
    /// Size in bytes.
    pub size: u64,
    /// Vendor model string, or empty.
    pub model: String,
    /// Serial number, or empty.
    pub serial: String,
    /// `usb`, `sd`, `nvme`, `sata`, `loop`, `virtio`, `scsi` or `other`, from the sysfs path.
    pub transport: String,
    /// The kernel's removable flag.
    pub removable: bool,
    /// Partition kernel names.
    pub partitions: Vec<String>,
    /// Where the disk or its partitions are mounted.
    pub mounts: Vec<String>,
    /// Swap areas on it.
    pub swaps: Vec<String>,
    /// Holders (device-mapper, RAID) of the disk or its partitions: `sdb1 -> dm-0`.
    pub holders: Vec<String>,
    /// Which of `/`, `/boot`, `/boot/efi` live on it.
    pub system: Vec<String>,
}

impl Disk {
    /// Removable media, USB-attached disks, SD cards and loop devices: what flashing is for.
    pub fn external(&self) -> bool {
        self.removable || matches!(self.transport.as_str(), "usb" | "sd" | "loop")
    }

    /// Refuse writing an image of `image_size` bytes to this disk, unless every rule allows it:
    /// not the system disk, nothing mounted, no swap, no holders, large enough, and external
    /// (removable, USB, SD or loop) unless `force`.
    pub fn check(&self, target: &Path, image_size: u64, force: bool) -> Result<(), DeviceError> {
        let refuse = |reason: String| {
            Err(DeviceError::Refused {
                path: target.to_owned(),
                reason,
            })
        };
        if !self.system.is_empty() {
            return refuse(format!(
                "it holds the running system ({} mounted from it)",
                self.system.join(", ")
            ));
        }
        if !self.mounts.is_empty() {
            return refuse(format!(
                "mounted at {} (unmount it first)",
                self.mounts.join(", ")
            ));
        }
        if !self.swaps.is_empty() {
            return refuse(format!(
                "in use as swap ({}; swapoff first)",
                self.swaps.join(", ")
            ));
        }
        if !self.holders.is_empty() {
            return refuse(format!(
                "in use by {} (LVM, RAID or dm-crypt; deactivate it first)",
                self.holders.join(", ")
            ));
        }
        if self.size < image_size {
            return refuse(format!(
                "the device has {} bytes ({}), the image needs {} bytes ({})",
                self.size,
                human(self.size),
                image_size,
                human(image_size)
            ));
        }
        if !self.external() && !force {
            return refuse(format!(
                "it is an internal disk (transport {}, not removable); pass --force if you really mean it",
                self.transport
            ));
        }
        Ok(())
    }

    /// One line for a confirmation prompt or a listing: path, size, model, serial, transport.
    pub fn describe(&self) -> String {
        format!(
            "{}: {}, model '{}', serial '{}', {}{}",
            self.dev_path.display(),
            human(self.size),
            self.model,
            self.serial,
            self.transport,
            if self.removable { ", removable" } else { "" }
        )
    }
}

/// Bytes as a short human size (GiB/MiB).
pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// One mount: device number, mount point, source.
struct Mount {
    dev: String,
    point: String,
    source: String,
}

/// `\040`-style octal escapes of mountinfo fields.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(d) = octal
        {
            out.push(
                d.iter()
                    .fold(0u8, |v, b| v.wrapping_mul(8).wrapping_add(b - b'0')),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts(root: &SysRoot) -> Result<Vec<Mount>, DeviceError> {
    let path = root.path("/proc/self/mountinfo");
    let text = fs::read_to_string(&path).at(&path)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|&x| x == "-")?;
            Some(Mount {
                dev: (*f.get(2)?).to_owned(),
                point: unescape(f.get(4)?),
                source: unescape(f.get(sep + 2)?),
            })
        })
        .collect())
}

fn swaps(root: &SysRoot) -> Vec<String> {
    // No /proc/swaps (no swap support) means no swap.
    root.read("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(unescape))
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The whole disks under a block device's sysfs name (a partition's parent, the disks
/// under a device-mapper or RAID device through its `slaves`).
fn disks_under(root: &SysRoot, name: &str, depth: usize) -> Vec<String> {
    let class = root.path(&format!("/sys/class/block/{name}"));
    let Ok(dir) = fs::canonicalize(&class) else {
        return Vec::new();
    };
    let slaves = entries(&dir.join("slaves"));
    if !slaves.is_empty() && depth < MAX_STACK {
        return slaves
            .iter()
            .flat_map(|s| disks_under(root, s, depth + 1))
            .collect();
    }
    if dir.join("partition").exists() {
        return dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| vec![n.to_string_lossy().into_owned()])
            .unwrap_or_default();
    }
    vec![name.to_owned()]
}

/// The kernel name of the block device with device number `dev` (`8:16`), if sysfs knows it.
fn name_of_dev(root: &SysRoot, dev: &str) -> Option<String> {
    let dir = fs::canonicalize(root.path(&format!("/sys/dev/block/{dev}"))).ok()?;
    Some(dir.file_name()?.to_string_lossy().into_owned())
}

fn transport(canonical: &str, name: &str) -> &'static str {
    if name.starts_with("loop") {
        "loop"
    } else if canonical.contains("/usb") {
        "usb"
    } else if canonical.contains("/mmc") || name.starts_with("mmcblk") {
        "sd"
    } else if canonical.contains("/nvme") {
        "nvme"
    } else if canonical.contains("/ata") {
        "sata"
    } else if canonical.contains("/virtio") {
        "virtio"
    } else if canonical.contains("/host") {
        "scsi"
    } else {
        "other"
    }
}

/// Read everything known about disk `name` (`/sys/block/<name>`).
fn disk(
    root: &SysRoot,
    name: &str,
    all_mounts: &[Mount],
    all_swaps: &[String],
    system: &[(String, String)],
) -> Result<Disk, DeviceError> {
    let base = format!("/sys/block/{name}");
    let dir = root.path(&base);
    let canonical = fs::canonicalize(&dir).at(&dir)?;
    let size = root
        .read(&format!("{base}/size"))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        * 512;
    let dev = root.read(&format!("{base}/dev")).unwrap_or_default();
    let model = root
        .read(&format!("{base}/device/model"))
        .or_else(|| root.read(&format!("{base}/device/name")))
        .unwrap_or_default();
    // The serial sits on the disk's device (nvme, mmc) or on the USB device further up.
    let mut serial = String::new();
    let mut up = canonical.join("device");
    for _ in 0..MAX_STACK {
        if let Ok(s) = fs::read_to_string(up.join("serial")) {
            serial = s.trim().to_owned();
            break;
        }
        match fs::canonicalize(&up)
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
        {
            Some(p) if p.starts_with(&root.root) && p != up => up = p,
            _ => break,
        }
    }
    let partitions: Vec<String> = entries(&canonical)
        .into_iter()
        .filter(|p| canonical.join(p).join("partition").exists())
        .collect();
    let mut devs = vec![(name.to_owned(), dev.clone())];
    for p in &partitions {
        devs.push((
            p.clone(),
            root.read(&format!("{base}/{p}/dev")).unwrap_or_default(),
        ));
    }
    let mounts = all_mounts
        .iter()
        .filter(|m| {
            devs.iter()
                .any(|(n, d)| (!d.is_empty() && m.dev == *d) || m.source == format!("/dev/{n}"))
        })
        .map(|m| m.point.clone())
        .collect();
    let swaps = all_swaps
        .iter()
        .filter(|s| devs.iter().any(|(n, _)| **s == format!("/dev/{n}")))
        .cloned()
        .collect();
    let mut holders = Vec::new();
    for (n, _) in &devs {
        let sub = if n == name {
            canonical.join("holders")
        } else {
            canonical.join(n).join("holders")
        };
        holders.extend(entries(&sub).into_iter().map(|h| format!("{n} -> {h}")));
    }
    Ok(Disk {
        name: name.to_owned(),
        dev_path: PathBuf::from(format!("/dev/{name}")),
        dev,
        size,
        model,
        serial,
        transport: transport(&canonical.to_string_lossy(), name).to_owned(),
        removable: root.read(&format!("{base}/removable")).as_deref() == Some("1"),
        partitions,
        mounts,
        swaps,
        holders,
        system: system
            .iter()
            .filter(|(d, _)| d == name)
            .map(|(_, point)| point.clone())
            .collect(),
    })
}

/// The disks holding `/`, `/boot` and `/boot/efi`: (disk name, mount point).
fn system_disks(root: &SysRoot, all_mounts: &[Mount]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in all_mounts
        .iter()
        .filter(|m| SYSTEM_MOUNTS.contains(&m.point.as_str()))
    {
        let mut names = Vec::new();
        if let Some(n) = name_of_dev(root, &m.dev) {
            names.push(n);
        }
        if let Some(n) = m.source.strip_prefix("/dev/") {
            names.push(n.to_owned());
        }
        for n in names {
            for d in disks_under(root, &n, 0) {
                out.push((d, m.point.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Every disk in `/sys/block` with a non-zero size (unused loop devices and empty card readers
/// are left out), with what uses it.
pub fn list(root: &SysRoot) -> Result<Vec<Disk>, DeviceError> {
    let all_mounts = mounts(root)?;
    let all_swaps = swaps(root);
    let system = system_disks(root, &all_mounts);
    let mut out = Vec::new();
    for name in entries(&root.path("/sys/block")) {
        let d = disk(root, &name, &all_mounts, &all_swaps, &system)?;
        if d.size > 0 {
            out.push(d);
        }
    }
    Ok(out)
}

/// `major:minor` of a device number.
fn dev_number(rdev: u64) -> String {
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

/// The disk behind the device node `node` (a real `/dev` path), read through `root`. Refuses
/// anything that is not a block device, and partitions.
pub fn disk_for(root: &SysRoot, node: &Path) -> Result<Disk, DeviceError> {
    let meta = block_device(node)?;
    disk_for_dev(root, node, meta.rdev())
}

/// The metadata of the block device `node`; an error that says what to give instead when it
/// is missing or not a block device.
pub fn block_device(node: &Path) -> Result<fs::Metadata, DeviceError> {
    let meta = match fs::metadata(node) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DeviceError::Missing {
                path: node.to_owned(),
            });
        }
        m => m.at(node)?,
    };
    if !meta.file_type().is_block_device() {
        return Err(DeviceError::NotBlock {
            path: node.to_owned(),
        });
    }
    Ok(meta)
}

/// The disk with device number `rdev` (from `fstat` of an open device, so that it is the device
/// that will be written), named `node` in messages, read through `root`. Refuses partitions.
pub fn disk_for_dev(root: &SysRoot, node: &Path, rdev: u64) -> Result<Disk, DeviceError> {
    let dev = dev_number(rdev);
    let sys = root.path(&format!("/sys/dev/block/{dev}"));
    let dir = fs::canonicalize(&sys).at(&sys)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir.join("partition").exists() {
        return Err(DeviceError::IsPartition {
            path: node.to_owned(),
            disk: dir
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        });
    }
    let all_mounts = mounts(root)?;
    let system = system_disks(root, &all_mounts);
    let mut d = disk(root, &name, &all_mounts, &swaps(root), &system)?;
    d.dev_path = node.to_owned();
    Ok(d)
}

/// The `devices` table: path, size, model, serial, transport, removable, and what uses it.
pub fn table(disks: &[Disk]) -> String {
    let mut out = format!(
        "{:<16} {:>10}  {:<24} {:<20} {:<9} {:<9} {}\n",
        "device", "size", "model", "serial", "transport", "removable", "in use"
    );
    for d in disks {
        let mut uses: Vec<String> = Vec::new();
        uses.extend(d.system.iter().map(|s| format!("system {s}")));
        uses.extend(d.mounts.iter().map(|m| format!("mounted {m}")));
        uses.extend(d.swaps.iter().map(|s| format!("swap {s}")));
        uses.extend(d.holders.iter().map(|h| format!("held {h}")));
        out.push_str(&format!(
            "{:<16} {:>10}  {:<24} {:<20} {:<9} {:<9} {}\n",
            d.dev_path.display(),
            human(d.size),
            d.model,
            d.serial,
            d.transport,
            if d.removable { "yes" } else { "no" },
            if uses.is_empty() {
                "-".to_owned()
            } else {
                uses.join(", ")
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> Disk {
        Disk {
            name: "sdb".into(),
            dev_path: "/dev/sdb".into(),
            dev: "8:16".into(),
            size: 32 << 30,
            model: "Card".into(),
            serial: "1".into(),
            transport: "sata".into(),
            removable: false,
            partitions: vec!["sdb1".into()],
            mounts: vec![],
            swaps: vec![],
            holders: vec![],
            system: vec![],
        }
    }

    #[test]
    fn each_rule_refuses_with_its_reason() {
        let t = Path::new("/dev/sdb");
        let refused = |d: &Disk, size: u64, force: bool| match d.check(t, size, force) {
            Err(e) => e.to_string(),
            Ok(()) => String::new(),
        };
        let mut d = card();
        assert!(refused(&d, 1 << 30, false).contains("internal disk (transport sata"));
        assert_eq!(refused(&d, 1 << 30, true), "");
        d.transport = "usb".into();
        assert_eq!(refused(&d, 1 << 30, false), "");
        assert!(
            refused(&d, 64 << 30, false)
                .contains("the device has 34359738368 bytes (32.0 GiB), the image needs")
        );
        d.holders = vec!["sdb1 -> dm-0".into()];
        assert!(refused(&d, 1 << 30, true).contains("in use by sdb1 -> dm-0"));
        d.swaps = vec!["/dev/sdb1".into()];
        assert!(refused(&d, 1 << 30, true).contains("in use as swap"));
        d.mounts = vec!["/media/x".into()];
        assert!(refused(&d, 1 << 30, true).contains("mounted at /media/x"));
        d.system = vec!["/boot".into()];
        assert_eq!(
            refused(&d, 1 << 30, true),
            "/dev/sdb: refusing to write: it holds the running system (/boot mounted from it)"
        );
    }

    #[test]
    fn mountinfo_fields_are_unescaped() {
        assert_eq!(unescape("/media/my\\040card"), "/media/my card");
        assert_eq!(unescape("plain"), "plain");
    }

    #[test]
    fn transports_come_from_the_sysfs_path() {
        let usb = "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb";
        assert_eq!(transport(usb, "sdb"), "usb");
        assert_eq!(
            transport(
                "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/block/sda",
                "sda"
            ),
            "sata"
        );
        assert_eq!(
            transport("/sys/devices/platform/mmc0/block/mmcblk0", "mmcblk0"),
            "sd"
        );
        assert_eq!(
            transport("/sys/devices/virtual/block/loop0", "loop0"),
            "loop"
        );
    }
}
