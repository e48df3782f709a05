//! The FAT boot partition module against filesystems made by mkfs.vfat the way Ubuntu's
//! system-boot partition is, judged by dosfstools (fsck.fat -n) and mtools, not by our reader.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// True when fsck.fat, mkfs.vfat and mtools are all there; otherwise says why the test is skipped.
fn tools_present() -> bool {
    let missing: Vec<&str> = ["mkfs.vfat", "fsck.fat", "mdir", "mtype"]
        .into_iter()
        .filter(|tool| find_tool(tool).is_none())
        .collect();
    if missing.is_empty() {
        true
    } else {
        eprintln!("skipping: {} not installed", missing.join(", "));
        false
    }
}

fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn tool(name: &str) -> Command {
    Command::new(find_tool(name).unwrap())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A 256 MiB sparse FAT32 image labelled system-boot, like Ubuntu's boot partition.
fn make_image(path: &Path) {
    let f = fs::File::create(path).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);
    run(tool("mkfs.vfat")
        .args(["-F", "32", "-n", "system-boot", "-i", "12345678"])
        .arg(path));
}

/// fsck.fat -n must pass and have nothing to say beyond its banner and summary.
fn assert_fsck_clean(path: &Path) {
    let out = tool("fsck.fat").arg("-n").arg(path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with("fsck.fat ") && !l.contains(" files, ") && !l.trim().is_empty())
        .collect();
    assert!(
        out.status.success() && complaints.is_empty() && stderr.trim().is_empty(),
        "fsck.fat -n {} (exit {:?}):\n{stdout}{stderr}",
        path.display(),
        out.status.code()
    );
}

fn mtype(image: &Path, path: &str) -> Vec<u8> {
    run(tool("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(image)
        .arg(format!("::{path}")))
    .stdout
}

fn mdir(image: &Path, path: &str) -> String {
    let out = run(tool("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(image)
        .arg(format!("::{path}")));
    String::from_utf8(out.stdout).unwrap()
}

/// Sets the FSInfo "next free cluster" hint to 0xFFFFFFFF (unknown), as FAT drivers that keep no
/// hint leave it, so the next allocation searches from cluster 2 and reuses freed clusters.
fn clear_next_free_hint(image: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = open_raw(image);
    // mkfs.vfat puts FSInfo in sector 1; the hint is at byte 492 of it.
    f.seek(SeekFrom::Start(512 + 492)).unwrap();
    f.write_all(&[0xff; 4]).unwrap();
}

fn open_raw(path: &Path) -> fs::File {
    fs::OpenOptions::new().read(true).write(true).open(path).unwrap()
}

/// Regression test for the vendored fatfs: `create_dir` used to give "." and ".." long-name
/// entries and point ".." of a top-level directory at the root cluster instead of 0.
#[test]
fn fatfs_create_dir_writes_valid_dot_entries() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("boot.img");
    make_image(&img);
    {
        let fs = fatfs::FileSystem::new(open_raw(&img), fatfs::FsOptions::new()).unwrap();
        let sub = fs.root_dir().create_dir("overlays").unwrap();
        sub.create_dir("nested").unwrap();
        drop(sub);
        fs.unmount().unwrap();
    }
    assert_fsck_clean(&img);
    let listing = mdir(&img, "overlays/nested");
    assert!(listing.contains("<DIR>"), "{listing}");
}

/// Regression test for the vendored fatfs: a FAT32 root directory growing into a cluster that
/// held a deleted file's data used to keep that data, which then read as garbage entries.
#[test]
fn fatfs_root_dir_growth_into_reused_cluster_is_zeroed() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("boot.img");
    make_image(&img);
    {
        // Non-zero data right after the root's first cluster, then freed.
        let fs = fatfs::FileSystem::new(open_raw(&img), fatfs::FsOptions::new()).unwrap();
        let root = fs.root_dir();
        {
            use std::io::Write;
            let mut f = root.create_file("filler.bin").unwrap();
            f.write_all(&vec![0xa5u8; 64 << 10]).unwrap();
        }
        root.remove("filler.bin").unwrap();
        drop(root);
        fs.unmount().unwrap();
    }
    clear_next_free_hint(&img);
    {
        // Enough long-named entries to spill the root into the freed clusters.
        let fs = fatfs::FileSystem::new(open_raw(&img), fatfs::FsOptions::new()).unwrap();
        let root = fs.root_dir();
        for i in 0..200 {
            root.create_file(&format!("A long file name number {i}.txt")).unwrap();
        }
        drop(root);
        fs.unmount().unwrap();
    }
    assert_fsck_clean(&img);
    let listing = mdir(&img, "");
    assert!(listing.contains("A long file name number 199.txt"), "{listing}");
}
