//! `pi-image flash` onto block devices: loop devices made by the tests (skipped with a message
//! where losetup is unavailable, always detached), and the safety rules against a fake
//! sysfs/procfs tree. Judged by cmp, fsck.fat, e2fsck and sha256sum.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    bmap_ranges, cmp_ranges, demo_images, fsck_partitions, garbage_file, pi_image, pi_image_ok,
    repo, run, s, sha256,
};

/// A loop device over a file, detached on drop (also when the test fails).
struct Loop {
    dev: PathBuf,
}

impl Loop {
    /// Attach `file`, or say why not and return None (the caller skips).
    fn attach(file: &Path) -> Option<Loop> {
        match Command::new("losetup")
            .args(["-f", "--show", s(file)])
            .output()
        {
            Ok(o) if o.status.success() => Some(Loop {
                dev: PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
            }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: losetup cannot attach a loop device here: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: losetup is not available: {e}");
                None
            }
        }
    }

    /// `major:minor` of the device.
    fn dev_number(&self) -> String {
        use std::os::unix::fs::MetadataExt;
        let rdev = fs::metadata(&self.dev).unwrap().rdev();
        format!(
            "{}:{}",
            (rdev >> 8) & 0xfff,
            (rdev & 0xff) | ((rdev >> 12) & 0xfff00)
        )
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A mount, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn flash_two_loop_devices_at_once_then_fsck_and_cmp_them() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let size = fs::metadata(&img).unwrap().len();
    let (fa, fb) = (tmp.path().join("a.disk"), tmp.path().join("b.disk"));
    garbage_file(&fa, size + (16 << 20));
    fs::copy(&fa, &fb).unwrap();
    let Some(a) = Loop::attach(&fa) else { return };
    let Some(b) = Loop::attach(&fb) else { return };
    let out = pi_image_ok(&repo(), &["flash", s(&img), s(&a.dev), s(&b.dev), "--yes"]);
    let summary = String::from_utf8_lossy(&out.stdout);
    let bmap = tmp.path().join("pi1.bmap");
    pi_image_ok(&repo(), &["bmap", s(&img), "-o", s(&bmap)]);
    let ranges = bmap_ranges(&bmap);
    for l in [&a, &b] {
        assert!(
            summary
                .lines()
                .any(|line| line.starts_with(s(&l.dev)) && line.contains(" ok ")),
            "{summary}"
        );
        cmp_ranges(&img, &l.dev, &ranges);
        fsck_partitions(&l.dev, tmp.path());
        pi_image_ok(&repo(), &["verify", s(&img), s(&l.dev)]);
    }
    // Outside the map the old bytes are still there: free space was skipped.
    drop((a, b));
    let garbage = tmp.path().join("garbage");
    garbage_file(&garbage, size + (16 << 20)); // deterministic: what the disks held before
    let gaps = common::gaps(&ranges, size + (16 << 20));
    for f in [&fa, &fb] {
        cmp_ranges(&garbage, f, &gaps);
    }
}

#[test]
fn a_too_small_loop_device_is_refused_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let size = fs::metadata(&img).unwrap().len();
    let file = tmp.path().join("small.disk");
    garbage_file(&file, size - (1 << 20));
    let before = sha256(&file);
    let Some(l) = Loop::attach(&file) else { return };
    let out = pi_image(&repo(), &["flash", s(&img), s(&l.dev), "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "{}: refusing to write: the device has {} bytes",
                l.dev.display(),
                size - (1 << 20)
            )),
        "{err}"
    );
    drop(l);
    assert_eq!(sha256(&file), before);
}

#[test]
fn a_mounted_loop_device_is_refused_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let size = fs::metadata(&img).unwrap().len();
    let file = tmp.path().join("mounted.disk");
    fs::File::create(&file)
        .unwrap()
        .set_len(size + (1 << 20))
        .unwrap();
    let (ok, _, err) = run("mkfs.ext4", &["-q", "-F", s(&file)]);
    assert!(ok, "{err}");
    let Some(l) = Loop::attach(&file) else { return };
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    // Read-only, so the mounted filesystem itself (lazy inode table init, journal) writes nothing.
    let (ok, _, err) = run("mount", &["-o", "ro,noload", s(&l.dev), s(&mnt)]);
    if !ok {
        eprintln!("SKIPPED: cannot mount in this container: {}", err.trim());
        return;
    }
    let _m = Mounted(mnt.clone());
    let before = sha256(&l.dev);
    let out = pi_image(&repo(), &["flash", s(&img), s(&l.dev), "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "{}: refusing to write: mounted at {}",
                l.dev.display(),
                mnt.display()
            )),
        "{err}"
    );
    assert_eq!(sha256(&l.dev), before);
}

/// A fake sysfs/procfs tree under `root` describing one disk `name` with device number `dev`
/// at the sysfs device path `devpath` (e.g. `pci0000:00/.../ata1/.../block`), plus a
/// partition `<name>1`. `mountinfo` and `swaps` are the procfs files' contents.
#[allow(clippy::too_many_arguments)] // every property of the one fake disk, each named at the call
fn fake_tree(
    root: &Path,
    name: &str,
    dev: &str,
    devpath: &str,
    size: u64,
    removable: bool,
    holder: bool,
    mountinfo: &str,
    swaps: &str,
) {
    let d = root.join("sys/devices").join(devpath).join(name);
    let p = d.join(format!("{name}1"));
    for dir in [
        &d.join("device"),
        &d.join("holders"),
        &p.join("holders"),
        &root.join("sys/block"),
        &root.join("sys/dev/block"),
        &root.join("sys/class/block"),
        &root.join("proc/self"),
    ] {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(d.join("size"), format!("{}\n", size / 512)).unwrap();
    fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
    fs::write(d.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
    fs::write(d.join("device/model"), "Test Disk 3000  \n").unwrap();
    fs::write(d.join("device/serial"), "SN-0042\n").unwrap();
    fs::write(p.join("partition"), "1\n").unwrap();
    fs::write(p.join("dev"), "259:99\n").unwrap();
    if holder {
        fs::create_dir_all(p.join("holders/dm-0")).unwrap();
    }
    symlink(&d, root.join("sys/block").join(name)).unwrap();
    symlink(&d, root.join("sys/class/block").join(name)).unwrap();
    symlink(&p, root.join("sys/class/block").join(format!("{name}1"))).unwrap();
    symlink(&d, root.join("sys/dev/block").join(dev)).unwrap();
    symlink(&p, root.join("sys/dev/block/259:99")).unwrap();
    fs::write(root.join("proc/self/mountinfo"), mountinfo).unwrap();
    fs::write(
        root.join("proc/swaps"),
        format!("Filename Type Size Used Priority\n{swaps}"),
    )
    .unwrap();
}

const SATA: &str = "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block";
const USB: &str = "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block";

fn flash_with_root(root: &Path, img: &Path, dev: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["flash", s(img), s(dev), "--yes"];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(&args)
        .current_dir(repo())
        .env("PI_IMAGE_SYSROOT", root)
        .output()
        .unwrap()
}

#[test]
fn fake_sysfs_system_internal_held_and_swap_disks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let size = fs::metadata(&img).unwrap().len();
    let file = tmp.path().join("disk");
    garbage_file(&file, size + (4 << 20));
    let before = sha256(&file);
    let Some(l) = Loop::attach(&file) else { return };
    let dev = l.dev_number();
    let big = size + (4 << 20);
    let root_mount = "21 1 259:99 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n";
    // (name, sysfs path, removable, holder, mountinfo, swaps, extra flash args, expected error)
    type Case<'a> = (
        &'a str,
        &'a str,
        bool,
        bool,
        &'a str,
        &'a str,
        &'a [&'a str],
        &'a str,
    );
    let cases: [Case; 4] = [
        (
            "system",
            SATA,
            false,
            false,
            root_mount,
            "",
            &["--force"],
            "refusing to write: it holds the running system (/ mounted from it)",
        ),
        (
            "internal",
            SATA,
            false,
            false,
            "",
            "",
            &[],
            "refusing to write: it is an internal disk (transport sata, not removable); pass --force",
        ),
        (
            "held",
            USB,
            false,
            true,
            "",
            "",
            &[],
            "refusing to write: in use by sda1 -> dm-0 (LVM, RAID or dm-crypt",
        ),
        (
            "swap",
            USB,
            false,
            false,
            "",
            "/dev/sda1 partition 1024 0 -2\n",
            &[],
            "refusing to write: in use as swap (/dev/sda1",
        ),
    ];
    for (case, path, removable, holder, mountinfo, swaps, extra, expect) in cases {
        let root = tmp.path().join(case);
        fake_tree(
            &root, "sda", &dev, path, big, removable, holder, mountinfo, swaps,
        );
        let out = flash_with_root(&root, &img, &l.dev, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{case}: {err}"
        );
    }
    drop(l);
    assert_eq!(sha256(&file), before, "a refused flash wrote something");
}

#[test]
fn fake_sysfs_usb_disk_is_flashed_and_internal_one_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let size = fs::metadata(&img).unwrap().len();
    let file = tmp.path().join("disk");
    garbage_file(&file, size + (4 << 20));
    let Some(l) = Loop::attach(&file) else { return };
    let dev = l.dev_number();
    for (case, path, extra) in [("usb", USB, &[][..]), ("sata", SATA, &["--force"][..])] {
        let root = tmp.path().join(case);
        fake_tree(
            &root,
            "sda",
            &dev,
            path,
            size + (4 << 20),
            false,
            false,
            "",
            "",
        );
        let out = flash_with_root(&root, &img, &l.dev, extra);
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pi_image_ok(&repo(), &["verify", s(&img), s(&l.dev)]);
    }
}

#[test]
fn devices_lists_the_fake_tree_with_transport_serial_and_use() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fake_tree(
        root,
        "sdb",
        "8:16",
        USB,
        32 << 30,
        true,
        false,
        "30 1 259:99 /media/card /media/card rw - vfat /dev/sdb1 rw\n",
        "",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(["devices"])
        .env("PI_IMAGE_SYSROOT", root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("/dev/sdb"))
        .unwrap_or_else(|| panic!("{text}"));
    for want in [
        "32.0 GiB",
        "Test Disk 3000",
        "SN-0042",
        "usb",
        "yes",
        "mounted /media/card",
    ] {
        assert!(line.contains(want), "{want} missing in {line}");
    }
    // The same disk as `--json`, read by python3.
    let out = Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(["devices", "--json"])
        .env("PI_IMAGE_SYSROOT", root)
        .output()
        .unwrap();
    let code = r#"
[d] = d['devices']
assert d['path'] == '/dev/sdb' and d['name'] == 'sdb' and d['size'] == 32 << 30, d
assert d['model'] == 'Test Disk 3000' and d['serial'] == 'SN-0042', d
assert d['transport'] == 'usb' and d['removable'] is True and d['external'] is True, d
assert d['partitions'] == ['sdb1'] and d['mounts'] == ['/media/card'], d
assert d['holders'] == [] and d['swaps'] == [] and d['system'] == [], d
print('ok')
"#;
    assert_eq!(common::python_json(&out.stdout, code, &[]), "ok");
}

#[test]
fn a_prompt_answered_no_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let size = fs::metadata(&img).unwrap().len();
    let file = tmp.path().join("disk");
    garbage_file(&file, size + (1 << 20));
    let before = sha256(&file);
    let Some(l) = Loop::attach(&file) else { return };
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(["flash", s(&img), s(&l.dev)])
        .current_dir(repo())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"no\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("device  {}: ", l.dev.display()))
            && err.contains("Type 'yes' to continue")
            && err.contains("not confirmed; nothing was written"),
        "{err}"
    );
    drop(l);
    assert_eq!(sha256(&file), before);
}

/// (issue 14, item 16) The device is opened, and checked, before the question: a path that
/// is made to point at another disk while the prompt waits does not redirect the write.
#[test]
fn hole_16_a_path_swapped_while_the_prompt_waits_does_not_redirect_the_write() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let size = fs::metadata(&img).unwrap().len();
    let (fa, fb) = (tmp.path().join("a.disk"), tmp.path().join("b.disk"));
    garbage_file(&fa, size + (1 << 20));
    fs::copy(&fa, &fb).unwrap();
    let b_before = sha256(&fb);
    let Some(a) = Loop::attach(&fa) else { return };
    let Some(b) = Loop::attach(&fb) else { return };
    let card = tmp.path().join("card");
    std::os::unix::fs::symlink(&a.dev, &card).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(["flash", s(&img), s(&card)])
        .current_dir(repo())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the question.
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("Type 'yes' to continue") {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // Now the path names the other disk.
    let swapped = tmp.path().join("card.new");
    std::os::unix::fs::symlink(&b.dev, &swapped).unwrap();
    fs::rename(&swapped, &card).unwrap();
    child.stdin.take().unwrap().write_all(b"yes\n").unwrap();
    stderr.read_to_end(&mut seen).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&seen));
    pi_image_ok(&repo(), &["verify", s(&img), s(&a.dev)]);
    drop((a, b));
    assert_eq!(
        sha256(&fb),
        b_before,
        "the disk the path was swapped to was written"
    );
}

#[test]
fn a_partition_is_refused_naming_the_whole_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let file = tmp.path().join("disk");
    garbage_file(&file, fs::metadata(&img).unwrap().len() + (4 << 20));
    let before = sha256(&file);
    let Some(l) = Loop::attach(&file) else { return };
    // The fake tree says the loop device's number is partition sda1 of disk sda.
    let root = tmp.path().join("root");
    fake_tree(&root, "sda", "8:0", USB, 64 << 30, true, false, "", "");
    symlink(
        root.join("sys/devices").join(USB).join("sda/sda1"),
        root.join("sys/dev/block").join(l.dev_number()),
    )
    .unwrap();
    let out = flash_with_root(&root, &img, &l.dev, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1)
            && err.contains(&format!(
                "{}: refusing to write: it is a partition of sda; give the whole disk /dev/sda",
                l.dev.display()
            )),
        "{err}"
    );
    drop(l);
    assert_eq!(sha256(&file), before, "a refused flash wrote something");
}

/// (issue 14, item 15) `PI_IMAGE_SYSROOT` is a hook for tests: whatever its tree says, a device
/// that this machine's sysfs does not call a loop device is refused, before it is opened. The
/// node is made with a major number of the kernel's "local/experimental use" range (60), which
/// no driver claims, so nothing could be written even if the rule were gone.
#[test]
fn hole_15_a_fake_tree_cannot_make_a_non_loop_device_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let node = tmp.path().join("disk");
    match Command::new("mknod")
        .args([s(&node), "b", "60", "0"])
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIPPED: mknod cannot make a block device node here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED: mknod is not available: {e}");
            return;
        }
    }
    // The tree describes 60:0 as an idle, removable USB disk: every rule would pass.
    let root = tmp.path().join("root");
    fake_tree(&root, "sda", "60:0", USB, 64 << 30, true, false, "", "");
    let out = flash_with_root(&root, &img, &node, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("PI_IMAGE_SYSROOT=")
            && err.contains("only loop devices are written, and this is device 60:0"),
        "{err}"
    );
    // `--force` does not lift it.
    let out = flash_with_root(&root, &img, &node, &["--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("only loop devices are written"),
        "{err}"
    );
}
