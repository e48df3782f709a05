//! `partition_table = "gpt"`: nodes built from the bundled base, judged by sgdisk, sfdisk,
//! fsck.fat, e2fsck and mtools.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{extract, fixture_raw, pi_image, pi_image_ok, repo, run};

const SECTOR: u64 = 512;

fn build(dir: &Path, out: &str) -> PathBuf {
    let profile = dir.join("p.toml");
    fs::write(
        &profile,
        format!(
            r#"[cluster]
name = "testcluster"
base = "{}"

[defaults]
target = "ssd"
partition_table = "gpt"

[[nodes]]
name = "pi3"

[[nodes]]
name = "pi4"

[[nodes]]
name = "pi5"
partition_table = "mbr"
"#,
            fixture_raw().display()
        ),
    )
    .unwrap();
    let out = dir.join(out);
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
    out
}

fn dump(img: &Path) -> String {
    let (ok, out, err) = run("sfdisk", &["--dump", img.to_str().unwrap()]);
    assert!(ok, "sfdisk --dump: {err}");
    out
}

/// (start, size) of each partition line of `sfdisk --dump`.
fn extents(dump: &str) -> Vec<(u64, u64)> {
    let field = |l: &str, key: &str| -> u64 {
        let rest = l.split(key).nth(1).unwrap();
        rest.split(',').next().unwrap().trim().parse().unwrap()
    };
    dump.lines()
        .filter(|l| l.contains("start="))
        .map(|l| (field(l, "start="), field(l, "size=")))
        .collect()
}

fn part_field<'a>(dump: &'a str, n: usize, key: &str) -> &'a str {
    let line = dump
        .lines()
        .filter(|l| l.contains("start="))
        .nth(n)
        .unwrap();
    line.split(key)
        .nth(1)
        .unwrap()
        .split([',', '\n'])
        .next()
        .unwrap()
        .trim()
}

#[test]
fn gpt_nodes_keep_the_offsets_and_pass_sgdisk() {
    let dir = tempfile::tempdir().unwrap();
    let out = build(dir.path(), "out");
    let base = dump(&fixture_raw());
    let base_len = fs::metadata(fixture_raw()).unwrap().len();
    let mut disk_ids = Vec::new();
    for node in ["pi3", "pi4"] {
        let img = out.join(format!("{node}.img"));
        let (ok, report, err) = run("sgdisk", &["-v", img.to_str().unwrap()]);
        assert!(
            ok && report.contains("No problems found"),
            "{node}: sgdisk -v:\n{report}{err}"
        );
        let d = dump(&img);
        assert!(d.contains("label: gpt"), "{node}: {d}");
        assert_eq!(extents(&d), extents(&base), "{node}: partitions moved");
        assert_eq!(
            part_field(&d, 0, "type="),
            "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
        );
        assert_eq!(
            part_field(&d, 1, "type="),
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        );
        assert_eq!(part_field(&d, 0, "name="), "\"system-boot\"");
        // The backup table needs the last 33 sectors: the image grows by exactly that.
        assert_eq!(fs::metadata(&img).unwrap().len(), base_len + 33 * SECTOR);

        let (boot_start, boot_len) = extents(&d)[0];
        let (root_start, root_len) = extents(&d)[1];
        let boot = dir.path().join(format!("{node}.vfat"));
        extract(&img, boot_start * SECTOR, boot_len * SECTOR, &boot);
        let (ok, o, e) = run("fsck.fat", &["-n", boot.to_str().unwrap()]);
        assert!(ok, "{node}: fsck.fat: {o}{e}");
        let root = dir.path().join(format!("{node}.ext4"));
        extract(&img, root_start * SECTOR, root_len * SECTOR, &root);
        let (ok, o, e) = run("e2fsck", &["-fn", root.to_str().unwrap()]);
        assert!(ok, "{node}: e2fsck: {o}{e}");

        let (ok, cmdline, err) = run("mtype", &["-i", boot.to_str().unwrap(), "::cmdline.txt"]);
        assert!(ok, "{err}");
        let root_uuid = part_field(&d, 1, "uuid=").to_ascii_lowercase();
        assert!(
            cmdline.contains(&format!(" root=PARTUUID={root_uuid} ")),
            "{node}: {cmdline:?} vs {root_uuid}"
        );
        assert_eq!(cmdline.matches("root=").count(), 1);
        disk_ids.push(
            d.lines()
                .find(|l| l.starts_with("label-id:"))
                .unwrap()
                .to_string(),
        );
    }
    assert_ne!(disk_ids[0], disk_ids[1], "GPT disk GUIDs collide");
    let mbr = dump(&out.join("pi5.img"));
    assert!(mbr.contains("label: dos"), "pi5 is not MBR: {mbr}");

    let again = build(dir.path(), "again");
    for node in ["pi3", "pi4", "pi5"] {
        let name = format!("{node}.img");
        assert!(
            fs::read(out.join(&name)).unwrap() == fs::read(again.join(&name)).unwrap(),
            "{node}: rebuild differs"
        );
    }
}

#[test]
fn an_unknown_partition_table_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.toml");
    fs::write(
        &profile,
        "[cluster]\nname = \"c\"\nbase = \"x.img\"\n\n[[nodes]]\nname = \"pi1\"\npartition_table = \"gtp\"\n",
    )
    .unwrap();
    let res = pi_image(&repo(), &["--profile", profile.to_str().unwrap(), "nodes"]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        err.contains("p.toml:7:19")
            && err.contains("unknown variant `gtp`, expected `mbr` or `gpt`"),
        "{err}"
    );
}
