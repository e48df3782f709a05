//! The FAT boot partition module against filesystems made by mkfs.vfat the way Ubuntu's
//! system-boot partition is, judged by dosfstools (fsck.fat -n) and mtools, not by our reader.

mod common;

use common::run_ok as run;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use pi_image::image::bootfs::{BootEntry, BootFs, BootFsError, FatTimestamp};
use pi_image::image::partview::PartitionView;

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
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
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
            root.create_file(&format!("A long file name number {i}.txt"))
                .unwrap();
        }
        drop(root);
        fs.unmount().unwrap();
    }
    assert_fsck_clean(&img);
    let listing = mdir(&img, "");
    assert!(
        listing.contains("A long file name number 199.txt"),
        "{listing}"
    );
}

// ---- BootFs -------------------------------------------------------------------------------

const MTIME: i64 = 1_662_033_600; // 2022-09-01 12:00:00 UTC
const MDIR_STAMP: &str = "2022-09-01  12:00";

fn stamp() -> FatTimestamp {
    FatTimestamp::from_unix(MTIME)
}

fn mount(image: &Path) -> BootFs<fs::File> {
    BootFs::open(open_raw(image), stamp()).unwrap()
}

/// Deterministic bytes of a given length, different per seed.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A long, mixed-case name with spaces that is not 8.3.
fn long_name(i: usize) -> String {
    format!("Node Config {i:03} For The Cluster.Yaml")
}

/// Every file and directory line of an mdir listing carries the fixed timestamp.
fn assert_all_stamped(listing: &str) {
    let entries: Vec<&str> = listing
        .lines()
        .filter(|l| l.len() > 13 && !l.starts_with(' ') && !l.starts_with("Directory for"))
        .collect();
    assert!(!entries.is_empty(), "{listing}");
    for line in entries {
        assert!(
            line.contains(MDIR_STAMP),
            "not stamped {MDIR_STAMP}: {line:?}"
        );
    }
}

/// Everything the module is for, in three mounts: nested directories, hundreds of long names so
/// the root grows across clusters, deletions so later growth reuses freed clusters (with the
/// FSInfo hint cleared so the allocator starts from the bottom), and replacements.
/// Returns what each surviving file should hold.
fn scenario(img: &Path) -> Vec<(String, Vec<u8>)> {
    let mut expect: Vec<(String, Vec<u8>)> = Vec::new();
    {
        let boot = mount(img);
        boot.create_dir_all("overlays/Extra Dir/deeper").unwrap();
        boot.write_bytes(
            "overlays/Extra Dir/deeper/My Overlay.dtbo",
            &content(1, 3000),
        )
        .unwrap();
        boot.write_file("config.txt", &mut &b"[pi4]\nkernel=uboot_rpi_4.bin\n"[..])
            .unwrap();
        // Spread a large file over many clusters, to be freed later.
        boot.write_bytes("filler.bin", &content(2, 600 << 10))
            .unwrap();
        for i in 0..150 {
            boot.write_bytes(&long_name(i), &content(100 + i as u64, 10 + i * 7))
                .unwrap();
        }
        boot.unmount().unwrap();
    }
    assert_fsck_clean(img);
    clear_next_free_hint(img);
    {
        let boot = mount(img);
        boot.remove("filler.bin").unwrap();
        for i in (0..150).step_by(3) {
            boot.remove(&long_name(i)).unwrap();
        }
        boot.unmount().unwrap();
    }
    assert_fsck_clean(img);
    clear_next_free_hint(img);
    {
        let boot = mount(img);
        // 150 more long names: the root grows into the clusters filler.bin held.
        for i in 150..300 {
            boot.write_bytes(&long_name(i), &content(100 + i as u64, 5 + i))
                .unwrap();
        }
        // Replace with shorter, longer and empty content, through both writers.
        boot.write_bytes("config.txt", b"[all]\n").unwrap();
        boot.write_file(
            "overlays/Extra Dir/deeper/My Overlay.dtbo",
            &mut &content(3, 9000)[..],
        )
        .unwrap();
        boot.write_bytes(&long_name(1), &[]).unwrap();
        boot.write_bytes("overlays/new dir/Created Late.txt", b"late\n")
            .unwrap();
        boot.unmount().unwrap();
    }
    assert_fsck_clean(img);

    expect.push(("config.txt".into(), b"[all]\n".to_vec()));
    expect.push((
        "overlays/Extra Dir/deeper/My Overlay.dtbo".into(),
        content(3, 9000),
    ));
    expect.push((
        "overlays/new dir/Created Late.txt".into(),
        b"late\n".to_vec(),
    ));
    expect.push((long_name(1), Vec::new()));
    for i in (2..150).filter(|i| i % 3 != 0) {
        expect.push((long_name(i), content(100 + i as u64, 10 + i * 7)));
    }
    for i in 150..300 {
        expect.push((long_name(i), content(100 + i as u64, 5 + i)));
    }
    expect
}

#[test]
fn many_long_names_nested_dirs_reuse_and_replace_pass_fsck_and_mtools() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("boot.img");
    make_image(&img);
    let expect = scenario(&img);

    for (path, data) in &expect {
        assert_eq!(&mtype(&img, path), data, "mtype ::{path}");
    }
    let root = mdir(&img, "");
    assert!(
        root.contains(" Node Config 299 For The Cluster.Yaml"),
        "{root}"
    );
    assert!(!root.contains("filler.bin"), "{root}");
    assert!(!root.contains("Node Config 000 "), "{root}");
    assert_all_stamped(&root);
    assert_all_stamped(&mdir(&img, "overlays"));
    assert_all_stamped(&mdir(&img, "overlays/Extra Dir/deeper"));

    // And our own reader agrees with mtools.
    let boot = mount(&img);
    assert_eq!(boot.volume_label().unwrap(), "system-boot");
    for (path, data) in &expect {
        assert_eq!(boot.read_file(path).unwrap().as_ref(), Some(data), "{path}");
    }
    assert_eq!(boot.read_file("filler.bin").unwrap(), None);
    assert_eq!(boot.read_file("no/such/dir.txt").unwrap(), None);
    assert!(boot.exists("overlays/extra dir/DEEPER"));
    assert!(boot.exists("/"));
    assert!(!boot.exists("Node Config 000 For The Cluster.Yaml"));
    let listed = boot.list_dir("").unwrap();
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(listed.len(), expect.len() - 2 + 1, "{names:?}"); // + overlays, - 2 nested files
    let overlays = boot.list_dir("overlays").unwrap();
    assert_eq!(
        overlays,
        [
            BootEntry {
                name: "Extra Dir".into(),
                is_dir: true,
                size: 0
            },
            BootEntry {
                name: "new dir".into(),
                is_dir: true,
                size: 0
            },
        ]
    );
    let mut out = Vec::new();
    let n = boot.copy_file_to(&long_name(299), &mut out).unwrap();
    assert_eq!((n, out), (304, content(399, 304)));
    boot.unmount().unwrap();
    assert_fsck_clean(&img);
}

#[test]
fn two_runs_give_identical_images() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    make_image(&base);
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    fs::copy(&base, &a).unwrap();
    fs::copy(&base, &b).unwrap();
    scenario(&a);
    scenario(&b);
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "images differ"
    );
    // The original image got changed at all (guards against comparing two untouched copies).
    assert!(fs::read(&a).unwrap() != fs::read(&base).unwrap());
}

/// The production setup: the boot partition as a PartitionView of a larger image file. A 30 MB
/// "kernel" streams in and out, and not one byte outside the partition changes.
#[test]
fn through_partition_view_nothing_outside_changes() {
    if !tools_present() {
        return;
    }
    const OFFSET: u64 = 1 << 20;
    const LEN: u64 = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("part.img");
    let f = fs::File::create(&part).unwrap();
    f.set_len(LEN).unwrap();
    drop(f);
    run(tool("mkfs.vfat")
        .args(["-F", "32", "-n", "system-boot", "-i", "12345678"])
        .arg(&part));
    let prefix = content(7, OFFSET as usize);
    let suffix = content(8, 1 << 20);
    let disk = dir.path().join("disk.img");
    let mut whole = prefix.clone();
    whole.extend(fs::read(&part).unwrap());
    whole.extend(&suffix);
    fs::write(&disk, &whole).unwrap();
    drop(whole);

    let kernel = content(9, 30 << 20);
    let started = std::time::Instant::now();
    {
        let view = PartitionView::new(open_raw(&disk), OFFSET, LEN).unwrap();
        let boot = BootFs::open(view, stamp()).unwrap();
        assert_eq!(boot.volume_label().unwrap(), "system-boot");
        boot.write_bytes("cmdline.txt", b"console=tty1 root=LABEL=writable\n")
            .unwrap();
        let n = boot.write_file("vmlinuz", &mut &kernel[..]).unwrap();
        assert_eq!(n, kernel.len() as u64);
        eprintln!("wrote 30 MB in {:?}", started.elapsed());
        let mut back = Vec::new();
        let read_started = std::time::Instant::now();
        boot.copy_file_to("vmlinuz", &mut back).unwrap();
        eprintln!("read 30 MB back in {:?}", read_started.elapsed());
        assert!(back == kernel, "vmlinuz read back differs");
        boot.unmount().unwrap();
    }

    let after = fs::read(&disk).unwrap();
    assert_eq!(after.len() as u64, OFFSET + LEN + suffix.len() as u64);
    assert!(
        after[..OFFSET as usize] == prefix[..],
        "bytes before the partition changed"
    );
    assert!(
        after[(OFFSET + LEN) as usize..] == suffix[..],
        "bytes after the partition changed"
    );
    fs::write(&part, &after[OFFSET as usize..(OFFSET + LEN) as usize]).unwrap();
    drop(after);
    assert_fsck_clean(&part);
    assert!(mtype(&part, "vmlinuz") == kernel, "mtype ::vmlinuz differs");
    assert_eq!(
        mtype(&part, "cmdline.txt"),
        b"console=tty1 root=LABEL=writable\n"
    );
    assert_all_stamped(&mdir(&part, ""));
}

/// Errors name the path inside the partition and say what went wrong; a failed write leaves a
/// filesystem fsck.fat still accepts.
#[test]
fn errors_are_clear_and_leave_a_consistent_filesystem() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("tiny.img");
    let f = fs::File::create(&img).unwrap();
    f.set_len(4 << 20).unwrap();
    drop(f);
    run(tool("mkfs.vfat").args(["-n", "TINY"]).arg(&img));

    let boot = mount(&img);
    let free = boot.free_bytes().unwrap();
    assert!(free > 3 << 20 && free < 4 << 20, "{free}");
    boot.write_bytes("config.txt", b"x\n").unwrap();
    boot.create_dir_all("overlays").unwrap();

    let big = content(5, 5 << 20);
    let err = boot.write_bytes("overlays/huge.dtbo", &big).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, BootFsError::Full { need: 5242880, .. }),
        "{err:?}"
    );
    assert!(
        msg.starts_with("boot partition full writing overlays/huge.dtbo: need 5242880 bytes, "),
        "{msg}"
    );
    assert!(
        !boot.exists("overlays/huge.dtbo"),
        "nothing written when it cannot fit"
    );

    let err = boot.write_file("streamed.bin", &mut &big[..]).unwrap_err();
    assert!(
        matches!(err, BootFsError::RanOutOfSpace { ref path, written } if path == "streamed.bin" && written > 3 << 20),
        "{err:?}"
    );
    assert!(err.to_string().contains("streamed.bin"), "{err}");

    let err = boot
        .copy_file_to("overlays/missing.dtbo", &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "boot partition: overlays/missing.dtbo: no such file or directory"
    );
    let err = boot.write_bytes("overlays", b"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "boot partition: overlays is a directory, not a file"
    );
    let err = boot.write_bytes("config.txt/inner", b"").unwrap_err();
    assert!(matches!(err, BootFsError::BadPath { .. }), "{err:?}");
    assert!(err.to_string().contains("config.txt/inner"), "{err}");
    let err = boot.write_bytes("bad*name.txt", b"").unwrap_err();
    assert!(err.to_string().contains("bad*name.txt"), "{err}");
    // Removing the partial file gives its space back.
    boot.remove("streamed.bin").unwrap();
    assert!(boot.free_bytes().unwrap() > 3 << 20);
    boot.write_bytes("overlays/a.dtbo", b"a").unwrap();
    let err = boot.remove("overlays").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("boot partition: removing overlays: "),
        "{err}"
    );
    boot.unmount().unwrap();
    assert_fsck_clean(&img);

    // Not FAT at all: zeros, and an MBR-like sector.
    let zeros = dir.path().join("zeros.img");
    fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let err = BootFs::open(open_raw(&zeros), stamp()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "boot partition is not a FAT filesystem: its first sector is all zeros (unformatted?)"
    );
    let mut mbr = vec![0u8; 1 << 20];
    mbr[446] = 0x80;
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    fs::write(&zeros, &mbr).unwrap();
    let err = BootFs::open(open_raw(&zeros), stamp()).unwrap_err();
    assert!(matches!(err, BootFsError::NotFat { .. }), "{err:?}");
    assert!(err.to_string().contains("not a FAT filesystem"), "{err}");
}

/// The stock layout: the replica of Ubuntu 20.04.5's image (tests/fixtures), its system-boot
/// partition at sector 2048, 524288 sectors, opened in place.
#[test]
fn ubuntu_replica_boot_partition_reads_and_edits_cleanly() {
    if !tools_present() {
        return;
    }
    let Some(xz) = find_tool("xz") else {
        eprintln!("skipping: xz not installed");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("ubuntu.img");
    let out = run(Command::new(xz)
        .arg("-dc")
        .arg(root.join("tests/fixtures/ubuntu-20.04.5-replica.img.xz")));
    fs::write(&disk, &out.stdout).unwrap();
    drop(out);
    let (offset, len) = (2048 * 512, 524_288 * 512);

    let stock = root.join("tests/fixtures/bootfiles/focal-20.04.5");
    {
        let view = PartitionView::new(open_raw(&disk), offset, len).unwrap();
        let boot = BootFs::open(view, stamp()).unwrap();
        assert_eq!(boot.volume_label().unwrap(), "system-boot");
        for name in ["config.txt", "cmdline.txt", "user-data", "network-config"] {
            let want = fs::read(stock.join(name)).unwrap();
            assert_eq!(boot.read_file(name).unwrap(), Some(want), "{name}");
        }
        assert!(boot.exists("overlays/dwc2.dtbo"));
        boot.write_bytes("user-data", b"#cloud-config\nhostname: node1\n")
            .unwrap();
        boot.write_bytes("meta-data", b"instance-id: node1-abc\n")
            .unwrap();
        boot.write_bytes("overlays/Cluster Fan Control.dtbo", &content(11, 2500))
            .unwrap();
        boot.unmount().unwrap();
    }
    let part = dir.path().join("boot.img");
    let bytes = fs::read(&disk).unwrap();
    fs::write(&part, &bytes[offset as usize..(offset + len) as usize]).unwrap();
    assert_fsck_clean(&part);
    assert_eq!(
        mtype(&part, "user-data"),
        b"#cloud-config\nhostname: node1\n"
    );
    assert_eq!(mtype(&part, "meta-data"), b"instance-id: node1-abc\n");
    assert_eq!(
        mtype(&part, "overlays/Cluster Fan Control.dtbo"),
        content(11, 2500)
    );
}

/// A FAT32 image with a directory `LOOP` whose cluster chain loops back onto itself and whose
/// cluster holds no end-of-directory entry (every free slot marked deleted): what a crafted
/// base could hold.
fn looping_directory_image(path: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    make_image(path);
    run(tool("mmd")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(path)
        .arg("::loop"));
    let mut f = open_raw(path);
    let mut bs = [0u8; 512];
    f.read_exact(&mut bs).unwrap();
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([bs[o], bs[o + 1]]));
    let u32_at = |o: usize| u64::from(u32::from_le_bytes(bs[o..o + 4].try_into().unwrap()));
    let (bps, spc, reserved, fats) = (u16_at(11), u64::from(bs[13]), u16_at(14), u64::from(bs[16]));
    let (fat_size, root) = (u32_at(36), u32_at(44));
    let cluster_bytes = bps * spc;
    let data = (reserved + fats * fat_size) * bps;
    let at = |c: u64| data + (c - 2) * cluster_bytes;
    let mut dir = vec![0u8; cluster_bytes as usize];
    f.seek(SeekFrom::Start(at(root))).unwrap();
    f.read_exact(&mut dir).unwrap();
    let entry = dir
        .chunks(32)
        .find(|e| &e[..11] == b"LOOP       ")
        .expect("LOOP entry");
    let c = (u64::from(u16::from_le_bytes([entry[20], entry[21]])) << 16)
        | u64::from(u16::from_le_bytes([entry[26], entry[27]]));
    f.seek(SeekFrom::Start(at(c))).unwrap();
    f.read_exact(&mut dir).unwrap();
    for slot in dir.chunks_mut(32).filter(|e| e[0] == 0) {
        slot[..11].copy_from_slice(b"\xe5DELETEDTXT");
        slot[11] = 0x20;
    }
    f.seek(SeekFrom::Start(at(c))).unwrap();
    f.write_all(&dir).unwrap();
    for i in 0..fats {
        f.seek(SeekFrom::Start((reserved + i * fat_size) * bps + c * 4))
            .unwrap();
        f.write_all(&(c as u32).to_le_bytes()).unwrap();
    }
}

/// Run `f` on a thread; its result, or `None` if it is still running after 20 s.
fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(20)).ok()
}

/// (issue 14, item 14) A directory cluster cycle is an error naming the problem, not a hang.
#[test]
fn hole_14_a_directory_cluster_cycle_is_an_error_not_a_hang() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("loop.vfat");
    looping_directory_image(&img);
    let image = img.clone();
    let listed = within_20s(move || mount(&image).list_dir("loop").map(|l| l.len()))
        .expect("listing a looping directory hangs");
    let err = listed.expect_err("a looping directory listed").to_string();
    assert!(err.contains("loop"), "{err}");
    let image = img.clone();
    let read = within_20s(move || {
        mount(&image)
            .read_file("loop/missing.txt")
            .map(|f| f.is_some())
    })
    .expect("a lookup in a looping directory hangs");
    assert!(read.is_err(), "{read:?}");
    // A write into it must fail too, and never loop.
    let image = img.clone();
    let wrote = within_20s(move || mount(&image).write_bytes("loop/new.txt", b"x"))
        .expect("writing into a looping directory hangs");
    assert!(wrote.is_err());
}
