//! Golden files for the boot-partition text patchers: `tests/golden/configtxt/<case>/` holds stock
//! (or deliberately odd) config.txt, syscfg.txt and usercfg.txt as inputs, with `<file>.expected`
//! for each patched file and `effective-<model>.expected` for what the firmware would read;
//! `tests/golden/cmdline/<case>/` holds `cmdline.txt` and `cmdline.txt.expected`. Expected files are
//! compared byte for byte; `UPDATE_GOLDEN=1 cargo test --test golden_boottext` rewrites them.
//! Every patch is also applied twice to check that it is idempotent.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use pi_image::bootconf::cmdline;
use pi_image::bootconf::configtxt::{self, Effective, Model};

/// The settings a Pi 4 SSD/USB-boot node gets: overclock, and the kernel loaded by the firmware
/// instead of U-Boot.
fn pi4_settings(text: &str, kernel: &str) -> String {
    let text = configtxt::set(text, "pi4", "arm_freq", "2000");
    let text = configtxt::set(&text, "pi4", "over_voltage", "6");
    let text = configtxt::set(&text, "pi4", "kernel", kernel);
    configtxt::set(&text, "pi4", "initramfs", "initrd.img followkernel")
}

/// The Pi 4 must not get U-Boot's device tree address once it boots the kernel directly.
fn confine(text: &str) -> String {
    configtxt::confine_key(text, "device_tree_address", &["pi2", "pi3", "pi0"])
}

/// Where the build puts the settings.
#[derive(Clone, Copy)]
enum Layout {
    /// 20.04: user settings in usercfg.txt, config.txt only confined.
    Focal { kernel: &'static str },
    /// 22.04 and later (and hand-made files): everything in config.txt.
    Direct,
}

const CONFIG_CASES: &[(&str, Layout)] = &[
    ("focal-20.04.5", Layout::Focal { kernel: "vmlinuz" }),
    ("focal-20.04.0-20.04.3", Layout::Focal { kernel: "vmlinux" }),
    ("jammy-current", Layout::Direct),
    ("noble-current", Layout::Direct),
    ("odd-crlf", Layout::Focal { kernel: "vmlinuz" }),
    ("odd-bom", Layout::Direct),
    ("odd-no-eol", Layout::Direct),
    ("odd-dupes", Layout::Direct),
];

const CMDLINE_SET: &[&str] = &[
    "root=PARTUUID=1a2b3c4d-02",
    "cgroup_enable=cpuset",
    "cgroup_enable=memory",
    "cgroup_memory=1",
];

const CMDLINE_CASES: &[&str] = &[
    "focal-20.04.5",
    "focal-20.04.0-20.04.3",
    "jammy-current",
    "noble-current",
    "odd-two-lines",
    "odd-crlf-bom",
    "odd-dupes",
    "odd-no-eol",
];

fn golden_dir(kind: &str, case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(kind)
        .join(case)
}

/// Compares `actual` with the expected file byte for byte, or rewrites it under `UPDATE_GOLDEN=1`.
fn golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        fs::write(path, actual).unwrap();
        return;
    }
    let expected = fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual.as_bytes(),
        "{} differs from the output (UPDATE_GOLDEN=1 rewrites it)\n--- expected\n{}\n--- actual\n{}",
        path.display(),
        String::from_utf8_lossy(&expected).escape_debug(),
        actual.escape_debug(),
    );
}

/// The case's input files by name (everything not ending in `.expected`).
fn inputs(dir: &Path) -> BTreeMap<String, String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.ends_with(".expected"))
        .map(|name| {
            let text = fs::read_to_string(dir.join(&name)).unwrap();
            (name, text)
        })
        .collect()
}

/// Applies the build's config.txt edits for `layout` to every file they touch.
fn patch(files: &BTreeMap<String, String>, layout: Layout) -> BTreeMap<String, String> {
    let mut out = files.clone();
    let config = files.get("config.txt").expect("every case has config.txt");
    match layout {
        Layout::Focal { kernel } => {
            let usercfg = files
                .get("usercfg.txt")
                .expect("focal cases have usercfg.txt");
            out.insert("usercfg.txt".into(), pi4_settings(usercfg, kernel));
            out.insert("config.txt".into(), confine(config));
        }
        Layout::Direct => {
            out.insert(
                "config.txt".into(),
                pi4_settings(&confine(config), "vmlinuz"),
            );
        }
    }
    out
}

fn evaluate(files: &BTreeMap<String, String>, model: Model) -> Effective {
    configtxt::effective("config.txt", &|name| files.get(name).cloned(), model)
}

fn patched_case(case: &str, layout: Layout) -> BTreeMap<String, String> {
    let dir = golden_dir("configtxt", case);
    let stock = inputs(&dir);
    let once = patch(&stock, layout);
    assert_eq!(
        patch(&once, layout),
        once,
        "{case}: patching twice changes the files"
    );
    for (name, text) in &once {
        if stock.get(name) != Some(text) {
            golden(&dir.join(format!("{name}.expected")), text);
        }
    }
    for model in [Model::Pi4, Model::Pi3] {
        let shown = evaluate(&once, model).to_string();
        golden(&dir.join(format!("effective-{model}.expected")), &shown);
    }
    once
}

#[test]
fn configtxt_cases_match_golden_files_and_are_idempotent() {
    for &(case, layout) in CONFIG_CASES {
        patched_case(case, layout);
    }
}

#[test]
fn focal_pi4_boots_the_kernel_directly_and_older_models_keep_uboot() {
    for (case, kernel) in [
        ("focal-20.04.5", "vmlinuz"),
        ("focal-20.04.0-20.04.3", "vmlinux"),
        ("odd-crlf", "vmlinuz"),
    ] {
        let files = patched_case(case, Layout::Focal { kernel });
        for model in [Model::Pi4, Model::Pi400, Model::Cm4] {
            let pi4 = evaluate(&files, model);
            assert_eq!(pi4.get("kernel"), Some(kernel), "{case} {model}");
            assert_eq!(pi4.get("initramfs"), Some("initrd.img followkernel"));
            assert_eq!(pi4.get("arm_freq"), Some("2000"));
            assert_eq!(pi4.get("over_voltage"), Some("6"));
            assert_eq!(pi4.get("device_tree_address"), None, "{case} {model}");
            assert_eq!(pi4.get("arm_64bit"), Some("1"));
            assert!(pi4.warnings.is_empty(), "{case}: {:?}", pi4.warnings);
        }
        for (model, uboot) in [
            (Model::Pi3, "uboot_rpi_3.bin"),
            (Model::Pi3Plus, "uboot_rpi_3.bin"),
            (Model::Pi2, "uboot_rpi_2.bin"),
        ] {
            let old = evaluate(&files, model);
            assert_eq!(old.get("kernel"), Some(uboot), "{case} {model}");
            assert_eq!(old.get("device_tree_address"), Some("0x03000000"));
            assert_eq!(old.get("arm_freq"), None);
            assert_eq!(old.get("initramfs"), None);
        }
    }
    // 20.04.5 has a [pi0] U-Boot block; the Zero 2 W keeps its device tree address too.
    let files = patched_case("focal-20.04.5", Layout::Focal { kernel: "vmlinuz" });
    let zero2 = evaluate(&files, Model::Pi02);
    assert_eq!(zero2.get("kernel"), Some("uboot_rpi_3.bin"));
    assert_eq!(zero2.get("device_tree_address"), Some("0x03000000"));
}

#[test]
fn stock_focal_evaluates_as_shipped() {
    let files = inputs(&golden_dir("configtxt", "focal-20.04.5"));
    let pi4 = evaluate(&files, Model::Pi4);
    assert_eq!(pi4.get("kernel"), Some("uboot_rpi_4.bin"));
    assert_eq!(pi4.get("device_tree_address"), Some("0x03000000"));
    assert_eq!(pi4.values("dtoverlay"), ["dwc2"]);
    // dtparams appear in config.txt and again in syscfg.txt: the firmware applies both.
    assert_eq!(pi4.values("dtparam").len(), 6);
    let cm4 = evaluate(&files, Model::Cm4);
    assert_eq!(cm4.values("dtoverlay"), ["dwc2", "dwc2,dr_mode=host"]);
    let line = pi4.settings.iter().find(|s| s.key == "cmdline").unwrap();
    assert_eq!((line.file.as_str(), line.line), ("syscfg.txt", 10));
}

#[test]
fn jammy_and_noble_get_the_settings_in_config_txt() {
    for case in ["jammy-current", "noble-current", "odd-bom"] {
        let files = patched_case(case, Layout::Direct);
        let pi4 = evaluate(&files, Model::Pi4);
        assert_eq!(pi4.get("kernel"), Some("vmlinuz"), "{case}");
        assert_eq!(pi4.get("initramfs"), Some("initrd.img followkernel"));
        assert_eq!(pi4.get("arm_freq"), Some("2000"));
        assert_eq!(pi4.get("over_voltage"), Some("6"));
        let pi3 = evaluate(&files, Model::Pi3);
        assert_eq!(pi3.get("kernel"), Some("vmlinuz"));
        assert_eq!(pi3.get("arm_freq"), None);
    }
    let bom = patched_case("odd-bom", Layout::Direct);
    assert!(bom["config.txt"].starts_with("\u{feff}[all]\n"));
}

#[test]
fn odd_config_files_keep_their_form() {
    let crlf = patched_case("odd-crlf", Layout::Focal { kernel: "vmlinuz" });
    for name in ["config.txt", "usercfg.txt"] {
        let text = &crlf[name];
        assert!(text.ends_with("\r\n"));
        assert_eq!(
            text.matches('\n').count(),
            text.matches("\r\n").count(),
            "{name}"
        );
    }
    let no_eol = patched_case("odd-no-eol", Layout::Direct);
    assert!(no_eol["config.txt"].ends_with('\n'));
    assert!(no_eol["config.txt"].contains("over_voltage=6\n"));
    assert!(!no_eol["config.txt"].contains("over_voltage=2"));

    let dupes = patched_case("odd-dupes", Layout::Direct);
    let text = &dupes["config.txt"];
    assert_eq!(
        text.matches("arm_freq=").count(),
        3,
        "[all] and [HDMI:0] keep theirs"
    );
    assert_eq!(text.matches("over_voltage=").count(), 1);
    assert_eq!(text.matches("dtoverlay=dwc2").count(), 2);
    assert!(
        !text.contains("0x02000000"),
        "the [pi4]-only value must not spread"
    );
    let pi4 = evaluate(&dupes, Model::Pi4);
    assert_eq!(pi4.get("arm_freq"), Some("2000"));
    assert_eq!(pi4.get("device_tree_address"), None);
    assert_eq!(pi4.warnings.len(), 2, "{:?}", pi4.warnings);
    let pi3 = evaluate(&dupes, Model::Pi3);
    assert_eq!(pi3.get("arm_freq"), Some("1000"));
    assert_eq!(pi3.get("device_tree_address"), Some("0x03000000"));
}

#[test]
fn cmdline_cases_match_golden_files_and_are_idempotent() {
    for case in CMDLINE_CASES {
        let dir = golden_dir("cmdline", case);
        let stock = fs::read_to_string(dir.join("cmdline.txt")).unwrap();
        let once = cmdline::apply(&stock, CMDLINE_SET, &[]);
        assert_eq!(cmdline::apply(&once, CMDLINE_SET, &[]), once, "{case}");
        golden(&dir.join("cmdline.txt.expected"), &once);

        assert_eq!(once.matches('\n').count(), 1, "{case}");
        assert!(
            once.ends_with('\n') && !once.contains(['\r', '\u{feff}']),
            "{case}"
        );
        assert_eq!(cmdline::get(&once, "root"), Some("PARTUUID=1a2b3c4d-02"));
        assert_eq!(cmdline::get(&once, "cgroup_memory"), Some("1"));
        for token in [
            "root=",
            "cgroup_memory=",
            "cgroup_enable=cpuset",
            "cgroup_enable=memory",
        ] {
            let count = once.split(' ').filter(|t| t.starts_with(token)).count();
            assert_eq!(count, 1, "{case}: {token}");
        }
        // Everything else the stock line had is still there, in order.
        let kept: Vec<&str> = stock
            .trim_start_matches('\u{feff}')
            .split_whitespace()
            .filter(|t| !t.starts_with("root=") && !t.starts_with("cgroup_"))
            .collect();
        let now: Vec<&str> = once
            .split_whitespace()
            .filter(|t| !t.starts_with("root=") && !t.starts_with("cgroup_"))
            .collect();
        assert_eq!(now, kept, "{case}");
    }
}
