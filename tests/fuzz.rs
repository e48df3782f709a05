//! Seeded mutation fuzzing on stable Rust (issue 14): config.txt (evaluation and edits),
//! cmdline.txt, SSH keys and options, the profile loader, `.bmap` files, partition tables, and
//! mutated FAT and ext4 filesystems opened, listed, read and written. Every input must finish
//! within [`BOUND`] without a panic (errors are fine: they are typed). ext4 goes through
//! libext2fs (C), so its inputs run in a child process, where a crash is a signal, not the end
//! of this one.
//!
//! `cargo test --test fuzz` runs a few hundred inputs per target (seconds).
//! `make fuzz` runs each target for `FUZZ_SECONDS` (`PI_IMAGE_FUZZ_SECONDS` here) and prints
//! what it ran. `PI_IMAGE_FUZZ_SEED` repeats a run. An input that fails is saved under
//! `target/fuzz-failures/` and named in the failure.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pi_image::bootconf::{cmdline, configtxt};
use pi_image::image::bmap;
use pi_image::image::bootfs::{BootFs, FatTimestamp};
use pi_image::image::ext4::{Attrs, EntryKind, Ext4Fs};
use pi_image::image::partition::PartitionTable;
use pi_image::profile::{Profile, sshkey};

use common::{Rng, repo, run_ok, s};

/// No input may take longer than this.
const BOUND: Duration = Duration::from_secs(10);
/// Inputs per target in a plain `cargo test` (fewer for the slow ones).
const QUICK_INPUTS: u64 = 300;

/// Where mutations land in an input.
#[derive(Clone)]
enum Region {
    /// Anywhere (text).
    Anywhere,
    /// In these byte ranges (a filesystem's metadata: the rest is file data or zeros).
    Ranges(Vec<(usize, usize)>),
}

/// One input mutated by 1-8 stacked edits: bit flips, interesting bytes, random bytes,
/// dictionary words inserted or written over, chunks deleted or duplicated.
fn mutate(rng: &mut Rng, seed: &[u8], dict: &[&[u8]], region: &Region, text: bool) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = match region {
            Region::Anywhere => rng.below(data.len() + 1),
            Region::Ranges(r) => {
                let (a, b) = r[rng.below(r.len())];
                a + rng.below(b - a)
            }
        }
        .min(data.len());
        match rng.below(if text { 7 } else { 4 }) {
            0 if at < data.len() => data[at] ^= 1 << rng.below(8),
            1 if at < data.len() => {
                const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x20, 0x0a];
                data[at] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if at < data.len() => {
                // A little-endian 16/32-bit field set to an edge value.
                const EDGES: [u32; 6] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0xffff];
                let v = EDGES[rng.below(EDGES.len())].to_le_bytes();
                let n = if rng.below(2) == 0 { 2 } else { 4 };
                for (i, b) in v.iter().take(n).enumerate() {
                    if at + i < data.len() {
                        data[at + i] = *b;
                    }
                }
            }
            3 if at < data.len() => data[at] = rng.next() as u8,
            4 if !dict.is_empty() => {
                let w = dict[rng.below(dict.len())];
                data.splice(at..at, w.iter().copied());
            }
            5 => {
                let n = rng.below(16).min(data.len() - at);
                data.drain(at..at + n);
            }
            6 => {
                let n = rng.below(64).min(data.len() - at);
                let chunk: Vec<u8> = data[at..at + n].to_vec();
                data.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    data
}

/// A target: seeds, a dictionary, where to mutate, and what to run on an input.
struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    dict: Vec<&'static [u8]>,
    region: Region,
    text: bool,
    run: fn(&[u8]),
    /// Inputs in a plain `cargo test`.
    quick: u64,
}

/// The run's seed: `PI_IMAGE_FUZZ_SEED`, else the clock (once per process).
fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("PI_IMAGE_FUZZ_SEED")
            .ok()
            .map(|v| v.trim().parse().expect("PI_IMAGE_FUZZ_SEED is a number"))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
    })
}

/// How long each target runs: `PI_IMAGE_FUZZ_SECONDS`, else [`QUICK_INPUTS`] inputs.
enum Budget {
    Inputs(u64),
    Time(Duration),
}

fn budget(quick: u64) -> Budget {
    match std::env::var("PI_IMAGE_FUZZ_SECONDS") {
        Ok(v) => Budget::Time(Duration::from_secs(
            v.trim().parse().expect("PI_IMAGE_FUZZ_SECONDS is a number"),
        )),
        Err(_) => Budget::Inputs(quick),
    }
}

/// Save a failing input; its path.
fn save(name: &str, seed: u64, i: u64, data: &[u8]) -> PathBuf {
    let dir = repo().join("target/fuzz-failures");
    fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}-{seed}-{i}.bin"));
    fs::write(&p, data).unwrap();
    p
}

/// Run `f` in a thread, within [`BOUND`]; the panic message if it panicked.
fn bounded(f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(r.map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        }));
    });
    match rx.recv_timeout(BOUND) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(msg)) => Err(format!("panicked: {msg}")),
        Err(_) => Err(format!("still running after {BOUND:?}")),
    }
}

/// Fuzz `t` for the budget; prints and returns (inputs, seconds).
fn fuzz(t: &Target) -> (u64, f64) {
    let seed = seed();
    let mut rng = Rng(seed ^ t.name.len() as u64 ^ (t.name.as_bytes()[0] as u64) << 32);
    let budget = budget(t.quick);
    let start = Instant::now();
    let mut slowest = (Duration::ZERO, 0);
    let mut i = 0u64;
    loop {
        match budget {
            Budget::Inputs(n) if i >= n => break,
            Budget::Time(d) if start.elapsed() >= d => break,
            _ => {}
        }
        let s = &t.seeds[rng.below(t.seeds.len())];
        // Now and then the seed itself, so a target that fails on valid input says so.
        let data = if i == 0 {
            s.clone()
        } else {
            mutate(&mut rng, s, &t.dict, &t.region, t.text)
        };
        let (run, input) = (t.run, data.clone());
        let began = Instant::now();
        let result = bounded(move || run(&input));
        slowest = slowest.max((began.elapsed(), i));
        if let Err(why) = result {
            let p = save(t.name, seed, i, &data);
            panic!(
                "fuzz {}: input {i} of seed {seed} {why}; saved as {} (PI_IMAGE_FUZZ_SEED={seed} repeats it)",
                t.name,
                p.display()
            );
        }
        i += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {}: {i} inputs in {secs:.1} s, seed {seed}, no panic, none past {BOUND:?} (slowest: input {} in {:.0?})",
        t.name, slowest.1, slowest.0
    );
    (i, secs)
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

// ---- text formats ---------------------------------------------------------------------

fn bootfile(release: &str, name: &str) -> Vec<u8> {
    fs::read(
        repo()
            .join("tests/fixtures/bootfiles")
            .join(release)
            .join(name),
    )
    .unwrap()
}

const RELEASES: [&str; 3] = ["focal-20.04.5", "jammy-current", "noble-current"];

/// config.txt: the input split at `\x01` into config.txt and two included files, evaluated for
/// every model, then edited.
fn run_configtxt(data: &[u8]) {
    let t = text(data);
    let mut parts = t.splitn(3, '\x01');
    let mut files = BTreeMap::new();
    for name in ["config.txt", "a.txt", "b.txt"] {
        files.insert(name.to_string(), parts.next().unwrap_or("").to_string());
    }
    let read = |n: &str| files.get(n).cloned();
    for m in configtxt::Model::ALL {
        let e = configtxt::effective("config.txt", &read, m);
        let _ = e.to_string();
        let _ = e.values("dtoverlay");
    }
    let c = &files["config.txt"];
    let edited = configtxt::set(c, "pi4", "arm_freq", "1800");
    let _ = configtxt::remove(&edited, "all", "dtparam");
    let _ = configtxt::confine_key(c, "dtoverlay", &["pi4", "pi3"]);
}

fn configtxt_target() -> Target {
    let mut seeds: Vec<Vec<u8>> = RELEASES.iter().map(|r| bootfile(r, "config.txt")).collect();
    let mut with_includes = bootfile("focal-20.04.5", "config.txt");
    with_includes
        .extend_from_slice(b"\x01[pi4]\ninclude b.txt\narm_freq=2000\n\x01include a.txt\n");
    seeds.push(with_includes);
    Target {
        name: "config.txt",
        seeds,
        dict: vec![
            b"\n[pi4]\n",
            b"\n[all]\n",
            b"\n[pi3+]\n",
            b"[none]",
            b"[HDMI:0]",
            b"[0x1234]",
            b"include a.txt\n",
            b"include b.txt\n",
            b"include config.txt\n",
            b"=",
            b"\n",
            b"dtoverlay=",
            b"dtparam=",
            b"#",
            b"\x00",
            b"\r",
            b"\x01",
            b"\xff",
        ],
        region: Region::Anywhere,
        text: true,
        run: run_configtxt,
        quick: QUICK_INPUTS,
    }
}

fn run_cmdline(data: &[u8]) {
    let t = text(data);
    let _ = cmdline::get(&t, "root");
    let _ = cmdline::get(&t, "");
    let out = cmdline::apply(
        &t,
        &["quiet", "root=/dev/sda2", "a=b=c"],
        &["splash", "console"],
    );
    let _ = cmdline::apply(&out, &[], &["root"]);
}

fn cmdline_target() -> Target {
    Target {
        name: "cmdline.txt",
        seeds: RELEASES
            .iter()
            .map(|r| bootfile(r, "cmdline.txt"))
            .collect(),
        dict: vec![
            b" ",
            b"=",
            b"\"",
            b"\n",
            b"root=",
            b"console=",
            b"\t",
            b"\x00",
            b"--",
        ],
        region: Region::Anywhere,
        text: true,
        run: run_cmdline,
        quick: QUICK_INPUTS,
    }
}

fn run_sshkey(data: &[u8]) {
    let t = text(data);
    for line in t.lines() {
        let _ = sshkey::looks_like_key(line);
        let _ = sshkey::parse(line);
        let _ = sshkey::check_option(line);
    }
    let _ = sshkey::parse(&t);
}

fn sshkey_target() -> Target {
    let key = fs::read(repo().join("profiles/keys/demo.pub")).unwrap();
    let mut with_options = b"from=\"10.0.0.0/8\"\n".to_vec();
    with_options.extend_from_slice(&key);
    Target {
        name: "ssh-key",
        seeds: vec![
            key,
            with_options,
            b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 comment\n".to_vec(),
            b"ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= x\n".to_vec(),
            b"command=\"/bin/true\"\nno-pty\n".to_vec(),
        ],
        dict: vec![
            b"ssh-ed25519 ",
            b"ssh-rsa ",
            b"AAAA",
            b"=",
            b"\"",
            b"\n",
            b" ",
            b"\\",
            b"\x00",
            b"command=",
            b"from=",
            b"sk-ssh-ed25519@openssh.com ",
        ],
        region: Region::Anywhere,
        text: true,
        run: run_sshkey,
        quick: QUICK_INPUTS,
    }
}

fn run_profile(data: &[u8]) {
    let path = repo().join("profiles/fuzz.toml");
    let _ = Profile::parse(&path, &text(data));
}

fn profile_target() -> Target {
    Target {
        name: "profile",
        seeds: vec![
            fs::read(repo().join("profiles/cluster.toml")).unwrap(),
            b"[cluster]\nname = \"c\"\nbase = \"https://example.org/u.img.xz\"\n\
              base_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
              [defaults]\nssh_keys = [{ key = \"keys/demo.pub\", options = [\"no-pty\"] }]\n\
              cmdline = { set = [\"quiet\"] }\n\
              [[nodes]]\nname = \"pi1\"\naddress = \"10.0.0.1/24\"\ngateway = \"10.0.0.254\"\n\
              [nodes.eeprom]\nboot_order = \"0xf41\"\n"
                .to_vec(),
        ],
        dict: vec![
            b"\n[[nodes]]\nname = \"x\"\n",
            b"\n[defaults]\n",
            b"\"",
            b"'",
            b"=",
            b"[",
            b"]",
            b"{",
            b"}",
            b",",
            b"\n",
            b"\\u0000",
            b"\\n",
            b"99999999999999999999",
            b"-1",
            b"address = \"10.0.0.300/33\"",
            b"ssh_keys = [\"../../etc/passwd\"]",
            b"target = \"ssd\"",
            b"partition_table = \"gpt\"",
            b"user_data = \"#cloud-config\"",
        ],
        region: Region::Anywhere,
        text: true,
        run: run_profile,
        quick: QUICK_INPUTS,
    }
}

fn run_bmap(data: &[u8]) {
    if let Ok(map) = bmap::read(&text(data), "fuzz.bmap") {
        // What flash does with a map: walk its ranges within the image.
        let mut covered = 0u64;
        for r in &map.ranges {
            covered = covered.saturating_add(r.end.saturating_sub(r.start));
        }
        assert!(covered <= map.image_size, "ranges past the image: {map:?}");
    }
}

fn bmap_target() -> Target {
    let seed = br#"<?xml version="1.0" ?>
<bmap version="2.0">
    <ImageSize> 8388608 </ImageSize>
    <BlockSize> 4096 </BlockSize>
    <BlocksCount> 2048 </BlocksCount>
    <MappedBlocksCount> 5 </MappedBlocksCount>
    <ChecksumType> sha256 </ChecksumType>
    <BmapFileChecksum> 0000000000000000000000000000000000000000000000000000000000000000 </BmapFileChecksum>
    <BlockMap>
        <Range chksum="9f1dcbc35c350d6027f98be0f5c8b43b42ca52b7604459c0c42be3aa88913d47"> 0-1 </Range>
        <Range chksum="ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7"> 100 </Range>
        <Range> 2045-2047 </Range>
    </BlockMap>
</bmap>
"#;
    Target {
        name: ".bmap",
        seeds: vec![
            seed.to_vec(),
            String::from_utf8_lossy(seed).replace("2.0", "1.4").into(),
        ],
        dict: vec![
            b"<Range> 0-2047 </Range>",
            b"<Range> 5-3 </Range>",
            b"-",
            b"18446744073709551615",
            b"0",
            b"<",
            b">",
            b"</BlockMap>",
            b"<!--",
            b"&amp;",
            b"<BlockSize> 0 </BlockSize>",
            b"chksum=\"\"",
            b"sha1",
        ],
        region: Region::Anywhere,
        text: true,
        run: run_bmap,
        quick: QUICK_INPUTS,
    }
}

// ---- filesystems and partition tables ---------------------------------------------------

/// Files for the filesystem seeds: a small tree like a boot partition's or a root's.
fn seed_tree(dir: &Path) {
    fs::create_dir_all(dir.join("overlays")).unwrap();
    fs::create_dir_all(dir.join("etc/deep/er/still")).unwrap();
    fs::write(
        dir.join("config.txt"),
        bootfile("focal-20.04.5", "config.txt"),
    )
    .unwrap();
    fs::write(
        dir.join("cmdline.txt"),
        bootfile("focal-20.04.5", "cmdline.txt"),
    )
    .unwrap();
    fs::write(
        dir.join("overlays/a-long-overlay-name.dtbo"),
        vec![7u8; 70_000],
    )
    .unwrap();
    fs::write(
        dir.join("etc/os-release"),
        "NAME=\"Ubuntu\"\nVERSION_ID=\"20.04\"\n",
    )
    .unwrap();
    fs::write(dir.join("etc/deep/er/still/x"), "x").unwrap();
}

/// An 8 MiB FAT16 or a 36 MiB FAT32 image (`bits`) made by mkfs.fat and mtools (not by us).
fn fat_seed(tmp: &Path, bits: &str) -> Vec<u8> {
    let img = tmp.join(format!("fat{bits}.img"));
    let tree = tmp.join("fat-tree");
    let _ = fs::remove_dir_all(&tree);
    seed_tree(&tree);
    let kib = if bits == "16" { "8192" } else { "36864" };
    run_ok(Command::new("mkfs.fat").args([
        "-C",
        "-F",
        bits,
        "-s",
        "1",
        "-n",
        "SYSTEM-BOOT",
        s(&img),
        kib,
    ]));
    run_ok(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-i", s(&img)])
            .args(fs::read_dir(&tree).unwrap().map(|e| e.unwrap().path()))
            .arg("::"),
    );
    fs::read(img).unwrap()
}

/// A 4 MiB ext4 image made by mke2fs -d (not by us).
fn ext4_seed(tmp: &Path) -> Vec<u8> {
    let img = tmp.join("ext4.img");
    let tree = tmp.join("ext4-tree");
    seed_tree(&tree);
    std::os::unix::fs::symlink("os-release", tree.join("etc/link")).unwrap();
    run_ok(Command::new("mke2fs").args([
        "-q",
        "-t",
        "ext4",
        "-b",
        "1024",
        "-d",
        s(&tree),
        s(&img),
        "4M",
    ]));
    fs::read(img).unwrap()
}

/// Byte ranges of `data` worth mutating: its first 64 KiB and every 4 KiB block that is not
/// all zeros (metadata and small files; mutating zeros of free space finds little).
fn metadata_ranges(data: &[u8]) -> Region {
    let mut r = vec![(0, 65536.min(data.len()))];
    for (i, block) in data.chunks(4096).enumerate() {
        if i >= 16 && block.iter().any(|&b| b != 0) {
            r.push((i * 4096, i * 4096 + block.len()));
        }
    }
    Region::Ranges(r)
}

fn walk_fat(fs: &BootFs<Cursor<Vec<u8>>>, dir: &str, depth: usize, budget: &mut usize) {
    let Ok(entries) = fs.list_dir(dir) else {
        return;
    };
    for e in entries {
        if *budget == 0 || e.name == "." || e.name == ".." {
            continue;
        }
        *budget -= 1;
        let path = if dir.is_empty() {
            e.name.clone()
        } else {
            format!("{dir}/{}", e.name)
        };
        if e.is_dir {
            if depth < 8 {
                walk_fat(fs, &path, depth + 1, budget);
            }
        } else {
            let _ = fs.read_file(&path);
        }
    }
}

/// A FAT filesystem: mounted, walked, read, written to, unmounted; and its used ranges.
fn run_fat(data: &[u8]) {
    let _ = pi_image::image::bootfs::used_ranges(&mut Cursor::new(data), 0, data.len() as u64);
    let Ok(fs) = BootFs::open(
        Cursor::new(data.to_vec()),
        FatTimestamp::from_unix(1_600_000_000),
    ) else {
        return;
    };
    let _ = fs.volume_label();
    let _ = fs.free_bytes();
    let mut budget = 2000;
    walk_fat(&fs, "", 0, &mut budget);
    let _ = fs.write_bytes("config.txt", b"arm_64bit=1\n");
    let _ = fs.create_dir_all("overlays/new/dir");
    let _ = fs.write_bytes("overlays/new/dir/user-data", &[b'x'; 5000]);
    let _ = fs.remove("cmdline.txt");
    let _ = fs.unmount();
}

fn fat_target(tmp: &Path, bits: &str) -> Target {
    let seed = fat_seed(tmp, bits);
    Target {
        name: if bits == "16" { "fat16" } else { "fat32" },
        region: metadata_ranges(&seed),
        seeds: vec![seed],
        dict: vec![],
        text: false,
        run: run_fat,
        quick: if bits == "16" {
            QUICK_INPUTS / 3
        } else {
            QUICK_INPUTS / 30
        },
    }
}

/// A partition table: the input is the first 64 KiB of a disk image whose partitions (a FAT
/// and an ext4 filesystem) follow; read and probed.
fn run_partition(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    let tail = DISK_TAIL.get().unwrap();
    let mut all = data.to_vec();
    all.resize(65536, 0);
    all.extend_from_slice(&tail[..]);
    fs::write(&p, &all).unwrap();
    if let Ok(t) = PartitionTable::read(&p) {
        let _ = t.boot(&p);
        let _ = t.root(&p);
        for part in &t.partitions {
            let _ = part.end();
        }
    }
}

static DISK_TAIL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// An MBR and a GPT disk image, partitioned by sfdisk and sgdisk (not by us), holding the FAT
/// and ext4 seeds: their first 64 KiB are the seeds, the rest is the disk's tail.
fn partition_target(tmp: &Path, fat: &[u8], ext4: &[u8]) -> Target {
    let disk = tmp.join("disk.img");
    let mut data = vec![0u8; 1 << 20];
    data.extend_from_slice(fat);
    data.extend_from_slice(ext4);
    data.resize(data.len() + (1 << 20), 0);
    fs::write(&disk, &data).unwrap();
    let fat_sectors = fat.len() / 512;
    let layout = format!(
        "label: dos\nstart=2048, size={fat_sectors}, type=c, bootable\nstart={}, size={}, type=83\n",
        2048 + fat_sectors,
        ext4.len() / 512
    );
    common::run_with_stdin(
        Command::new("sfdisk").args(["-q", s(&disk)]),
        layout.as_bytes(),
    );
    let mbr = fs::read(&disk).unwrap();
    let gpt_disk = tmp.join("gpt.img");
    fs::write(&gpt_disk, &mbr).unwrap();
    run_ok(Command::new("sgdisk").args(["-g", s(&gpt_disk)]));
    let gpt = fs::read(&gpt_disk).unwrap();
    assert_eq!(mbr.len(), gpt.len());
    // The GPT's backup at the end is left as it is (the reader uses the primary).
    DISK_TAIL.get_or_init(|| mbr[65536..].to_vec());
    Target {
        name: "partition-table",
        seeds: vec![mbr[..65536].to_vec(), gpt[..65536].to_vec()],
        dict: vec![],
        region: Region::Ranges(vec![(0, 2048)]),
        text: false,
        run: run_partition,
        quick: QUICK_INPUTS / 3,
    }
}

#[test]
fn fuzz_text_formats() {
    let mut total = 0;
    for t in [
        configtxt_target(),
        cmdline_target(),
        sshkey_target(),
        profile_target(),
        bmap_target(),
    ] {
        total += fuzz(&t).0;
    }
    assert!(total > 0);
}

#[test]
fn fuzz_fat_and_partition_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let fat16 = fat_target(tmp.path(), "16");
    let ext4 = ext4_seed(tmp.path());
    let part = partition_target(tmp.path(), &fat16.seeds[0], &ext4);
    fuzz(&fat16);
    fuzz(&fat_target(tmp.path(), "32"));
    fuzz(&part);
}

// ---- ext4, in a child process ------------------------------------------------------------

/// An ext4 filesystem (through libext2fs): opened read-only and walked, then opened writable
/// and written to.
fn run_ext4_file(p: &Path) {
    let len = fs::metadata(p).unwrap().len();
    if let Ok(fs) = Ext4Fs::open(p, 0, len, false) {
        let _ = fs.block_size();
        let _ = fs.free_bytes();
        let _ = fs.used_byte_ranges();
        let _ = pi_image::image::ext4::os_release(&fs);
        let mut budget = 2000;
        walk_ext4(&fs, "/", 0, &mut budget);
    }
    if let Ok(mut fs) = Ext4Fs::open(p, 0, len, true) {
        let a = Attrs {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
        };
        let _ = fs.mkdir_p("/etc/new/dir", &Attrs { mode: 0o755, ..a });
        let _ = fs.write_file("/etc/new/dir/f", &mut &[b'y'; 3000][..], 3000, &a);
        let _ = fs.write_file("/etc/os-release", &mut &b"NAME=x\n"[..], 7, &a);
        let _ = fs.symlink("/etc/l2", "os-release", &a);
        let _ = fs.remove("/etc/deep/er/still/x");
        let _ = fs.close();
    }
}

fn walk_ext4(fs: &Ext4Fs, dir: &str, depth: usize, budget: &mut usize) {
    let Ok(entries) = fs.list_dir(dir) else {
        return;
    };
    for e in entries {
        if *budget == 0 || e.name == "." || e.name == ".." {
            continue;
        }
        *budget -= 1;
        let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
        match e.kind {
            EntryKind::Dir if depth < 8 => walk_ext4(fs, &path, depth + 1, budget),
            EntryKind::File => {
                let _ = fs.read_file(&path);
            }
            _ => {
                let _ = fs.exists(&path);
            }
        }
    }
}

/// The child's side: every file of `PI_IMAGE_FUZZ_EXT4_DIR` in name order, each announced on
/// stderr before it runs (so the parent knows which one crashed or hung).
#[test]
#[ignore = "run by fuzz_ext4 in a child process"]
fn fuzz_ext4_child() {
    let Ok(dir) = std::env::var("PI_IMAGE_FUZZ_EXT4_DIR") else {
        return;
    };
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        eprintln!("FUZZ-INPUT {}", f.display());
        let input = f.clone();
        if let Err(why) = bounded(move || run_ext4_file(&input)) {
            eprintln!("FUZZ-FAILED {}: {why}", f.display());
            std::process::exit(101);
        }
    }
    eprintln!("FUZZ-DONE");
}

#[test]
fn fuzz_ext4() {
    let tmp = tempfile::tempdir().unwrap();
    let seed_img = ext4_seed(tmp.path());
    let region = metadata_ranges(&seed_img);
    let seed = seed();
    let mut rng = Rng(seed ^ 0xe474);
    let budget = budget(QUICK_INPUTS / 3);
    let batch_len = 25u64;
    let start = Instant::now();
    let mut i = 0u64;
    let inputs = tmp.path().join("inputs");
    loop {
        match budget {
            Budget::Inputs(n) if i >= n => break,
            Budget::Time(d) if start.elapsed() >= d => break,
            _ => {}
        }
        let _ = fs::remove_dir_all(&inputs);
        fs::create_dir(&inputs).unwrap();
        for j in 0..batch_len {
            let data = if i + j == 0 {
                seed_img.clone()
            } else {
                mutate(&mut rng, &seed_img, &[], &region, false)
            };
            fs::write(inputs.join(format!("{:08}", i + j)), data).unwrap();
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "fuzz_ext4_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PI_IMAGE_FUZZ_EXT4_DIR", &inputs)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let reader =
            std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        // The child bounds each input itself; this is for a child that cannot even say so.
        let deadline = Instant::now() + BOUND * batch_len as u32;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let log = reader.join().unwrap();
        if status.is_none_or(|st| !st.success()) || !log.contains("FUZZ-DONE") {
            let last = log
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("FUZZ-INPUT "))
                .unwrap_or("?");
            let data = fs::read(last).unwrap_or_default();
            let p = save("ext4", seed, i, &data);
            panic!(
                "fuzz ext4: seed {seed}: {} on an input saved as {} (PI_IMAGE_FUZZ_SEED={seed} repeats it):\n{}",
                match status {
                    None => format!("still running after {:?}", BOUND * batch_len as u32),
                    Some(st) => format!("the child ended with {st}"),
                },
                p.display(),
                log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
            );
        }
        i += batch_len;
    }
    eprintln!(
        "fuzz ext4: {i} inputs in {:.1} s, seed {seed}, no panic or crash, none past {BOUND:?}",
        start.elapsed().as_secs_f64()
    );
}
