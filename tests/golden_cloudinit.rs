//! Golden files for the cloud-init seed (`tests/golden/cloudinit/<scenario>/`), checked with an
//! independent parser (PyYAML, as cloud-init uses) and with `cloud-init schema` when installed.
//! `UPDATE_GOLDEN=1 cargo test --test golden_cloudinit` rewrites the golden files.

mod common;

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use pi_image::plan::cloudinit::{self, NodeCloudConfig};
use pi_image::plan::release::Release;
use pi_image::profile::StaticAddress;

const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx8sOVzYVu6pgNpw2gEZm6hOEiXsWTjOb8wyNc3P0CB alice@laptop";
const KEY_B: &str =
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDKx3+/b1YtdmKp9zYhj6Gm4b1mT2Zb8nQ3xYk5rMv6 bob@desk";
const ODD_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx8sOVzYVu6pgNpw2gEZm6hOEiXsWTjOb8wyNc3P0CB me: #'\"x - y";
const HASH: &str = "$6$rounds=4096$saltsalt$3MEaFIqiO8wV0xg0t8V3W0JH.Rgxk5w3ZNxPbnsxoQWq3/1pAbCDefGhijKLmnOPqrstuVwxYZ0123456789ab";

fn stock(release: Release) -> String {
    let dir = match release {
        Release::Focal => "focal-20.04.5",
        Release::Jammy => "jammy-current",
        Release::Noble => "noble-current",
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bootfiles")
        .join(dir)
        .join("user-data");
    fs::read_to_string(path).unwrap()
}

fn lan(release: Release) -> NodeCloudConfig {
    NodeCloudConfig {
        release,
        hostname: "pi1".into(),
        domain: Some("cluster.lan".into()),
        user: "ubuntu".into(),
        ssh_keys: vec![KEY_A.into(), KEY_B.into()],
        password_hash: None,
        timezone: Some("Europe/Berlin".into()),
        network: Some(StaticAddress {
            interface: "eth0".into(),
            address: Ipv4Addr::new(192, 168, 1, 11),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
            dns: vec![
                IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)),
                "2606:4700:4700::1111".parse().unwrap(),
            ],
            search: vec!["cluster.lan".into()],
        }),
        extra_user_data: None,
    }
}

fn yaml(text: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(text).unwrap()
}

fn scenarios() -> Vec<(&'static str, NodeCloudConfig)> {
    let focal_custom = NodeCloudConfig {
        user: "alice".into(),
        ssh_keys: vec![KEY_A.into()],
        password_hash: Some(HASH.into()),
        timezone: None,
        ..lan(Release::Focal)
    };
    let jammy = NodeCloudConfig {
        password_hash: Some(HASH.into()),
        ..lan(Release::Jammy)
    };
    let noble = NodeCloudConfig {
        password_hash: Some(HASH.into()),
        ..lan(Release::Noble)
    };
    let dhcp = NodeCloudConfig {
        domain: None,
        timezone: None,
        network: None,
        ..lan(Release::Focal)
    };
    let extra = NodeCloudConfig {
        extra_user_data: Some(yaml(
            "packages: [nfs-common, open-iscsi]\n\
             package_update: true\n\
             manage_etc_hosts: false\n\
             write_files:\n\
             - path: /etc/modules-load.d/k8s.conf\n  content: |\n    overlay\n    br_netfilter\n  permissions: '0644'\n\
             runcmd:\n- [sysctl, --system]\n- \"echo 'done: ok' > /run/done\"\n\
             ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExtraKeyExtraKeyExtraKeyExtraKeyExtraKey0 extra@ci']\n",
        )),
        ..lan(Release::Focal)
    };
    let odd = NodeCloudConfig {
        ssh_keys: vec![ODD_KEY.into()],
        timezone: Some("America/Argentina/Buenos_Aires".into()),
        network: Some(StaticAddress {
            search: vec!["cluster.lan".into(), "-lab.example".into(), "x #y".into()],
            ..lan(Release::Noble).network.unwrap()
        }),
        ..lan(Release::Noble)
    };
    vec![
        ("focal-default-static", lan(Release::Focal)),
        ("focal-custom-user-hash", focal_custom),
        ("jammy-static-hash", jammy),
        ("noble-static-hash", noble),
        ("focal-dhcp", dhcp),
        ("focal-extra-merge", extra),
        ("noble-odd-strings", odd),
    ]
}

fn generate(cfg: &NodeCloudConfig) -> [(&'static str, String); 3] {
    let ud = cloudinit::user_data(&stock(cfg.release), cfg).unwrap();
    let nc = cloudinit::network_config(cfg).unwrap();
    let id = cloudinit::instance_id(&cfg.hostname, &ud, &nc);
    let md = cloudinit::meta_data(cfg, &id).unwrap();
    [("user-data", ud), ("network-config", nc), ("meta-data", md)]
}

fn golden_dir(scenario: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/cloudinit")
        .join(scenario)
}

/// Evaluates a Python expression over `d = yaml.safe_load(text)`, printed as JSON.
fn py(text: &str, expr: &str) -> String {
    common::yaml_eval(text, &format!("json.dumps({expr})"))
}

fn has_cloud_init() -> bool {
    Command::new("cloud-init")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn golden_files_match() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for (name, cfg) in scenarios() {
        let dir = golden_dir(name);
        for (file, text) in generate(&cfg) {
            let path = dir.join(file);
            if update {
                fs::create_dir_all(&dir).unwrap();
                fs::write(&path, &text).unwrap();
            } else {
                let want = fs::read_to_string(&path).unwrap_or_else(|e| {
                    panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display())
                });
                assert_eq!(text, want, "{name}/{file} differs from the golden file");
            }
        }
    }
}

#[test]
fn generation_is_idempotent_and_stable_on_its_own_output() {
    for (name, cfg) in scenarios() {
        let [(_, ud), (_, nc), (_, md)] = generate(&cfg);
        let [(_, ud2), (_, nc2), (_, md2)] = generate(&cfg);
        assert_eq!((&ud, &nc, &md), (&ud2, &nc2, &md2), "{name}");
        let again = cloudinit::user_data(&ud, &cfg).unwrap();
        assert_eq!(
            again, ud,
            "{name}: generating from the generated user-data changed it"
        );
    }
}

#[test]
fn every_user_data_passes_cloud_init_schema() {
    if !has_cloud_init() {
        eprintln!(
            "cloud-init not installed: skipping `cloud-init schema` (apt-get install cloud-init)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, cfg) in scenarios() {
        let [(_, ud), _, _] = generate(&cfg);
        let f = dir.path().join(format!("{name}.user-data"));
        fs::write(&f, &ud).unwrap();
        let out = Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(&f)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{name}: cloud-init schema:\n{said}\n{ud}"
        );
        // `chpasswd.list` is deprecated since cloud-init 22.3 but is the only form the cloud-init
        // of 20.04 and early 22.04 images reads; anything else deprecated is a mistake.
        let deprecations = said
            .lines()
            .filter(|l| l.to_lowercase().contains("deprecat"))
            .collect::<Vec<_>>();
        let allowed = cfg.release != Release::Noble
            && deprecations
                .iter()
                .all(|l| l.contains("chpasswd.list") || l.starts_with("Use of a multiline"));
        assert!(deprecations.is_empty() || allowed, "{name}: {said}");
    }
}

#[test]
fn focal_default_user_structure() {
    let [(_, ud), (_, nc), (_, md)] = generate(&lan(Release::Focal));
    assert!(ud.starts_with("#cloud-config\n"));
    assert_eq!(py(&ud, "d['hostname']"), r#""pi1""#);
    assert_eq!(py(&ud, "d['fqdn']"), r#""pi1.cluster.lan""#);
    assert_eq!(
        py(
            &ud,
            "[d['manage_etc_hosts'], d['preserve_hostname'], d['ssh_pwauth']]"
        ),
        "[true, false, false]"
    );
    assert_eq!(py(&ud, "d['users']"), r#"["default"]"#);
    assert_eq!(
        py(&ud, "d['ssh_authorized_keys']"),
        serde_json_list(&[KEY_A, KEY_B])
    );
    assert_eq!(py(&ud, "'chpasswd' in d"), "false");
    assert_eq!(py(&ud, "d['timezone']"), r#""Europe/Berlin""#);
    assert_eq!(
        py(&nc, "d"),
        r#"{"version": 2, "ethernets": {"eth0": {"dhcp4": false, "addresses": ["192.168.1.11/24"], "gateway4": "192.168.1.1", "nameservers": {"addresses": ["192.168.1.1", "2606:4700:4700::1111"], "search": ["cluster.lan"]}}}}"#
    );
    assert_eq!(py(&md, "sorted(d)"), r#"["instance-id", "local-hostname"]"#);
    assert_eq!(py(&md, "d['local-hostname']"), r#""pi1""#);
    assert!(py(&md, "d['instance-id']").starts_with("\"pi1-"));
}

#[test]
fn custom_user_structure() {
    let cfg = &scenarios()[1].1;
    let [(_, ud), _, _] = generate(cfg);
    let user = py(&ud, "d['users']");
    assert_eq!(
        user,
        format!(
            r#"[{{"name": "alice", "groups": ["adm", "audio", "cdrom", "dialout", "dip", "floppy", "lxd", "netdev", "plugdev", "sudo", "video"], "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": false, "hashed_passwd": "{HASH}", "ssh_authorized_keys": ["{KEY_A}"]}}]"#
        )
    );
    assert_eq!(
        py(
            &ud,
            "[k in d for k in ('chpasswd', 'ssh_authorized_keys', 'timezone', 'fqdn')]"
        ),
        "[false, false, false, true]"
    );
    assert_eq!(py(&ud, "d['ssh_pwauth']"), "true");
}

#[test]
fn default_user_password_uses_the_release_chpasswd_form() {
    let jammy = &scenarios()[2].1;
    let [(_, ud), (_, nc), (_, md)] = generate(jammy);
    assert_eq!(
        py(&ud, "d['chpasswd']"),
        format!(r#"{{"expire": false, "list": ["ubuntu:{HASH}"]}}"#)
    );
    assert_eq!(py(&ud, "d['ssh_pwauth']"), "true");
    assert_eq!(
        py(&nc, "d['network']['ethernets']['eth0']['routes']"),
        r#"[{"to": "default", "via": "192.168.1.1"}]"#
    );
    assert_eq!(
        py(
            &nc,
            "['gateway4' in d['network']['ethernets']['eth0'], d['network']['version']]"
        ),
        "[false, 2]"
    );
    assert_eq!(py(&md, "d['dsmode']"), r#""local""#);

    let noble = &scenarios()[3].1;
    let [(_, ud), _, _] = generate(noble);
    assert_eq!(
        py(&ud, "d['chpasswd']"),
        format!(
            r#"{{"expire": false, "users": [{{"name": "ubuntu", "password": "{HASH}", "type": "hash"}}]}}"#
        )
    );
}

#[test]
fn dhcp_is_the_stock_configuration() {
    let cfg = &scenarios()[4].1;
    let [(_, ud), (_, nc), _] = generate(cfg);
    assert_eq!(
        py(&nc, "d"),
        r#"{"version": 2, "ethernets": {"eth0": {"dhcp4": true, "optional": true}}}"#
    );
    let noble = NodeCloudConfig {
        release: Release::Noble,
        ..cfg.clone()
    };
    let nc = cloudinit::network_config(&noble).unwrap();
    assert_eq!(
        py(&nc, "d"),
        r#"{"network": {"version": 2, "ethernets": {"eth0": {"dhcp4": true, "optional": true}}}}"#
    );
    assert_eq!(py(&ud, "['fqdn' in d, 'timezone' in d]"), "[false, false]");
}

#[test]
fn extra_user_data_is_deep_merged() {
    let cfg = &scenarios()[5].1;
    let [(_, ud), _, _] = generate(cfg);
    assert_eq!(py(&ud, "d['packages']"), r#"["nfs-common", "open-iscsi"]"#);
    assert_eq!(py(&ud, "d['manage_etc_hosts']"), "false");
    assert_eq!(
        py(&ud, "d['write_files'][0]['content']"),
        r#""overlay\nbr_netfilter\n""#
    );
    assert_eq!(py(&ud, "d['write_files'][0]['permissions']"), r#""0644""#);
    assert_eq!(
        py(&ud, "d['runcmd']"),
        r#"[["sysctl", "--system"], "echo 'done: ok' > /run/done"]"#
    );
    let keys = py(&ud, "d['ssh_authorized_keys']");
    assert!(
        keys.starts_with(&format!("[\"{KEY_A}\", \"{KEY_B}\", \"ssh-ed25519 ")),
        "{keys}"
    );
}

#[test]
fn odd_strings_survive_intact() {
    let cfg = &scenarios()[6].1;
    let [(_, ud), (_, nc), _] = generate(cfg);
    assert_eq!(
        py(&ud, "d['ssh_authorized_keys']"),
        serde_json_list(&[ODD_KEY])
    );
    assert_eq!(
        py(&ud, "d['timezone']"),
        r#""America/Argentina/Buenos_Aires""#
    );
    assert_eq!(
        py(
            &nc,
            "d['network']['ethernets']['eth0']['nameservers']['search']"
        ),
        r#"["cluster.lan", "-lab.example", "x #y"]"#
    );
}

#[test]
fn yaml_1_1_lookalikes_are_refused_or_read_back_as_text() {
    let must_refuse = [
        "on",
        "Off",
        "yes",
        "No",
        "12:30",
        "1_000",
        "2024-01-31",
        "2024-1-3 4:05:06",
        "1:30.5",
        "=",
        "<<",
    ];
    let lookalikes = [
        "1.2.3.4",
        "0644",
        "0b101",
        "0x1F",
        "0o17",
        "1e3",
        "1.5e+3",
        "1.5e3",
        ".5",
        "-.5",
        "+1",
        "12:60",
        "1:2:3",
        "2024-01-31x",
        "v1.0",
        "+",
        "-",
        ".",
        "~",
        "null",
        "NULL",
        "",
        "y",
        "n",
        "true",
        ".inf",
        ".NaN",
        "1_0.5",
    ];
    for s in must_refuse.iter().chain(&lookalikes) {
        let cfg = NodeCloudConfig {
            extra_user_data: Some(serde_yaml_ng::Value::Mapping(
                [(
                    "runcmd".into(),
                    serde_yaml_ng::Value::Sequence(vec![(*s).into()]),
                )]
                .into_iter()
                .collect(),
            )),
            ..lan(Release::Focal)
        };
        match cloudinit::user_data(&stock(Release::Focal), &cfg) {
            Ok(ud) => {
                assert!(!must_refuse.contains(s), "{s:?} accepted:\n{ud}");
                assert_eq!(py(&ud, "d['runcmd']"), serde_json_list(&[s]), "{s:?}");
            }
            Err(err) => {
                assert!(
                    err.to_string().contains("extra user-data.runcmd[0]"),
                    "{s:?}: {err}"
                );
                // Refused only when PyYAML really reads the plain form as something other than text.
                assert!(!pyyaml_reads_plain_as_text(s), "{s:?}");
            }
        }
    }
}

/// Whether PyYAML reads `s`, written as a plain scalar, back as the same text.
fn pyyaml_reads_plain_as_text(s: &str) -> bool {
    let script = "import sys, yaml\ntry:\n    print(yaml.safe_load('v: ' + sys.argv[1])['v'] == sys.argv[1])\nexcept yaml.YAMLError:\n    print(False)";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, s])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

/// A JSON list of strings as Python's json.dumps writes it.
fn serde_json_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", quoted.join(", "))
}
