//! Block maps: `pi-image bmap` on the demo nodes, judged by bmaptool, Python's XML parser,
//! cmp, fsck.fat, e2fsck and sgdisk; bmaptool's own files read back with our reader.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use common::{
    bmap_ranges, cmp_ranges, demo_images, fsck_partitions, garbage_file, pi_image, pi_image_ok,
    repo, run,
};
use pi_image::image::blockmap::{BlockMapError, ChecksumKind};
use pi_image::image::bmap;

/// Copy only `ranges` of `src` onto `dst` (which already holds garbage).
fn copy_ranges(src: &Path, dst: &Path, ranges: &[(u64, u64)]) {
    let mut s = fs::File::open(src).unwrap();
    let mut d = fs::OpenOptions::new().write(true).open(dst).unwrap();
    for &(a, b) in ranges {
        let mut buf = vec![0u8; (b - a) as usize];
        s.seek(SeekFrom::Start(a)).unwrap();
        s.read_exact(&mut buf).unwrap();
        d.seek(SeekFrom::Start(a)).unwrap();
        d.write_all(&buf).unwrap();
    }
}

#[test]
fn bmap_maps_only_used_blocks_and_they_alone_give_clean_filesystems() {
    let tmp = tempfile::tempdir().unwrap();
    for img in [
        demo_images().join("pi1.img"),
        demo_images().join("gpt/pi3.img"),
    ] {
        let out = pi_image_ok(&repo(), &["bmap", img.to_str().unwrap()]);
        let bmap = img.with_extension("img.bmap");
        assert!(bmap.exists(), "{}", String::from_utf8_lossy(&out.stdout));
        let ranges = bmap_ranges(&bmap);
        let size = fs::metadata(&img).unwrap().len();
        let mapped: u64 = ranges.iter().map(|(a, b)| b - a).sum();
        // Free space of both filesystems is left out: the demo image is mostly free.
        assert!(
            mapped * 8 < size,
            "{}: {mapped} of {size} bytes mapped",
            img.display()
        );
        let target = tmp.path().join("target.img");
        garbage_file(&target, size);
        copy_ranges(&img, &target, &ranges);
        cmp_ranges(&img, &target, &ranges);
        fsck_partitions(&target, tmp.path());
        if img.to_str().unwrap().contains("gpt") {
            let (ok, out, err) = run("sgdisk", &["-v", target.to_str().unwrap()]);
            assert!(
                ok && out.contains("No problems found"),
                "sgdisk -v: {out}{err}"
            );
        }
    }
}

#[test]
fn bmaptool_copies_with_our_bmap_and_verifies_its_checksums() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi3.img");
    let bmap = tmp.path().join("ours.bmap");
    pi_image_ok(
        &repo(),
        &["bmap", img.to_str().unwrap(), "-o", bmap.to_str().unwrap()],
    );
    let copy = tmp.path().join("copy.img");
    let (ok, out, err) = run(
        "bmaptool",
        &[
            "copy",
            "--bmap",
            bmap.to_str().unwrap(),
            img.to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    );
    assert!(ok, "bmaptool copy: {out}{err}");
    assert_eq!(
        fs::metadata(&copy).unwrap().len(),
        fs::metadata(&img).unwrap().len()
    );
    cmp_ranges(&img, &copy, &bmap_ranges(&bmap));
    fsck_partitions(&copy, tmp.path());
    // A bmap whose content no longer matches its checksum is refused by bmaptool and by us.
    let text = fs::read_to_string(&bmap).unwrap();
    let tampered = text.replacen("<Range chksum", "<Range  chksum", 1);
    fs::write(&bmap, &tampered).unwrap();
    let (ok, _, _) = run(
        "bmaptool",
        &[
            "copy",
            "--bmap",
            bmap.to_str().unwrap(),
            img.to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    );
    assert!(!ok, "bmaptool accepted a tampered bmap");
    let err = bmap::read(&tampered, "ours.bmap").unwrap_err();
    assert!(
        matches!(err, BlockMapError::FileChecksum { .. })
            && err.to_string().starts_with("ours.bmap: BmapFileChecksum"),
        "{err}"
    );
}

#[test]
fn bmaptool_files_read_back_with_their_ranges_and_checksums() {
    let tmp = tempfile::tempdir().unwrap();
    let img = demo_images().join("pi1.img");
    let bmap = tmp.path().join("theirs.bmap");
    let (ok, out, err) = run(
        "bmaptool",
        &[
            "create",
            "-o",
            bmap.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    assert!(ok, "bmaptool create: {out}{err}");
    let text = fs::read_to_string(&bmap).unwrap();
    let map = bmap::read(&text, "theirs.bmap").unwrap();
    assert_eq!(map.image_size, fs::metadata(&img).unwrap().len());
    assert_eq!(map.block_size, 4096);
    let theirs = bmap_ranges(&bmap);
    let ours: Vec<(u64, u64)> = map.ranges.iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(ours, theirs);
    let sums = map
        .checksums
        .as_ref()
        .expect("bmaptool writes range checksums");
    assert_eq!(sums.kind, ChecksumKind::Sha256);
    assert_eq!(sums.hex.len(), ours.len());
    // Each kept checksum is the sha256 of its range, as sha256sum computes it.
    let (a, b) = ours[ours.len() / 2];
    let part = tmp.path().join("range");
    common::extract(&img, a, b - a, &part);
    let (ok, out, _) = run("sha256sum", &[part.to_str().unwrap()]);
    assert!(ok);
    let sum = sums.hex[ours.len() / 2]
        .as_deref()
        .expect("bmaptool writes a checksum for every range");
    assert!(out.starts_with(sum), "{out}");
}

#[test]
fn old_and_broken_bmap_files() {
    // Format 1.2 had no checksums; ranges may be single blocks.
    let v12 = "<?xml version=\"1.0\" ?>\n<bmap version=\"1.2\">\n<ImageSize> 10000 </ImageSize>\n\
               <BlockSize> 4096 </BlockSize>\n<BlocksCount> 3 </BlocksCount>\n\
               <MappedBlocksCount> 2 </MappedBlocksCount>\n<BlockMap>\n<Range> 0 </Range>\n\
               <Range> 2 </Range>\n</BlockMap>\n</bmap>\n";
    let map = bmap::read(v12, "old.bmap").unwrap();
    assert_eq!(map.ranges, vec![0..4096, 8192..10000]);
    assert_eq!(map.mapped_bytes(), 4096 + 1808);
    assert!(map.checksums.is_none());
    for (broken, expect) in [
        (
            v12.replace("1.2", "3.0"),
            "old.bmap: not a usable .bmap file: format version 3.0",
        ),
        (
            v12.replace("<Range> 2 </Range>", "<Range> 7 </Range>"),
            "<Range> 7 is outside the image's 3 blocks",
        ),
        (
            v12.replace("<BlockSize> 4096", "<BlockSize> x"),
            "<BlockSize> is 'x', expected a number",
        ),
        (
            v12.replace("> 2 </Mapped", "> 5 </Mapped"),
            "<MappedBlocksCount> is '5' but the ranges hold 2 blocks",
        ),
    ] {
        let err = bmap::read(&broken, "old.bmap").unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
    }
}

#[test]
fn bmap_of_a_compressed_image_is_refused_naming_it() {
    let out = pi_image(
        &repo(),
        &[
            "bmap",
            common::fixture_xz().to_str().unwrap(),
            "-o",
            "/nonexistent/x.bmap",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ubuntu-20.04.5-replica.img.xz: is xz compressed"),
        "{err}"
    );
}
