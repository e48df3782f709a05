//! The ext4 module against filesystems made by mkfs.ext4 the way Ubuntu 20.04's is, judged by
//! e2fsprogs' own tools (e2fsck -fn, debugfs) and cmp, not by our reader.

mod common;

use common::run_ok as run;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use pi_image::image::ext4::{self, Attrs, EntryKind, Ext4Error, Ext4Fs};

const PREFIX: u64 = 4 << 20;
const SUFFIX: u64 = 1 << 20;
const MTIME: i64 = 1_662_033_600; // 2022-09-01 12:00 UTC

const OS_RELEASE: &str = "NAME=\"Ubuntu\"\nVERSION=\"20.04.5 LTS (Focal Fossa)\"\nID=ubuntu\nID_LIKE=debian\n\
PRETTY_NAME=\"Ubuntu 20.04.5 LTS\"\nVERSION_ID=\"20.04\"\nHOME_URL=\"https://www.ubuntu.com/\"\n\
SUPPORT_URL=\"https://help.ubuntu.com/\"\nBUG_REPORT_URL=\"https://bugs.launchpad.net/ubuntu/\"\n\
PRIVACY_POLICY_URL=\"https://www.ubuntu.com/legal/terms-and-policies/privacy-policy\"\n\
VERSION_CODENAME=focal\nUBUNTU_CODENAME=focal\n";

fn attrs(mode: u32, uid: u32, gid: u32) -> Attrs {
    Attrs {
        mode,
        uid,
        gid,
        mtime: MTIME,
    }
}

/// Deterministic noise for the bytes around the filesystem.
fn noise(seed: u64, len: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A disk image with an Ubuntu-20.04-like ext4 at byte PREFIX, between random bytes.
struct Fixture {
    dir: tempfile::TempDir,
    image: PathBuf,
    len: u64,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(|_| {})
    }

    /// `tweak` may modify the bare filesystem file before it is placed in the image.
    fn with(tweak: impl FnOnce(&Path)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("etc/ssh")).unwrap();
        fs::create_dir_all(tree.join("usr/lib/modules/5.4.0-1069-raspi/kernel")).unwrap();
        fs::create_dir_all(tree.join("usr/lib/modules/5.4.0-1070-raspi")).unwrap();
        fs::create_dir_all(tree.join("usr/bin")).unwrap();
        for i in 0..300 {
            fs::write(
                tree.join(format!("etc/stock-config-{i:03}.conf")),
                format!("setting {i}\n"),
            )
            .unwrap();
        }
        fs::write(tree.join("etc/hostname"), "ubuntu\n").unwrap();
        fs::write(
            tree.join("etc/ssh/sshd_config"),
            "PasswordAuthentication yes\n".repeat(100),
        )
        .unwrap();
        fs::hard_link(
            tree.join("etc/ssh/sshd_config"),
            tree.join("etc/ssh/sshd_config.link"),
        )
        .unwrap();
        fs::write(tree.join("usr/lib/os-release"), OS_RELEASE).unwrap();
        fs::write(
            tree.join("usr/lib/modules/5.4.0-1069-raspi/modules.dep"),
            "",
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", tree.join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("usr/lib", tree.join("lib")).unwrap();
        std::os::unix::fs::symlink("usr/bin", tree.join("bin")).unwrap();
        let bare = dir.path().join("bare.img");
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096", "-O"])
            .arg("has_journal,extent,64bit,flex_bg,metadata_csum,dir_index,huge_file,dir_nlink,extra_isize,^orphan_file,^metadata_csum_seed")
            .args(["-L", "writable", "-U", "6f0c0b2a-3d3c-4d8e-9a55-0d6a1b2c3d4e", "-E", "hash_seed=1b4e28ba-2fa1-11d2-883f-0016d3cca427", "-d"])
            .arg(&tree).arg(&bare).arg("256M"));
        // -D rebuilds /etc as a hash-indexed directory, as on a real, used root filesystem.
        let st = Command::new("e2fsck")
            .arg("-fyD")
            .arg(&bare)
            .output()
            .unwrap();
        assert!(st.status.code().unwrap() <= 1, "e2fsck -fyD: {st:?}");
        let stat = debugfs(&bare, "stat /etc");
        let flags = stat
            .split("Flags: ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        assert!(
            u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap() & 0x1000 != 0,
            "/etc not indexed: {stat}"
        );
        tweak(&bare);

        let len = fs::metadata(&bare).unwrap().len();
        let image = dir.path().join("disk.img");
        let mut out = fs::File::create(&image).unwrap();
        out.write_all(&noise(1, PREFIX)).unwrap();
        // Copy sparsely: the filesystem is mostly zeros.
        let mut src = fs::File::open(&bare).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = PREFIX;
        loop {
            let n = src.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                std::os::unix::fs::FileExt::write_all_at(&out, &buf[..n], pos).unwrap();
            }
            pos += n as u64;
        }
        std::os::unix::fs::FileExt::write_all_at(&out, &noise(2, SUFFIX), pos).unwrap();
        fs::write(dir.path().join("prefix.bin"), noise(1, PREFIX)).unwrap();
        fs::write(dir.path().join("suffix.bin"), noise(2, SUFFIX)).unwrap();
        fs::remove_file(&bare).unwrap();
        Fixture { dir, image, len }
    }

    /// A second, identical image in a directory of its own.
    fn duplicate(&self) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for name in ["prefix.bin", "suffix.bin"] {
            fs::copy(self.dir.path().join(name), dir.path().join(name)).unwrap();
        }
        let image = dir.path().join("disk.img");
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&self.image)
            .arg(&image));
        Fixture {
            dir,
            image,
            len: self.len,
        }
    }

    fn open(&self, writable: bool) -> Result<Ext4Fs, Ext4Error> {
        Ext4Fs::open(&self.image, PREFIX, self.len, writable)
    }

    /// cmp: the bytes before and after the filesystem are what we put there.
    fn assert_outside_untouched(&self) {
        run(Command::new("cmp")
            .arg("-n")
            .arg(PREFIX.to_string())
            .arg(&self.image)
            .arg(self.dir.path().join("prefix.bin")));
        run(Command::new("cmp")
            .arg("-i")
            .arg(format!("{}:0", PREFIX + self.len))
            .arg(&self.image)
            .arg(self.dir.path().join("suffix.bin")));
        assert_eq!(
            fs::metadata(&self.image).unwrap().len(),
            PREFIX + self.len + SUFFIX
        );
    }

    /// The filesystem alone, for e2fsck and debugfs.
    fn extract(&self) -> PathBuf {
        let path = self.dir.path().join("extracted.img");
        run(Command::new("dd")
            .arg(format!("if={}", self.image.display()))
            .arg(format!("of={}", path.display()))
            .args(["bs=1M", "conv=sparse", "status=none"])
            .arg(format!("skip={}", PREFIX >> 20))
            .arg(format!("count={}", self.len >> 20)));
        path
    }

    /// e2fsck -fn passes, the outside is untouched; returns the extracted filesystem.
    fn check(&self) -> PathBuf {
        self.assert_outside_untouched();
        let fs_img = self.extract();
        let out = Command::new("e2fsck")
            .arg("-fn")
            .arg(&fs_img)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "e2fsck -fn: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fs_img
    }
}

fn debugfs(fs_img: &Path, request: &str) -> String {
    let out = run(Command::new("debugfs").arg("-R").arg(request).arg(fs_img));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().all(|l| l.starts_with("debugfs ")),
        "debugfs -R '{request}': {err}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn debugfs_cat(fs_img: &Path, path: &str) -> Vec<u8> {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(fs_img));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .all(|l| l.starts_with("debugfs ")),
        "cat {path}: {out:?}"
    );
    out.stdout
}

/// The word after `label` in debugfs `stat` output.
fn field<'a>(stat: &'a str, label: &str) -> &'a str {
    stat.split(label)
        .nth(1)
        .unwrap_or_else(|| panic!("no {label} in {stat}"))
        .split_whitespace()
        .next()
        .unwrap()
}

/// debugfs shows the type, mode, owner and all timestamps we set.
fn assert_stat(fs_img: &Path, path: &str, kind: &str, a: &Attrs) {
    let stat = debugfs(fs_img, &format!("stat {path}"));
    assert_eq!(field(&stat, "Type:"), kind, "{path}: {stat}");
    assert_eq!(
        u32::from_str_radix(field(&stat, "Mode:"), 8).unwrap(),
        a.mode,
        "{path}: {stat}"
    );
    assert_eq!(field(&stat, "User:"), a.uid.to_string(), "{path}");
    assert_eq!(field(&stat, "Group:"), a.gid.to_string(), "{path}");
    for t in [" ctime:", " atime:", " mtime:", "crtime:"] {
        assert_eq!(
            field(&stat, t),
            format!("{:#010x}:00000000", a.mtime),
            "{path} {t}: {stat}"
        );
    }
}

/// A reader of `len` pseudo-random bytes that never holds them all in memory.
struct Pattern {
    left: u64,
    x: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize).min(100_003);
        for b in &mut buf[..n] {
            self.x = self
                .x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.x >> 33) as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn pattern(len: u64) -> Vec<u8> {
    let mut v = Vec::new();
    Pattern { left: len, x: 7 }.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn ext4_indexed_etc_takes_hundreds_of_long_names() {
    let f = Fixture::new();
    let a = attrs(0o640, 1000, 27);
    let mut fs = f.open(true).unwrap();
    let name = |i: usize| {
        format!(
            "/etc/{}-{i:04}.conf",
            "an-overlay-file-with-a-rather-long-name".repeat(5)
        )
    };
    for i in 0..700 {
        let body = format!("entry {i}\n");
        fs.write_file(&name(i), &mut body.as_bytes(), body.len() as u64, &a)
            .unwrap();
    }
    fs.close().unwrap();

    let img = f.check();
    let htree = debugfs(&img, "htree /etc");
    assert!(
        htree.matches("Entry #").count() > 20,
        "leaves were not split: {htree}"
    );
    for i in [0, 350, 699] {
        assert_eq!(
            debugfs_cat(&img, &name(i)),
            format!("entry {i}\n").as_bytes()
        );
        assert_stat(&img, &name(i), "regular", &a);
    }
    assert_eq!(
        debugfs_cat(&img, "/etc/stock-config-123.conf"),
        b"setting 123\n"
    );
    let listed = debugfs(&img, "ls -l /etc");
    assert_eq!(
        listed
            .matches(&"an-overlay-file-with-a-rather-long-name".repeat(5))
            .count(),
        700
    );
}

#[test]
fn ext4_nested_dirs_big_file_and_symlinks() {
    let f = Fixture::new();
    let dir_a = attrs(0o750, 0, 0);
    let file_a = attrs(0o4755, 0, 0);
    let link_a = attrs(0o777, 0, 0);
    let big = 20u64 << 20;
    let slow_target = format!("/usr/share/{}", "deep/".repeat(30));
    let mut fs = f.open(true).unwrap();
    let before = fs.free_bytes();
    fs.mkdir_p("/opt/a/b/c", &dir_a).unwrap();
    fs.mkdir_p(
        "/etc/systemd/system/multi-user.target.wants",
        &attrs(0o755, 0, 0),
    )
    .unwrap();
    // Through the /lib -> usr/lib symlink, as Ubuntu's merged /usr has it.
    fs.mkdir_p("/lib/modules-load.d", &dir_a).unwrap();
    fs.write_file(
        "/opt/a/b/c/big.bin",
        &mut Pattern { left: big, x: 7 },
        big,
        &file_a,
    )
    .unwrap();
    fs.write_file(
        "/lib/modules-load.d/k8s.conf",
        &mut &b"overlay\nbr_netfilter\n"[..],
        21,
        &attrs(0o644, 0, 0),
    )
    .unwrap();
    fs.symlink("/etc/systemd/system/swap.target", "/dev/null", &link_a)
        .unwrap();
    fs.symlink("/opt/a/slow", &slow_target, &link_a).unwrap();
    fs.write_file("/opt/a/empty", &mut &b""[..], 0, &attrs(0o600, 5, 6))
        .unwrap();
    // Past 2038: the epoch bits of the extra timestamp fields carry it.
    let late = Attrs {
        mtime: (1 << 31) + 5,
        ..attrs(0o644, 0, 0)
    };
    fs.write_file("/opt/a/late", &mut &b"x"[..], 1, &late)
        .unwrap();
    assert!(before - fs.free_bytes() >= big);
    fs.close().unwrap();

    let img = f.check();
    assert_stat(&img, "/opt", "directory", &dir_a);
    assert_stat(&img, "/opt/a/b/c", "directory", &dir_a);
    assert_stat(&img, "/usr/lib/modules-load.d", "directory", &dir_a);
    assert_eq!(
        debugfs_cat(&img, "/usr/lib/modules-load.d/k8s.conf"),
        b"overlay\nbr_netfilter\n"
    );
    assert_stat(&img, "/opt/a/b/c/big.bin", "regular", &file_a);
    assert!(
        debugfs_cat(&img, "/opt/a/b/c/big.bin") == pattern(big),
        "20 MiB content differs"
    );
    let stat = debugfs(&img, "stat /opt/a/b/c/big.bin");
    assert_eq!(field(&stat, "Size:"), big.to_string());
    assert!(stat.contains("EXTENTS:"), "{stat}");
    let fast = debugfs(&img, "stat /etc/systemd/system/swap.target");
    assert!(fast.contains("Fast link dest: \"/dev/null\""), "{fast}");
    assert_stat(&img, "/etc/systemd/system/swap.target", "symlink", &link_a);
    assert_stat(&img, "/opt/a/slow", "symlink", &link_a);
    assert_eq!(debugfs_cat(&img, "/opt/a/slow"), slow_target.as_bytes());
    assert_stat(&img, "/opt/a/empty", "regular", &attrs(0o600, 5, 6));
    assert_eq!(
        field(&debugfs(&img, "stat /opt/a/late"), " mtime:"),
        "0x80000005:00000001"
    );
    assert_eq!(field(&debugfs(&img, "stat /opt/a/empty"), "Size:"), "0");
}

#[test]
fn ext4_replace_and_remove() {
    let f = Fixture::new();
    let a = attrs(0o644, 0, 0);
    let longer = pattern(300_000);
    let mut fs = f.open(true).unwrap();
    let free0 = fs.free_bytes();
    // Longer than the stock file, then shorter, then a symlink, then a file again.
    fs.write_file(
        "/etc/ssh/sshd_config",
        &mut &longer[..],
        longer.len() as u64,
        &a,
    )
    .unwrap();
    fs.write_file(
        "/etc/hostname",
        &mut &b"node-1-with-a-longer-name\n"[..],
        26,
        &a,
    )
    .unwrap();
    fs.write_file(
        "/etc/ssh/sshd_config",
        &mut &b"short\n"[..],
        6,
        &attrs(0o600, 0, 0),
    )
    .unwrap();
    fs.symlink(
        "/etc/stock-config-001.conf",
        "stock-config-002.conf",
        &attrs(0o777, 0, 0),
    )
    .unwrap();
    fs.symlink(
        "/etc/stock-config-003.conf",
        &"x/".repeat(100),
        &attrs(0o777, 0, 0),
    )
    .unwrap();
    fs.write_file(
        "/etc/stock-config-003.conf",
        &mut &b"file again\n"[..],
        11,
        &a,
    )
    .unwrap();
    fs.symlink(
        "/etc/os-release",
        "/usr/lib/os-release",
        &attrs(0o777, 0, 0),
    )
    .unwrap();
    fs.write_file("/tmp-file", &mut &longer[..], longer.len() as u64, &a)
        .unwrap();
    fs.remove("/tmp-file").unwrap();
    fs.remove("/etc/stock-config-004.conf").unwrap();
    fs.remove("/bin").unwrap();
    assert!(!fs.exists("/etc/stock-config-004.conf").unwrap());
    assert!(!fs.exists("/bin").unwrap());
    assert!(matches!(fs.remove("/etc/ssh"), Err(Ext4Error::Path { .. })));
    assert!(matches!(
        fs.remove("/etc/nope"),
        Err(Ext4Error::Path { .. })
    ));
    assert!(matches!(
        fs.write_file("/etc/ssh", &mut &b""[..], 0, &a),
        Err(Ext4Error::Path { .. })
    ));
    assert!(matches!(
        fs.write_file("/nope/x", &mut &b""[..], 0, &a),
        Err(Ext4Error::Path { .. })
    ));
    // Every replaced or removed block came back: net, two stock files' blocks were freed
    // (stock-config-001 became a fast symlink, stock-config-004 was removed), and the old
    // sshd_config block stays with its hard link.
    assert_eq!(fs.free_bytes(), free0 + 4096, "blocks leaked");
    fs.close().unwrap();

    let img = f.check();
    assert_eq!(debugfs_cat(&img, "/etc/ssh/sshd_config"), b"short\n");
    assert_stat(&img, "/etc/ssh/sshd_config", "regular", &attrs(0o600, 0, 0));
    assert_eq!(
        field(&debugfs(&img, "stat /etc/ssh/sshd_config"), "Blockcount:"),
        "8"
    );
    assert_eq!(
        debugfs_cat(&img, "/etc/hostname"),
        b"node-1-with-a-longer-name\n"
    );
    assert!(
        debugfs(&img, "stat /etc/stock-config-001.conf")
            .contains("Fast link dest: \"stock-config-002.conf\"")
    );
    assert_eq!(
        debugfs_cat(&img, "/etc/stock-config-003.conf"),
        b"file again\n"
    );
    assert!(
        debugfs(&img, "stat /etc/os-release").contains("Fast link dest: \"/usr/lib/os-release\"")
    );
    let ls = debugfs(&img, "ls /");
    assert!(!ls.contains("tmp-file") && !ls.contains(" bin "), "{ls}");
    assert!(!debugfs(&img, "ls /etc").contains("stock-config-004.conf"));
}

#[test]
fn ext4_full_filesystem_is_refused_and_left_unchanged() {
    let f = Fixture::new();
    let before = fs::read(&f.image).unwrap();
    let mut fs = f.open(true).unwrap();
    let free = fs.free_bytes();
    let size = free; // the file itself fits exactly, its bookkeeping does not
    let need = ext4::bytes_needed(ext4::Need::File(size), fs.block_size());
    struct Unread;
    impl Read for Unread {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("content read although it cannot fit");
        }
    }
    let err = fs
        .write_file("/etc/huge", &mut Unread, size, &attrs(0o644, 0, 0))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("need {} bytes more", need - free)),
        "{msg}"
    );
    assert!(
        msg.contains("disk.img") && msg.contains("/etc/huge"),
        "{msg}"
    );
    fs.symlink("/etc/x", &"y".repeat(5000), &attrs(0o777, 0, 0))
        .unwrap_err();
    let too_late = Attrs {
        mtime: i64::MAX,
        ..attrs(0o644, 0, 0)
    };
    let err = fs
        .write_file("/etc/late", &mut Unread, 0, &too_late)
        .unwrap_err();
    assert!(
        err.to_string().contains("outside what ext4 can store"),
        "{err}"
    );
    fs.close().unwrap();
    assert!(
        fs::read(&f.image).unwrap() == before,
        "a refused write changed the image"
    );
}

#[test]
fn ext4_refuses_what_it_cannot_edit_safely() {
    let f = Fixture::with(|bare| {
        run(Command::new("debugfs")
            .args(["-w", "-R", "feature needs_recovery"])
            .arg(bare));
    });
    let before = fs::read(&f.image).unwrap();
    for writable in [true, false] {
        let err = f
            .open(writable)
            .err()
            .expect("opened a filesystem that needs recovery");
        assert!(matches!(err, Ext4Error::NeedsRecovery { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("disk.img") && msg.contains("journal recovery"),
            "{msg}"
        );
    }
    // Not an ext4 at all at that offset.
    let err = Ext4Fs::open(&f.image, 0, f.len, true).err().unwrap();
    assert!(
        matches!(err, Ext4Error::Open { .. }) && err.to_string().contains("disk.img"),
        "{err}"
    );
    // A partition smaller than the filesystem.
    let err = Ext4Fs::open(&f.image, PREFIX, f.len - 4096, false)
        .err()
        .unwrap();
    assert!(matches!(err, Ext4Error::TooBig { .. }), "{err}");
    assert!(
        fs::read(&f.image).unwrap() == before,
        "a refused open changed the image"
    );

    let f = Fixture::with(|bare| {
        run(Command::new("debugfs")
            .args(["-w", "-R", "feature inline_data"])
            .arg(bare));
    });
    let err = f.open(true).err().unwrap();
    assert!(err.to_string().contains("inline_data"), "{err}");
}

#[test]
fn ext4_two_runs_are_byte_identical() {
    let apply = |f: &Fixture| {
        let mut fs = f.open(true).unwrap();
        fs.mkdir_p("/etc/k8s/pki", &attrs(0o700, 0, 0)).unwrap();
        for i in 0..50 {
            let body = pattern(i * 1000);
            fs.write_file(
                &format!("/etc/k8s/pki/f{i}"),
                &mut &body[..],
                body.len() as u64,
                &attrs(0o600, 0, 0),
            )
            .unwrap();
        }
        fs.write_file("/etc/hostname", &mut &b"pi1\n"[..], 4, &attrs(0o644, 0, 0))
            .unwrap();
        fs.symlink(
            "/etc/localtime",
            "/usr/share/zoneinfo/Europe/Berlin",
            &attrs(0o777, 0, 0),
        )
        .unwrap();
        fs.remove("/etc/stock-config-010.conf").unwrap();
        fs.set_attrs("/etc", &attrs(0o755, 0, 0)).unwrap();
        fs.close().unwrap();
        f.check();
        fs::read(&f.image).unwrap()
    };
    // mkfs stamps the current time, so the second image is a copy of the first.
    let a = Fixture::new();
    let b = a.duplicate();
    let first = apply(&a);
    // A different wall-clock second, so any timestamp taken from the clock would show.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(
        first == apply(&b),
        "two identical edits gave different images"
    );
}

#[test]
fn ext4_reads_release_and_kernels_without_writing() {
    let f = Fixture::new();
    let before = fs::read(&f.image).unwrap();
    let mut fs = f.open(false).unwrap();
    let os = ext4::os_release(&fs).unwrap();
    assert_eq!(
        (os.id.as_str(), os.version_id.as_str()),
        ("ubuntu", "20.04")
    );
    assert_eq!(os.version_codename.as_deref(), Some("focal"));
    assert_eq!(os.pretty_name.as_deref(), Some("Ubuntu 20.04.5 LTS"));
    assert_eq!(os.release(), Some(pi_image::plan::release::Release::Focal));
    assert_eq!(
        ext4::kernel_versions(&fs).unwrap(),
        ["5.4.0-1069-raspi", "5.4.0-1070-raspi"]
    );
    assert_eq!(
        fs.read_file("/etc/hostname").unwrap().as_deref(),
        Some(&b"ubuntu\n"[..])
    );
    assert_eq!(fs.read_file("/etc/nope").unwrap(), None);
    assert!(fs.read_file("/etc").is_err());
    assert!(fs.exists("/etc/os-release").unwrap() && !fs.exists("/etc/hostname/x").unwrap());
    let etc = fs.list_dir("/etc").unwrap();
    assert_eq!(etc.len(), 300 + 3);
    assert!(
        etc.iter()
            .any(|e| e.name == "os-release" && e.kind == EntryKind::Symlink)
    );
    assert!(
        etc.iter()
            .any(|e| e.name == "ssh" && e.kind == EntryKind::Dir)
    );
    let err = fs
        .write_file("/etc/x", &mut &b""[..], 0, &attrs(0o644, 0, 0))
        .unwrap_err();
    assert!(matches!(err, Ext4Error::ReadOnly { .. }), "{err}");
    fs.close().unwrap();
    // Opening writable and changing nothing writes nothing either.
    f.open(true).unwrap().close().unwrap();
    drop(f.open(true).unwrap());
    assert!(fs::read(&f.image).unwrap() == before);
}
