//! `pi-image flash --to-file` and `pi-image verify`: every format, with and without a .bmap,
//! onto new files and onto garbage, several targets at once, `--node`; judged by cmp,
//! fsck.fat, e2fsck, sha256sum and Python's XML parser.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    bmap_ranges, cmp_ranges, demo_images, fixture_raw, fixture_xz, fsck_partitions, garbage_file,
    pi_image, pi_image_ok, repo, run, run_ok, s, sha256,
};

/// `img` compressed with `tool` (xz, gzip or zstd) into `dir`.
fn compressed(img: &Path, dir: &Path, tool: &str, ext: &str) -> PathBuf {
    let out = dir.join(format!(
        "{}.{ext}",
        img.file_name().unwrap().to_str().unwrap()
    ));
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "{tool} -c -1 '{}' > '{}'",
        img.display(),
        out.display()
    )));
    out
}

#[test]
fn raw_and_compressed_images_land_byte_identical_in_a_new_file() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let mut inputs = vec![img.clone()];
    for (tool, ext) in [("xz", "xz"), ("gzip", "gz"), ("zstd", "zst")] {
        inputs.push(compressed(&img, tmp.path(), tool, ext));
    }
    for input in inputs {
        let target = tmp.path().join("new.img");
        let out = pi_image_ok(&repo(), &["flash", s(&input), s(&target), "--to-file"]);
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains(" ok "), "{summary}");
        run_ok(Command::new("cmp").args([&img, &target]));
        pi_image_ok(&repo(), &["verify", s(&input), s(&target)]);
        fs::remove_file(&target).unwrap();
    }
}

#[test]
fn over_a_longer_file_the_result_is_exactly_the_image_and_the_filesystems_are_clean() {
    // --to-file writes a new file (renamed over the old one when complete), so that `cmp` and
    // `verify` agree on the whole file; what a disk keeps outside the map is tested on loop
    // devices (tests/flash_loop.rs).
    let tmp = tempfile::tempdir().unwrap();
    // The demo image's own map (made by pi-image from the filesystems), and an .xz image
    // with that .bmap beside it (x.img.bmap next to x.img.xz).
    let img = tmp.path().join("pi3.img");
    fs::copy(demo_images().join("pi3.img"), &img).unwrap();
    let bmap = tmp.path().join("ref.bmap");
    pi_image_ok(&repo(), &["bmap", s(&img), "-o", s(&bmap)]);
    let xz = compressed(&img, tmp.path(), "xz", "xz");
    fs::copy(&bmap, tmp.path().join("pi3.img.bmap")).unwrap();
    let size = fs::metadata(&img).unwrap().len();
    for input in [&img, &xz] {
        let target = tmp.path().join("card.img");
        garbage_file(&target, size + (8 << 20));
        pi_image_ok(&repo(), &["flash", s(input), s(&target), "--to-file"]);
        run_ok(Command::new("cmp").args([&img, &target]));
        fsck_partitions(&target, tmp.path());
        pi_image_ok(&repo(), &["verify", s(&img), s(&target)]);
    }
}

#[test]
fn a_compressed_image_without_bmap_onto_garbage_is_written_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("card.img");
    let size = fs::metadata(fixture_raw()).unwrap().len();
    garbage_file(&target, size);
    pi_image_ok(
        &repo(),
        &["flash", s(&fixture_xz()), s(&target), "--to-file"],
    );
    run_ok(Command::new("cmp").args([fixture_raw(), target.clone()]));
}

#[test]
fn verify_names_the_first_flipped_byte_of_raw_and_compressed_images() {
    let tmp = tempfile::tempdir().unwrap();
    // A GPT image: its mapped ranges reach its last byte (the backup GPT).
    let img = demo_images().join("gpt/pi3.img");
    let xz = compressed(&img, tmp.path(), "xz", "xz");
    let target = tmp.path().join("t.img");
    pi_image_ok(
        &repo(),
        &["flash", s(&img), s(&target), "--to-file", "--no-verify"],
    );
    let size = fs::metadata(&img).unwrap().len();
    let bmap = tmp.path().join("pi3.bmap");
    pi_image_ok(&repo(), &["bmap", s(&img), "-o", s(&bmap)]);
    let ranges = bmap_ranges(&bmap);
    let root = common::sfdisk_partitions(&img)[1].0;
    // The protective MBR (written last by flash), the root filesystem's superblock, the last
    // mapped byte before the backup GPT, the image's last byte (backup GPT header's sector).
    let flips = [
        100,
        root + 1024 + 100,
        ranges[ranges.len() - 2].1 - 1,
        size - 1,
    ];
    for input in [&img, &xz] {
        pi_image_ok(&repo(), &["verify", s(input), s(&target)]);
    }
    for offset in flips {
        let flip = |t: &Path| {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(t)
                .unwrap();
            let mut b = [0u8];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, offset).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &[b[0] ^ 0x5a], offset).unwrap();
        };
        flip(&target);
        for input in [&img, &xz] {
            let out = pi_image(&repo(), &["verify", s(input), s(&target)]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success());
            assert!(
                err.contains(&format!(
                    "verification failed: first bad byte at offset {offset} "
                )),
                "{}: {err}",
                input.display()
            );
        }
        flip(&target);
    }
}

#[test]
fn several_targets_at_once_and_a_failing_one_does_not_stop_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi3.img");
    let a = tmp.path().join("a.img");
    let b = tmp.path().join("b.img");
    let bad = tmp.path().join("no-such-dir/c.img");
    let out = pi_image(
        &repo(),
        &["flash", s(&img), s(&a), s(&bad), s(&b), "--to-file"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("no-such-dir") && stderr.contains("1 of 3 targets failed"),
        "{stderr}"
    );
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("a.img").contains(" ok "), "{stdout}");
    assert!(line("b.img").contains(" ok "), "{stdout}");
    assert!(line("c.img").contains("FAILED"), "{stdout}");
    for t in [&a, &b] {
        run_ok(Command::new("cmp").args([&img, t]));
    }
}

#[test]
fn flash_node_writes_the_same_bytes_as_build() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("pi3-card.img");
    let out = tmp.path().join("out");
    pi_image_ok(
        &repo(),
        &[
            "--cache-dir",
            s(&tmp.path().join("cache")),
            "flash",
            "--node",
            "pi3",
            s(&target),
            "--base",
            s(&fixture_xz()),
            "--out",
            s(&out),
            "--to-file",
        ],
    );
    run_ok(Command::new("cmp").args([&demo_images().join("pi3.img"), &target]));
    // The image was built where `build` puts it, and stays there.
    run_ok(Command::new("cmp").args([&demo_images().join("pi3.img"), &out.join("pi3.img")]));
}

#[test]
fn refusals_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let target = tmp.path().join("plain-file.img");
    garbage_file(&target, 1 << 20);
    let before = sha256(&target);
    // Not a block device, without --to-file.
    let out = pi_image(&repo(), &["flash", s(&img), s(&target), "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("plain-file.img: refusing to write: not a block device (use --to-file"),
        "{err}"
    );
    // --to-file onto the image itself.
    let out = pi_image(&repo(), &["flash", s(&img), s(&img), "--to-file"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refusing to write: it is the image itself"),
        "{err}"
    );
    // A .bmap that does not belong to the image beside it.
    let copy = tmp.path().join("x.img");
    fs::copy(&img, &copy).unwrap();
    fs::write(
        tmp.path().join("x.img.bmap"),
        "<bmap version=\"2.0\"><ImageSize> 4096 </ImageSize></bmap>",
    )
    .unwrap();
    let out = pi_image(&repo(), &["flash", s(&copy), s(&target), "--to-file"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("x.img.bmap: not a usable .bmap file: no <BlockSize> element"),
        "{err}"
    );
    // The same target twice.
    let out = pi_image(
        &repo(),
        &["flash", s(&img), s(&target), s(&target), "--to-file"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("plain-file.img is given more than once"),
        "{err}"
    );
    assert_eq!(sha256(&target), before);
}

#[test]
fn a_device_that_does_not_exist_points_to_pi_image_devices() {
    let img = demo_images().join("pi1.img");
    let out = pi_image(
        &repo(),
        &["flash", s(&img), "/dev/pi-image-no-such-disk", "--yes"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1)
            && err.contains(
                "/dev/pi-image-no-such-disk: no such device; `pi-image devices` lists the disks an image can go to"
            ),
        "{err}"
    );
}

#[test]
fn a_gpt_image_onto_garbage_has_both_tables_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("gpt/pi3.img");
    let target = tmp.path().join("card.img");
    garbage_file(&target, fs::metadata(&img).unwrap().len());
    pi_image_ok(&repo(), &["flash", s(&img), s(&target), "--to-file"]);
    let (ok, out, err) = run("sgdisk", &["-v", s(&target)]);
    assert!(
        ok && out.contains("No problems found"),
        "sgdisk -v: {out}{err}"
    );
    fsck_partitions(&target, tmp.path());
}

#[test]
fn an_image_not_matching_its_bmap_fails_and_leaves_no_partition_table() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("x.img");
    fs::copy(demo_images().join("pi1.img"), &img).unwrap();
    pi_image_ok(&repo(), &["bmap", s(&img)]);
    // Change a byte of the root filesystem's superblock after the .bmap was made.
    let offset = common::sfdisk_partitions(&img)[1].0 + 1024 + 100;
    let mut data = fs::read(&img).unwrap();
    data[offset as usize] ^= 1;
    fs::write(&img, &data).unwrap();
    drop(data);
    let target = tmp.path().join("card.img");
    let garbage = tmp.path().join("garbage.img");
    garbage_file(&garbage, fs::metadata(&img).unwrap().len());
    fs::copy(&garbage, &target).unwrap();
    let out = pi_image(&repo(), &["flash", s(&img), s(&target), "--to-file"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("do not match their sha256 checksum in")
            && err.contains("x.img.bmap")
            && err.contains("no partition table written"),
        "{err}"
    );
    // The first 4 KiB (MBR) were held back: still the old garbage.
    cmp_ranges(&garbage, &target, &[(0, 4096)]);
}
