//! End to end: build the demo cluster from the bundled base image, then judge every image with
//! tools that are not ours: sfdisk, fsck.fat, e2fsck, mtools, PyYAML and cloud-init.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{extract, fixture_raw, fixture_xz, pi_image, pi_image_ok, repo, run, yaml_eval};

const NODES: [&str; 5] = ["pi1", "pi2", "pi3", "pi4", "pi5"];
const BOOT_START: u64 = 2048 * 512;
const BOOT_LEN: u64 = 524_288 * 512;
const ROOT_START: u64 = 526_336 * 512;

/// The demo cluster, built once per test process from the compressed fixture.
fn demo() -> &'static Path {
    static OUT: OnceLock<(common::ProcessDir, PathBuf)> = OnceLock::new();
    &OUT.get_or_init(|| {
        let dir = common::process_tempdir();
        let out = dir.path().join("out");
        let res = pi_image(
            &repo(),
            &[
                "build",
                "--all",
                "--base",
                fixture_xz().to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(
            res.status.success(),
            "build failed: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        let stdout = String::from_utf8_lossy(&res.stdout);
        for node in NODES {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(node) && l.contains("sha256")),
                "no summary for {node}:\n{stdout}"
            );
        }
        (dir, out)
    })
    .1
}

/// Build node pi3 of the demo profile from `base` into `out`, asserting success.
fn build_pi3(base: &Path, out: &Path) -> std::process::Output {
    let args = [
        "build",
        "--node",
        "pi3",
        "--base",
        base.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    pi_image_ok(&repo(), &args)
}

fn image(node: &str) -> PathBuf {
    demo().join(format!("{node}.img"))
}

/// A node's boot partition as a separate file, for fsck.fat and mtools.
fn boot_part(node: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("boot.vfat");
    extract(&image(node), BOOT_START, BOOT_LEN, &p);
    (dir, p)
}

fn mtype(part: &Path, file: &str) -> String {
    let (ok, out, err) = run(
        "mtype",
        &["-i", part.to_str().unwrap(), &format!("::{file}")],
    );
    assert!(ok, "mtype {file}: {err}");
    out
}

fn sfdisk_dump(img: &Path) -> String {
    let (ok, out, err) = run("sfdisk", &["--dump", img.to_str().unwrap()]);
    assert!(ok, "sfdisk --dump: {err}");
    out
}

fn label_id(dump: &str) -> String {
    dump.lines()
        .find_map(|l| l.strip_prefix("label-id: 0x"))
        .unwrap()
        .to_string()
}

/// Partition lines of `sfdisk --dump` without the device name.
fn partition_lines(dump: &str) -> Vec<String> {
    dump.lines()
        .filter(|l| l.contains("start="))
        .map(|l| l.split_once(':').unwrap().1.trim().to_string())
        .collect()
}

#[test]
fn partition_tables_keep_the_layout_and_get_unique_disk_ids() {
    let base = sfdisk_dump(&fixture_raw());
    let mut ids = Vec::new();
    for node in NODES {
        let dump = sfdisk_dump(&image(node));
        assert!(dump.contains("label: dos"), "{node}: {dump}");
        assert_eq!(
            partition_lines(&dump),
            partition_lines(&base),
            "{node}: partitions changed"
        );
        let id = label_id(&dump);
        let (_d, part) = boot_part(node);
        let cmdline = mtype(&part, "cmdline.txt");
        assert!(
            cmdline.contains(&format!("root=PARTUUID={id}-02 ")),
            "{node}: cmdline {cmdline:?} vs disk id {id}"
        );
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), NODES.len(), "disk ids collide");
    assert_ne!(label_id(&base), ids[0]);
}

#[test]
fn filesystems_are_clean() {
    for node in NODES {
        let (_d, part) = boot_part(node);
        let (ok, out, err) = run("fsck.fat", &["-n", part.to_str().unwrap()]);
        assert!(ok, "{node}: fsck.fat -n failed:\n{out}{err}");
        let root_dir = tempfile::tempdir().unwrap();
        let root = root_dir.path().join("root.ext4");
        let len = fs::metadata(image(node)).unwrap().len() - ROOT_START;
        extract(&image(node), ROOT_START, len, &root);
        let (ok, out, err) = run("e2fsck", &["-fn", root.to_str().unwrap()]);
        assert!(ok, "{node}: e2fsck -fn failed:\n{out}{err}");
    }
}

#[test]
fn boot_config_matches_each_nodes_target() {
    for node in NODES {
        let (_d, part) = boot_part(node);
        let usercfg = mtype(&part, "usercfg.txt");
        let config = mtype(&part, "config.txt");
        let cmdline = mtype(&part, "cmdline.txt");
        assert!(
            usercfg.contains("[pi4]")
                && usercfg.contains("arm_freq=2000")
                && usercfg.contains("over_voltage=6"),
            "{node}: {usercfg}"
        );
        assert_eq!(
            cmdline.lines().count(),
            1,
            "{node}: cmdline is not one line: {cmdline:?}"
        );
        assert!(cmdline.ends_with('\n'));
        for flag in [
            "cgroup_enable=cpuset",
            "cgroup_enable=memory",
            "cgroup_memory=1",
        ] {
            assert_eq!(
                cmdline.split_whitespace().filter(|t| *t == flag).count(),
                1,
                "{node}: {flag} in {cmdline}"
            );
        }
        assert_eq!(cmdline.matches("root=").count(), 1, "{node}: {cmdline}");
        assert!(config.contains("include usercfg.txt"));
        let ssd = node != "pi1";
        let kernel = if node == "pi5" {
            "kernel=vmlinux"
        } else {
            "kernel=vmlinuz"
        };
        assert_eq!(usercfg.contains(kernel), ssd, "{node}: {usercfg}");
        assert_eq!(
            usercfg.contains("initramfs initrd.img followkernel"),
            ssd,
            "{node}: {usercfg}"
        );
        // The stock [all] device_tree_address is confined to the U-Boot models on SSD nodes.
        let stock =
            fs::read_to_string(repo().join("tests/fixtures/bootfiles/focal-20.04.5/config.txt"))
                .unwrap();
        assert_eq!(
            config == stock,
            !ssd,
            "{node}: config.txt changed = {}",
            config != stock
        );
    }
    let (_d, part) = boot_part("pi5");
    let (ok, listing, _) = run("mdir", &["-i", part.to_str().unwrap(), "-b", "::"]);
    assert!(ok && listing.contains("vmlinux"), "{listing}");
    let (_d4, part4) = boot_part("pi4");
    let (_, listing4, _) = run("mdir", &["-i", part4.to_str().unwrap(), "-b", "::"]);
    assert!(!listing4.contains("::/vmlinux"), "{listing4}");
}

#[test]
fn decompressed_kernel_is_the_gunzipped_vmlinuz() {
    let (_d, part) = boot_part("pi5");
    let dir = tempfile::tempdir().unwrap();
    let (vmlinux, vmlinuz) = (dir.path().join("vmlinux"), dir.path().join("vmlinuz"));
    for (name, dest) in [("vmlinux", &vmlinux), ("vmlinuz", &vmlinuz)] {
        let (ok, _, err) = run(
            "mcopy",
            &[
                "-n",
                "-i",
                part.to_str().unwrap(),
                &format!("::{name}"),
                dest.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
    }
    let (ok, gunzipped, _) = run(
        "sh",
        &[
            "-c",
            &format!("gzip -dc '{}' | sha256sum", vmlinuz.display()),
        ],
    );
    assert!(ok);
    let (_, ours, _) = run("sha256sum", &[vmlinux.to_str().unwrap()]);
    assert_eq!(
        gunzipped.split_whitespace().next(),
        ours.split_whitespace().next()
    );
    assert_eq!(&fs::read(&vmlinux).unwrap()[0x38..0x3c], b"ARM\x64");
}

#[test]
fn cloud_init_files_parse_and_carry_the_node_settings() {
    let demo_key = fs::read_to_string(repo().join("profiles/keys/demo.pub")).unwrap();
    let mut instance_ids = Vec::new();
    for (i, node) in NODES.iter().enumerate() {
        let (_d, part) = boot_part(node);
        let user_data = mtype(&part, "user-data");
        assert!(
            user_data.starts_with("#cloud-config\n"),
            "{node}: {user_data}"
        );
        assert_eq!(yaml_eval(&user_data, "d['hostname']"), *node);
        assert_eq!(
            yaml_eval(&user_data, "d['fqdn']"),
            format!("{node}.cluster.lan")
        );
        assert_eq!(yaml_eval(&user_data, "d['ssh_pwauth']"), "False");
        assert_eq!(
            yaml_eval(&user_data, "'chpasswd' in d"),
            "False",
            "{node}: stock password expiry kept"
        );
        assert!(
            yaml_eval(&user_data, "d['ssh_authorized_keys']")
                .contains(demo_key.split_whitespace().nth(1).unwrap())
        );
        assert_eq!(
            yaml_eval(&user_data, "'nfs-common' in d['packages']"),
            "True"
        );
        let net = mtype(&part, "network-config");
        let addr = format!("192.168.1.{}/24", 11 + i);
        assert_eq!(
            yaml_eval(&net, "d['ethernets']['eth0']['addresses']"),
            format!("['{addr}']")
        );
        assert_eq!(
            yaml_eval(&net, "d['ethernets']['eth0']['gateway4']"),
            "192.168.1.1"
        );
        assert_eq!(
            yaml_eval(&net, "d['ethernets']['eth0']['nameservers']['addresses']"),
            "['192.168.1.1', '1.1.1.1']"
        );
        let meta = mtype(&part, "meta-data");
        assert_eq!(yaml_eval(&meta, "d['local-hostname']"), *node);
        instance_ids.push(yaml_eval(&meta, "d['instance-id']"));
        if which("cloud-init") {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("user-data");
            fs::write(&f, &user_data).unwrap();
            let (ok, out, err) = run(
                "cloud-init",
                &["schema", "--config-file", f.to_str().unwrap()],
            );
            assert!(ok, "{node}: cloud-init schema: {out}{err}");
        } else {
            eprintln!(
                "cloud-init not installed: skipping `cloud-init schema` (apt-get install cloud-init)"
            );
        }
    }
    instance_ids.sort();
    instance_ids.dedup();
    assert_eq!(instance_ids.len(), NODES.len());
}

#[test]
fn nothing_changes_outside_the_mbr_id_and_the_edited_filesystems() {
    let base = fs::read(fixture_raw()).unwrap();
    for node in ["pi1", "pi3"] {
        let img = fs::read(image(node)).unwrap();
        assert_eq!(img.len(), base.len());
        assert_eq!(img[..440], base[..440], "{node}: boot code changed");
        assert_eq!(
            img[444..BOOT_START as usize],
            base[444..BOOT_START as usize],
            "{node}: partition table or gap changed"
        );
        let boot_end = (BOOT_START + BOOT_LEN) as usize;
        assert_eq!(
            img[boot_end..ROOT_START as usize],
            base[boot_end..ROOT_START as usize]
        );
    }
}

#[test]
fn builds_are_reproducible_and_the_base_is_untouched() {
    let raw = fixture_raw();
    let before = fs::read(&raw).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("again");
    build_pi3(&raw, &out);
    assert!(
        fs::read(out.join("pi3.img")).unwrap() == fs::read(image("pi3")).unwrap(),
        "raw and xz bases give different pi3 images"
    );
    assert!(
        fs::read(&raw).unwrap() == before,
        "the base image was modified"
    );
    let mut names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    // The image and the build record (`.pi-image/build.json`), nothing else.
    assert_eq!(
        names,
        vec![".pi-image", "pi3.img"],
        "temp files left behind"
    );
}

#[test]
fn the_summary_sha256_is_sha256sums() {
    let (_, sum, _) = run("sha256sum", &[image("pi3").to_str().unwrap()]);
    let sum = &sum[..64];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("again");
    let printed = String::from_utf8_lossy(&build_pi3(&fixture_raw(), &out).stdout).into_owned();
    assert!(printed.contains(&format!("  sha256 {sum}  ")), "{printed}");
    assert!(fs::read(out.join("pi3.img")).unwrap() == fs::read(image("pi3")).unwrap());
}

#[test]
fn inspect_shows_partitions_effective_config_and_cloud_init() {
    let res = pi_image(&repo(), &["inspect", image("pi3").to_str().unwrap()]);
    let out = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    for want in [
        "FAT \"system-boot\"",
        "ext4 \"writable\"",
        "20.04",
        "kernel=vmlinuz",
        "arm_freq=2000",
        "root=PARTUUID=",
        "#cloud-config",
        "instance-id",
    ] {
        assert!(out.contains(want), "inspect lacks {want:?}:\n{out}");
    }
    assert!(
        !out.lines().any(|l| l.starts_with("device_tree_address")),
        "{out}"
    );
}

#[test]
fn nodes_lists_the_demo_cluster() {
    let res = pi_image(&repo(), &["nodes"]);
    let out = String::from_utf8_lossy(&res.stdout);
    assert!(res.status.success());
    assert!(
        out.contains("pi1") && out.contains("192.168.1.15/24") && out.contains("k8s-prep"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains(" ssd ")).count(),
        4,
        "{out}"
    );
}

fn which(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A node's root partition as a separate file, for e2fsck and debugfs.
fn root_part(img: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("root.ext4");
    let len = fs::metadata(img).unwrap().len() - ROOT_START;
    extract(img, ROOT_START, len, &p);
    (dir, p)
}

fn debugfs(part: &Path, request: &str) -> String {
    let (ok, out, err) = run("debugfs", &["-R", request, part.to_str().unwrap()]);
    assert!(ok, "debugfs -R '{request}': {err}");
    out
}

#[test]
fn rootfs_overlay_lands_with_content_mode_owner_and_time() {
    let overlay = repo().join("overlays/k8s-prep/rootfs");
    for node in ["pi1", "pi3"] {
        let (_d, root) = root_part(&image(node));
        for file in [
            "etc/modules-load.d/k8s.conf",
            "etc/sysctl.d/99-kubernetes.conf",
        ] {
            assert_eq!(
                debugfs(&root, &format!("cat /{file}")),
                fs::read_to_string(overlay.join(file)).unwrap(),
                "{node}: {file}"
            );
            let stat = debugfs(&root, &format!("stat /{file}"));
            assert!(
                stat.contains("Mode:  0644") && stat.contains("User:     0   Group:     0"),
                "{node}: {stat}"
            );
            // 2022-09-01 12:00 UTC, the default SOURCE_DATE_EPOCH.
            assert!(
                stat.contains("mtime: 0x63109ec0") && stat.contains("ctime: 0x63109ec0"),
                "{node}: {stat}"
            );
        }
        let link = debugfs(&root, "stat /etc/systemd/system/swap.target");
        assert!(
            link.contains("Type: symlink") && link.contains("\"/dev/null\""),
            "{node}: {link}"
        );
        // The stock files around the overlay are still there.
        assert!(debugfs(&root, "cat /etc/hostname").contains("ubuntu"));
    }
}

#[test]
fn decompress_kernel_nodes_get_the_apt_hook_and_a_working_script() {
    let (_d, root) = root_part(&image("pi5"));
    let hook = debugfs(&root, "cat /etc/apt/apt.conf.d/999_decompress_rpi_kernel");
    assert!(
        hook.contains("DPkg::Post-Invoke")
            && hook.contains("/boot/firmware/auto_decompress_kernel"),
        "{hook}"
    );
    let (_d3, root3) = root_part(&image("pi3"));
    assert!(!debugfs(&root3, "ls /etc/apt/apt.conf.d").contains("999_decompress"));

    // Run the script from the image against a boot directory holding the image's vmlinuz.
    let (_b, part) = boot_part("pi5");
    let boot = tempfile::tempdir().unwrap();
    let b = boot.path().to_str().unwrap();
    for name in ["auto_decompress_kernel", "vmlinuz"] {
        let (ok, _, err) = run(
            "mcopy",
            &[
                "-n",
                "-i",
                part.to_str().unwrap(),
                &format!("::{name}"),
                &format!("{b}/{name}"),
            ],
        );
        assert!(ok, "{err}");
    }
    let script = format!("PI_IMAGE_BOOT_DIR='{b}' sh '{b}/auto_decompress_kernel'");
    let (ok, _, err) = run("sh", &["-c", &script]);
    assert!(ok, "script failed: {err}");
    assert_eq!(
        &fs::read(boot.path().join("vmlinux")).unwrap()[0x38..0x3c],
        b"ARM\x64"
    );
    // A kernel update that is not a gzip arm64 Image leaves vmlinux alone and fails loudly.
    let good = fs::read(boot.path().join("vmlinux")).unwrap();
    let (ok, _, _) = run(
        "sh",
        &["-c", &format!("echo not-a-kernel | gzip > '{b}/vmlinuz'")],
    );
    assert!(ok);
    let (ok, _, err) = run("sh", &["-c", &script]);
    assert!(!ok && err.contains("not a gzip arm64 kernel"), "{err}");
    assert_eq!(fs::read(boot.path().join("vmlinux")).unwrap(), good);
}

#[test]
fn jammy_base_takes_settings_in_config_txt_and_routes() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("jammy.img");
    let (ok, _, err) = run(
        repo().join("tests/fixtures/make-base.sh").to_str().unwrap(),
        &[base.to_str().unwrap(), "jammy-current"],
    );
    assert!(ok, "make-base.sh jammy: {err}");
    let out = dir.path().join("out");
    let res = build_pi3(&base, &out);
    assert!(String::from_utf8_lossy(&res.stdout).contains("22.04"));
    let img = out.join("pi3.img");
    let part = dir.path().join("boot.vfat");
    extract(&img, BOOT_START, BOOT_LEN, &part);
    let (ok, fsck, err) = run("fsck.fat", &["-n", part.to_str().unwrap()]);
    assert!(ok, "{fsck}{err}");
    let config = mtype(&part, "config.txt");
    let pi4 = config.rsplit("[pi4]").next().unwrap();
    assert!(
        pi4.contains("arm_freq=2000") && pi4.contains("over_voltage=6"),
        "{config}"
    );
    let (_, listing, _) = run("mdir", &["-i", part.to_str().unwrap(), "-b", "::"]);
    assert!(!listing.contains("usercfg.txt"), "{listing}");
    let net = mtype(&part, "network-config");
    assert_eq!(
        yaml_eval(&net, "d['network']['ethernets']['eth0']['routes']"),
        "[{'to': 'default', 'via': '192.168.1.1'}]"
    );
    assert_eq!(
        yaml_eval(&net, "'gateway4' in d['network']['ethernets']['eth0']"),
        "False"
    );
    let meta = mtype(&part, "meta-data");
    assert_eq!(yaml_eval(&meta, "d['dsmode']"), "local");
    let (_r, root) = root_part(&img);
    let (ok, o, e) = run("e2fsck", &["-fn", root.to_str().unwrap()]);
    assert!(ok, "{o}{e}");
}

#[test]
fn custom_boot_and_rootfs_overlays_with_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("profiles/keys")).unwrap();
    fs::copy(
        repo().join("profiles/keys/demo.pub"),
        d.join("profiles/keys/demo.pub"),
    )
    .unwrap();
    let ov = d.join("overlays/extras");
    fs::create_dir_all(ov.join("boot/overlays/custom/deeper")).unwrap();
    fs::create_dir_all(ov.join("rootfs/etc/sudoers.d")).unwrap();
    fs::create_dir_all(ov.join("rootfs/usr/local/bin")).unwrap();
    fs::write(
        ov.join("boot/overlays/custom/deeper/My Long Overlay Name.dtbo"),
        "dtbo bytes",
    )
    .unwrap();
    for i in 0..120 {
        fs::write(
            ov.join(format!(
                "boot/overlays/custom/Extra Firmware Blob Number {i:03}.bin"
            )),
            format!("blob {i}"),
        )
        .unwrap();
    }
    fs::write(
        ov.join("rootfs/etc/sudoers.d/k8s"),
        "ops ALL=(ALL) NOPASSWD: ALL\n",
    )
    .unwrap();
    fs::write(
        ov.join("rootfs/usr/local/bin/hello"),
        "#!/bin/sh\necho hello\n",
    )
    .unwrap();
    run(
        "chmod",
        &[
            "755",
            ov.join("rootfs/usr/local/bin/hello").to_str().unwrap(),
        ],
    );
    fs::write(
        ov.join("rootfs.toml"),
        "[\"etc/sudoers.d/k8s\"]\nmode = \"0440\"\nowner = \"0:0\"\n",
    )
    .unwrap();
    fs::write(
        d.join("profiles/p.toml"),
        "[cluster]\nname = \"c\"\nbase = \"none.img\"\n[defaults]\nssh_keys = [\"keys/demo.pub\"]\noverlays = [\"extras\"]\n[[nodes]]\nname = \"n1\"\n",
    )
    .unwrap();
    let raw = fixture_raw();
    pi_image_ok(
        d,
        &[
            "--profile",
            "profiles/p.toml",
            "build",
            "--node",
            "n1",
            "--base",
            raw.to_str().unwrap(),
            "--out",
            "out",
        ],
    );
    let img = d.join("out/n1.img");
    let part = d.join("boot.vfat");
    extract(&img, BOOT_START, BOOT_LEN, &part);
    let (ok, fsck, err) = run("fsck.fat", &["-n", part.to_str().unwrap()]);
    assert!(ok, "{fsck}{err}");
    assert_eq!(
        mtype(&part, "overlays/custom/deeper/My Long Overlay Name.dtbo"),
        "dtbo bytes"
    );
    assert_eq!(
        mtype(&part, "overlays/custom/Extra Firmware Blob Number 119.bin"),
        "blob 119"
    );
    let (_r, root) = root_part(&img);
    let (ok, o, e) = run("e2fsck", &["-fn", root.to_str().unwrap()]);
    assert!(ok, "{o}{e}");
    assert!(debugfs(&root, "stat /etc/sudoers.d/k8s").contains("Mode:  0440"));
    assert!(debugfs(&root, "stat /usr/local/bin/hello").contains("Mode:  0755"));
    assert_eq!(
        debugfs(&root, "cat /usr/local/bin/hello"),
        "#!/bin/sh\necho hello\n"
    );
}
