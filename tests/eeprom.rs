//! The EEPROM image editor on a synthetic `pieeprom.bin` built here, byte by byte, in the
//! documented section format (not with pi-image's own code): code sections, a padding section,
//! a `pubkey.bin` file section and `bootconf.txt` last, in its own 4 KiB sector; the reserved
//! last 4 KiB holds a pattern so any write into it shows. Then `pi-image eeprom` on it, judged
//! by sfdisk, fsck.fat, mtools and sha256sum.

mod common;

use std::fs;
use std::path::Path;

use common::{extract, pi_image, pi_image_ok, repo, run};
use pi_image::bootconf::eeprom::{self, EepromError, FILE_MAGIC, PAD_MAGIC};

const SIZE: usize = 512 * 1024;
const PUBKEY_AT: usize = 0x76000;
const BOOTCONF_AT: usize = 0x77000;
const RESERVED_AT: usize = SIZE - 4096;
const STOCK: &[u8] = b"[all]\nBOOT_UART=0\nWAKE_ON_GPIO=1\nPOWER_OFF_ON_HALT=0\n\n";

fn header(img: &mut [u8], at: usize, magic: u32, length: usize) {
    img[at..at + 4].copy_from_slice(&magic.to_be_bytes());
    img[at + 4..at + 8].copy_from_slice(&(length as u32).to_be_bytes());
}

/// A file section: header, 12-byte NUL-padded name, 4 zero bytes, content; returns its end.
fn file_section(img: &mut [u8], at: usize, name: &str, content: &[u8]) -> usize {
    header(img, at, FILE_MAGIC, 12 + 4 + content.len());
    img[at + 8..at + 20].fill(0);
    img[at + 8..at + 8 + name.len()].copy_from_slice(name.as_bytes());
    img[at + 20..at + 24].fill(0);
    img[at + 24..at + 24 + content.len()].copy_from_slice(content);
    at + 24 + content.len()
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// The synthetic image with `bootconf.txt` at `bootconf_at`.
fn synthetic(bootconf_at: usize) -> Vec<u8> {
    let mut img = vec![0xffu8; SIZE];
    // Code sections with pseudo-random content (and a magic variant the mask accepts).
    let mut x = 0x1234_5678u32;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    header(&mut img, 0, 0x55aa_f00f, 5001);
    let code = noise(5001);
    img[8..8 + 5001].copy_from_slice(&code);
    let second = align8(8 + 5001);
    header(&mut img, second, 0x55aa_f20f, 777);
    let code2 = noise(777);
    img[second + 8..second + 8 + 777].copy_from_slice(&code2);
    let pad = align8(second + 8 + 777);
    header(&mut img, pad, PAD_MAGIC, PUBKEY_AT - pad - 8);
    let end = file_section(&mut img, PUBKEY_AT, "pubkey.bin", &noise(264));
    let pad2 = align8(end);
    header(&mut img, pad2, PAD_MAGIC, bootconf_at - pad2 - 8);
    file_section(&mut img, bootconf_at, "bootconf.txt", STOCK);
    for (i, b) in img[RESERVED_AT..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    img
}

fn be32(img: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(img[at..at + 4].try_into().unwrap())
}

#[test]
fn sections_are_walked_as_documented() {
    let img = synthetic(BOOTCONF_AT);
    let s = eeprom::sections(&img).unwrap();
    let offsets: Vec<usize> = s.iter().map(|s| s.offset).collect();
    assert_eq!(
        offsets,
        vec![0, 5016, 5808, PUBKEY_AT, 0x76120, BOOTCONF_AT]
    );
    assert_eq!(s[3].name.as_deref(), Some("pubkey.bin"));
    assert_eq!(s[5].name.as_deref(), Some("bootconf.txt"));
    assert_eq!(s[5].length as usize, 16 + STOCK.len());
    assert_eq!(eeprom::read_file(&img, "bootconf.txt").unwrap(), STOCK);
}

#[test]
fn new_config_lands_at_the_section_with_its_length_and_padding() {
    let img = synthetic(BOOTCONF_AT);
    let conf = eeprom::bootconf(
        std::str::from_utf8(STOCK).unwrap(),
        &[
            ("BOOT_ORDER".into(), "0xf14".into()),
            ("POWER_OFF_ON_HALT".into(), "1".into()),
        ],
    );
    assert_eq!(
        conf,
        "[all]\nBOOT_UART=0\nWAKE_ON_GPIO=1\nPOWER_OFF_ON_HALT=1\nBOOT_ORDER=0xf14\n\n"
    );
    let new = eeprom::replace_file(&img, "bootconf.txt", conf.as_bytes()).unwrap();
    assert_eq!(new.len(), SIZE);
    // Header: magic, length = 12 + 4 + content, name, 4 zero bytes, then the content.
    assert_eq!(be32(&new, BOOTCONF_AT), 0x55aa_f11f);
    assert_eq!(be32(&new, BOOTCONF_AT + 4) as usize, 16 + conf.len());
    assert_eq!(&new[BOOTCONF_AT + 8..BOOTCONF_AT + 20], b"bootconf.txt");
    assert_eq!(&new[BOOTCONF_AT + 20..BOOTCONF_AT + 24], &[0, 0, 0, 0]);
    let end = BOOTCONF_AT + 24 + conf.len();
    assert_eq!(&new[BOOTCONF_AT + 24..end], conf.as_bytes());
    // The last section: plain 0xff up to the reserved sector, no padding section.
    assert!(new[end..RESERVED_AT].iter().all(|&b| b == 0xff));
    // Untouched: everything before the section and the reserved last 4 KiB.
    assert_eq!(new[..BOOTCONF_AT], img[..BOOTCONF_AT]);
    assert_eq!(new[RESERVED_AT..], img[RESERVED_AT..]);
    // Read back through the section walk.
    assert_eq!(
        eeprom::read_file(&new, "bootconf.txt").unwrap(),
        conf.as_bytes()
    );
    assert_eq!(eeprom::sections(&new).unwrap().len(), 6);
}

#[test]
fn round_trip_is_byte_identical() {
    let img = synthetic(BOOTCONF_AT);
    let same = eeprom::replace_file(&img, "bootconf.txt", STOCK).unwrap();
    assert!(
        same == img,
        "writing the same config back changed the image"
    );
    let longer = eeprom::replace_file(&img, "bootconf.txt", &[b'x'; 3000]).unwrap();
    let back = eeprom::replace_file(&longer, "bootconf.txt", STOCK).unwrap();
    assert!(
        back == img,
        "a longer config then the old one again did not give the original"
    );
}

#[test]
fn a_shorter_non_last_file_gets_a_padding_section() {
    let img = synthetic(BOOTCONF_AT);
    let new = eeprom::replace_file(&img, "pubkey.bin", b"short").unwrap();
    let pad = PUBKEY_AT + 24 + 8; // content end aligned to 8
    assert_eq!(&new[PUBKEY_AT + 29..pad], &[0xff; 3]);
    assert_eq!(be32(&new, pad), PAD_MAGIC);
    assert_eq!(be32(&new, pad + 4) as usize, BOOTCONF_AT - pad - 8);
    assert!(new[pad + 8..BOOTCONF_AT].iter().all(|&b| b == 0xff));
    assert_eq!(new[BOOTCONF_AT..], img[BOOTCONF_AT..]);
    assert_eq!(eeprom::read_file(&new, "bootconf.txt").unwrap(), STOCK);
}

#[test]
fn too_long_configs_are_refused() {
    // 32 KiB before the reserved sector: rpi-eeprom-config's limit of one sector applies.
    let img = synthetic(BOOTCONF_AT);
    assert!(eeprom::replace_file(&img, "bootconf.txt", &[b'x'; 4076]).is_ok());
    let e = eeprom::replace_file(&img, "bootconf.txt", &[b'x'; 4077]).unwrap_err();
    assert!(matches!(e, EepromError::TooLarge { len: 4077, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("bootconf.txt of 4077 bytes does not fit"),
        "{e}"
    );
    // In the sector just before the reserved one, the sector bounds it.
    let tight = synthetic(RESERVED_AT - 4096);
    let fits = 4096 - 24;
    let ok = eeprom::replace_file(&tight, "bootconf.txt", &vec![b'y'; fits]).unwrap();
    assert_eq!(ok[RESERVED_AT..], tight[RESERVED_AT..]);
    let e = eeprom::replace_file(&tight, "bootconf.txt", &vec![b'y'; fits + 1]).unwrap_err();
    assert_eq!(
        e,
        EepromError::TooLarge {
            name: "bootconf.txt".into(),
            len: fits + 1,
            max: fits
        }
    );
}

#[test]
fn broken_images_are_refused() {
    let img = synthetic(BOOTCONF_AT);
    assert!(matches!(
        eeprom::sections(&img[..1000]),
        Err(EepromError::BadSize { len: 1000 })
    ));
    let mut bad = img.clone();
    bad[5016..5020].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    let e = eeprom::replace_file(&bad, "bootconf.txt", b"x").unwrap_err();
    assert!(
        e.to_string().contains("no section magic at offset 0x1398"),
        "{e}"
    );
    let mut none = img.clone();
    none[BOOTCONF_AT..BOOTCONF_AT + 4].fill(0xff);
    let e = eeprom::replace_file(&none, "bootconf.txt", b"x").unwrap_err();
    assert!(e.to_string().contains("no bootconf.txt section"), "{e}");
    let mut long = img;
    long[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        eeprom::sections(&long),
        Err(EepromError::SectionPastEnd { offset: 0, .. })
    ));
}

const CARD_PART_START: u64 = 2048 * 512;
const CARD_PART_LEN: u64 = 131_072 * 512;

/// Write the synthetic firmware and a recovery.bin into `dir`.
fn firmware_files(dir: &Path) -> (String, String) {
    let fw = dir.join("pieeprom-2022-04-26.bin");
    fs::write(&fw, synthetic(BOOTCONF_AT)).unwrap();
    let rec = dir.join("recovery.bin");
    fs::write(&rec, b"not really recovery code ".repeat(4000)).unwrap();
    (
        fw.to_str().unwrap().to_string(),
        rec.to_str().unwrap().to_string(),
    )
}

fn card(dir: &Path, name: &str, fw: &str, rec: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    let res = pi_image_ok(
        &repo(),
        &[
            "eeprom",
            "--boot-order",
            "0xf14",
            "--set",
            "POWER_OFF_ON_HALT=1",
            "--firmware",
            fw,
            "--recovery",
            rec,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        stdout.contains("BOOT_ORDER=0xf14 (USB, then SD, then restart)"),
        "{stdout}"
    );
    out
}

fn mtools(cmd: &str, part: &Path, args: &[&str]) -> String {
    let mut all = vec!["-i", part.to_str().unwrap()];
    all.extend_from_slice(args);
    let (ok, out, err) = run(cmd, &all);
    assert!(ok, "{cmd} {args:?}: {err}");
    out
}

#[test]
fn eeprom_card_holds_exactly_the_three_update_files() {
    let dir = tempfile::tempdir().unwrap();
    let (fw, rec) = firmware_files(dir.path());
    let img = card(dir.path(), "eeprom.img", &fw, &rec);

    let (ok, dump, err) = run("sfdisk", &["--dump", img.to_str().unwrap()]);
    assert!(ok, "sfdisk: {err}");
    assert!(dump.contains("label: dos"), "{dump}");
    let parts: Vec<&str> = dump.lines().filter(|l| l.contains("start=")).collect();
    assert_eq!(parts.len(), 1, "{dump}");
    assert!(
        parts[0].contains("start=        2048, size=      131072, type=c"),
        "{dump}"
    );
    assert_eq!(
        fs::metadata(&img).unwrap().len(),
        CARD_PART_START + CARD_PART_LEN
    );

    let part = dir.path().join("part.vfat");
    extract(&img, CARD_PART_START, CARD_PART_LEN, &part);
    let (ok, out, err) = run("fsck.fat", &["-n", part.to_str().unwrap()]);
    assert!(ok, "fsck.fat -n: {out}{err}");
    assert_eq!(
        &fs::read(&part).unwrap()[0x52..0x5a],
        b"FAT32   ",
        "not FAT32"
    );
    let listing = mtools("mdir", &part, &["-b", "::"]);
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort();
    assert_eq!(
        names,
        vec!["::/pieeprom.sig", "::/pieeprom.upd", "::/recovery.bin"],
        "{listing}"
    );

    let upd = dir.path().join("pieeprom.upd");
    let got_rec = dir.path().join("recovery.got");
    mtools(
        "mcopy",
        &part,
        &["-n", "::pieeprom.upd", upd.to_str().unwrap()],
    );
    mtools(
        "mcopy",
        &part,
        &["-n", "::recovery.bin", got_rec.to_str().unwrap()],
    );
    assert!(
        fs::read(&got_rec).unwrap() == fs::read(&rec).unwrap(),
        "recovery.bin changed"
    );
    let (_, sum, _) = run("sha256sum", &[upd.to_str().unwrap()]);
    let sig = mtools("mtype", &part, &["::pieeprom.sig"]);
    assert_eq!(
        sig,
        format!(
            "{}\nts: 1662033600\n",
            sum.split_whitespace().next().unwrap()
        )
    );

    // The new config, at the bootconf.txt section, by the documented layout.
    let upd = fs::read(&upd).unwrap();
    let original = synthetic(BOOTCONF_AT);
    let conf: &[u8] =
        b"[all]\nBOOT_UART=0\nWAKE_ON_GPIO=1\nPOWER_OFF_ON_HALT=1\nBOOT_ORDER=0xf14\n\n";
    assert_eq!(be32(&upd, BOOTCONF_AT + 4) as usize, 16 + conf.len());
    assert_eq!(&upd[BOOTCONF_AT + 24..BOOTCONF_AT + 24 + conf.len()], conf);
    assert_eq!(upd[..BOOTCONF_AT], original[..BOOTCONF_AT]);
    assert_eq!(upd[RESERVED_AT..], original[RESERVED_AT..]);

    let again = card(dir.path(), "again.img", &fw, &rec);
    assert!(
        fs::read(&again).unwrap() == fs::read(&img).unwrap(),
        "rebuild differs"
    );
}

#[test]
fn eeprom_card_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let (fw, rec) = firmware_files(dir.path());
    let out = dir.path().join("e.img");
    let o = out.to_str().unwrap();
    let big_conf = format!("HUGE={}", "x".repeat(5000));
    for (args, says) in [
        (
            vec!["--boot-order", "0xf14", "--out", o],
            "downloading pieeprom-*.bin is not available yet",
        ),
        (
            vec!["--boot-order", "0xf14", "--firmware", &fw, "--out", o],
            "no recovery.bin given",
        ),
        (
            vec![
                "--boot-order",
                "0xf19",
                "--firmware",
                &fw,
                "--recovery",
                &rec,
                "--out",
                o,
            ],
            "'9'",
        ),
        (
            vec![
                "--boot-order",
                "f14",
                "--firmware",
                &fw,
                "--recovery",
                &rec,
                "--out",
                o,
            ],
            "0x",
        ),
        (
            vec![
                "--boot-order",
                "0xf14",
                "--set",
                "BOOT_UART",
                "--firmware",
                &fw,
                "--recovery",
                &rec,
                "--out",
                o,
            ],
            "KEY=VALUE",
        ),
        (
            vec![
                "--boot-order",
                "0xf14",
                "--set",
                &big_conf,
                "--firmware",
                &fw,
                "--recovery",
                &rec,
                "--out",
                o,
            ],
            "does not fit",
        ),
        (
            vec![
                "--boot-order",
                "0xf14",
                "--firmware",
                &rec,
                "--recovery",
                &rec,
                "--out",
                o,
            ],
            "not the size of a bootloader EEPROM image",
        ),
    ] {
        let mut all = vec!["eeprom"];
        all.extend(args.iter().copied());
        let res = pi_image(&repo(), &all);
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(
            !res.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "{args:?} left output"
        );
    }
}

const NODE_BOOT_START: u64 = 2048 * 512;
const NODE_BOOT_LEN: u64 = 524_288 * 512;

/// A profile whose `[defaults]` carry an EEPROM update that one node overrides.
fn eeprom_profile(dir: &Path, pi2_boot_order: &str) -> std::path::PathBuf {
    let fw = dir.join("fw");
    fs::create_dir_all(&fw).unwrap();
    firmware_files(&fw);
    let profile = dir.join("p.toml");
    fs::write(
        &profile,
        format!(
            r#"[cluster]
name = "testcluster"
base = "{}"

[defaults]
eeprom = {{ boot_order = "0xf14", firmware = "fw/pieeprom-2022-04-26.bin", recovery = "fw/recovery.bin", settings = {{ POWER_OFF_ON_HALT = 1, BOOT_UART = true }} }}

[[nodes]]
name = "pi1"

[[nodes]]
name = "pi2"
eeprom = {{ boot_order = "{pi2_boot_order}", firmware = "fw/pieeprom-2022-04-26.bin", recovery = "fw/recovery.bin" }}
"#,
            common::fixture_raw().display()
        ),
    )
    .unwrap();
    profile
}

#[test]
fn build_puts_the_update_on_each_nodes_boot_partition() {
    let dir = tempfile::tempdir().unwrap();
    let profile = eeprom_profile(dir.path(), "0xf41");
    let out = dir.path().join("out");
    pi_image_ok(
        &repo(),
        &[
            "--profile",
            profile.to_str().unwrap(),
            "build",
            "--all",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let recovery = fs::read(dir.path().join("fw/recovery.bin")).unwrap();
    for (node, conf) in [
        (
            "pi1",
            "[all]\nBOOT_UART=1\nWAKE_ON_GPIO=1\nPOWER_OFF_ON_HALT=1\nBOOT_ORDER=0xf14\n\n",
        ),
        (
            "pi2",
            "[all]\nBOOT_UART=0\nWAKE_ON_GPIO=1\nPOWER_OFF_ON_HALT=0\nBOOT_ORDER=0xf41\n\n",
        ),
    ] {
        let part = dir.path().join(format!("{node}.vfat"));
        extract(
            &out.join(format!("{node}.img")),
            NODE_BOOT_START,
            NODE_BOOT_LEN,
            &part,
        );
        let (ok, o, e) = run("fsck.fat", &["-n", part.to_str().unwrap()]);
        assert!(ok, "{node}: fsck.fat -n: {o}{e}");
        let listing = mtools("mdir", &part, &["-b", "::"]);
        for f in [
            "::/recovery.bin",
            "::/pieeprom.upd",
            "::/pieeprom.sig",
            "::/cmdline.txt",
        ] {
            assert!(
                listing.lines().any(|l| l == f),
                "{node}: no {f} in {listing}"
            );
        }
        let upd = dir.path().join(format!("{node}.upd"));
        let rec = dir.path().join(format!("{node}.rec"));
        mtools(
            "mcopy",
            &part,
            &["-n", "::pieeprom.upd", upd.to_str().unwrap()],
        );
        mtools(
            "mcopy",
            &part,
            &["-n", "::recovery.bin", rec.to_str().unwrap()],
        );
        assert!(
            fs::read(&rec).unwrap() == recovery,
            "{node}: recovery.bin differs"
        );
        let (_, sum, _) = run("sha256sum", &[upd.to_str().unwrap()]);
        let sig = mtools("mtype", &part, &["::pieeprom.sig"]);
        assert_eq!(
            sig,
            format!(
                "{}\nts: 1662033600\n",
                sum.split_whitespace().next().unwrap()
            ),
            "{node}"
        );
        let upd = fs::read(&upd).unwrap();
        assert_eq!(
            be32(&upd, BOOTCONF_AT + 4) as usize,
            16 + conf.len(),
            "{node}"
        );
        assert_eq!(
            String::from_utf8_lossy(&upd[BOOTCONF_AT + 24..BOOTCONF_AT + 24 + conf.len()]),
            conf,
            "{node}"
        );
    }
}

#[test]
fn a_bad_eeprom_table_fails_the_profile_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let profile = eeprom_profile(dir.path(), "0xf19");
    let out = dir.path().join("out");
    let res = pi_image(
        &repo(),
        &[
            "--profile",
            profile.to_str().unwrap(),
            "build",
            "--all",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        err.contains("p.toml:13:25: nodes[1].eeprom.boot_order: BOOT_ORDER '0xf19': '9'"),
        "{err}"
    );
    assert!(!out.exists(), "output written");
    let text = fs::read_to_string(&profile)
        .unwrap()
        .replace("0xf19", "0xf41");
    for (from, to, says) in [
        (
            "POWER_OFF_ON_HALT = 1",
            "power = 1",
            "defaults.eeprom.settings.power",
        ),
        (
            "recovery = \"fw/recovery.bin\" }\n",
            "recovery = \"fw/nope.bin\" }\n",
            "nodes[1].eeprom.recovery",
        ),
        (
            "boot_order = \"0xf41\"",
            "boot_order = \"0xf14\", bootorder = 1",
            "unknown field `bootorder`",
        ),
    ] {
        fs::write(&profile, text.replace(from, to)).unwrap();
        let res = pi_image(&repo(), &["--profile", profile.to_str().unwrap(), "nodes"]);
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success() && err.contains(says), "{to}: {err}");
    }
}
