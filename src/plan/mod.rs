//! The plan of edits for one node: from the profile's node, the base image's release and its stock
//! boot files to the new contents of those files. Pure: no I/O, so it is tested on text alone;
//! [`crate::build`] reads the stock files and applies the plan.

pub mod cloudinit;
pub mod ids;
pub mod release;

pub use self::ids::{disk_id, gpt_disk_guid, gpt_guid, gpt_partition_guid};

use std::collections::BTreeMap;

use self::cloudinit::NodeCloudConfig;
use crate::bootconf::{cmdline, configtxt};
use crate::plan::release::Release;
use crate::profile::{Node, PartitionScheme, Target};

/// Kernel parameters Kubernetes needs on a Raspberry Pi: memory cgroups are off by default there.
pub const KUBERNETES_CMDLINE: [&str; 3] = [
    "cgroup_enable=cpuset",
    "cgroup_enable=memory",
    "cgroup_memory=1",
];

/// Boot-partition files the plan reads from the base image.
pub const STOCK_FILES: [&str; 4] = ["config.txt", "usercfg.txt", "cmdline.txt", "user-data"];

/// Errors planning a node.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A stock boot file the plan needs is missing from the base image.
    #[error("the base image's boot partition has no {0} (is this an Ubuntu Raspberry Pi image?)")]
    MissingStockFile(&'static str),
    /// Generating the cloud-init files failed.
    #[error("cloud-init for node {node}: {source}")]
    CloudInit {
        /// The node.
        node: String,
        /// What went wrong.
        source: cloudinit::CloudInitError,
    },
    /// Converting the profile's extra user-data to YAML failed.
    #[error("node {node}: user_data cannot be expressed as YAML: {message}")]
    UserData {
        /// The node.
        node: String,
        /// What went wrong.
        message: String,
    },
}

/// The script (on the boot partition, so it sits beside the kernel it decompresses) that an apt
/// hook runs after every package operation: flash-kernel rewrites `vmlinuz` on kernel updates,
/// and a node booting `kernel=vmlinux` must get the new kernel decompressed too.
pub const DECOMPRESS_SCRIPT_PATH: &str = "auto_decompress_kernel";
/// Where the apt hook goes in the root filesystem.
pub const DECOMPRESS_HOOK_PATH: &str = "/etc/apt/apt.conf.d/999_decompress_rpi_kernel";

const DECOMPRESS_SCRIPT: &str = r#"#!/bin/sh
# Installed by pi-image for decompress_kernel = true: this node's firmware boots the
# decompressed kernel (kernel=vmlinux). Run by /etc/apt/apt.conf.d/999_decompress_rpi_kernel
# after every dpkg run; when vmlinuz changed (a kernel update), decompress it again.
set -e
boot=${PI_IMAGE_BOOT_DIR:-/boot/firmware}  # overridable for tests
[ -f "$boot/vmlinuz" ] || exit 0
sum=$(sha256sum "$boot/vmlinuz" | cut -d' ' -f1)
if [ -f "$boot/vmlinux" ] && [ "$(cat "$boot/vmlinuz.sha256" 2>/dev/null)" = "$sum" ]; then
    exit 0
fi
zcat "$boot/vmlinuz" > "$boot/vmlinux.new"
# A decompressed arm64 kernel Image has the magic "ARMd" at byte 0x38.
if [ "$(dd if="$boot/vmlinux.new" bs=1 skip=56 count=4 2>/dev/null)" != "ARMd" ]; then
    rm -f "$boot/vmlinux.new"
    echo "auto_decompress_kernel: $boot/vmlinuz is not a gzip arm64 kernel; vmlinux left as it was" >&2
    exit 1
fi
mv "$boot/vmlinux.new" "$boot/vmlinux"
echo "$sum" > "$boot/vmlinuz.sha256"
sync
"#;

const DECOMPRESS_HOOK: &str = "// Installed by pi-image (decompress_kernel = true): keep /boot/firmware/vmlinux in step\n// with vmlinuz after kernel updates.\nDPkg::Post-Invoke { \"/bin/sh /boot/firmware/auto_decompress_kernel\"; };\n";

/// A file the plan puts into the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsFile {
    /// Absolute path in the root filesystem.
    pub path: String,
    /// Content.
    pub content: String,
    /// Permission bits; owned by root.
    pub mode: u32,
}

/// Everything the build writes for one node, decided up front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// The MBR disk identifier, unique per cluster and node.
    pub disk_id: u32,
    /// Boot-partition files to create or replace, path → content, in a fixed order.
    pub boot_files: BTreeMap<String, String>,
    /// Write `vmlinux`, the gzip-decoded `vmlinuz`, to the boot partition.
    pub decompress_kernel: bool,
    /// Files for the root filesystem (besides overlays).
    pub rootfs_files: Vec<RootfsFile>,
}

/// Plan the boot-partition edits for `node`.
///
/// `stock` reads a stock file of the base image's boot partition by name (see [`STOCK_FILES`]);
/// `root_partition` is the number of the `writable` partition, for `root=PARTUUID=<id>-NN`.
pub fn plan_node(
    cluster: &str,
    node: &Node,
    release: Release,
    root_partition: u32,
    stock: &dyn Fn(&str) -> Option<String>,
) -> Result<NodePlan, PlanError> {
    let need = |name: &'static str| stock(name).ok_or(PlanError::MissingStockFile(name));
    let disk_id = disk_id(cluster, &node.name);
    let mut boot_files = BTreeMap::new();

    // config.txt: 20.04 keeps user settings in usercfg.txt (included last, so they win);
    // 22.04+ has no usercfg.txt and takes them in config.txt.
    let mut config = need("config.txt")?;
    let settings_file = if release.uses_usercfg() {
        "usercfg.txt"
    } else {
        "config.txt"
    };
    let mut settings = if release.uses_usercfg() {
        stock("usercfg.txt").unwrap_or_default()
    } else {
        config.clone()
    };
    for (section, key, value) in config_settings(node) {
        settings = configtxt::set(&settings, &section, &key, &value);
    }
    if release.uses_usercfg() {
        if node.target == Target::Ssd {
            // U-Boot (20.04's Pi 4 path) cannot read USB disks; the firmware loads the kernel
            // itself, and the device tree must not be pinned where a large kernel lands.
            config = configtxt::confine_key(&config, "device_tree_address", &["pi2", "pi3", "pi0"]);
        }
        boot_files.insert("config.txt".to_string(), config);
    }
    boot_files.insert(settings_file.to_string(), settings);

    // The kernel names a GPT partition by its unique GUID, an MBR one by disk id and number.
    let root = match node.partition_table {
        PartitionScheme::Mbr => format!("root=PARTUUID={disk_id:08x}-{root_partition:02}"),
        PartitionScheme::Gpt => format!(
            "root=PARTUUID={}",
            gpt_partition_guid(cluster, &node.name, root_partition)
        ),
    };
    let mut tokens: Vec<&str> = vec![root.as_str()];
    if node.kubernetes {
        tokens.extend(KUBERNETES_CMDLINE);
    }
    tokens.extend(node.cmdline.iter().map(String::as_str));
    boot_files.insert(
        "cmdline.txt".to_string(),
        cmdline::apply(&need("cmdline.txt")?, &tokens, &[]),
    );

    let cloud = cloud_config(node, release)?;
    let cloud_err = |source| PlanError::CloudInit {
        node: node.name.clone(),
        source,
    };
    let user_data = cloudinit::user_data(&need("user-data")?, &cloud).map_err(cloud_err)?;
    let network_config = cloudinit::network_config(&cloud).map_err(cloud_err)?;
    let instance_id = cloudinit::instance_id(&node.name, &user_data, &network_config);
    boot_files.insert(
        "meta-data".to_string(),
        cloudinit::meta_data(&cloud, &instance_id).map_err(cloud_err)?,
    );
    boot_files.insert("user-data".to_string(), user_data);
    boot_files.insert("network-config".to_string(), network_config);

    let mut rootfs_files = Vec::new();
    if node.decompress_kernel {
        boot_files.insert(
            DECOMPRESS_SCRIPT_PATH.to_string(),
            DECOMPRESS_SCRIPT.to_string(),
        );
        rootfs_files.push(RootfsFile {
            path: DECOMPRESS_HOOK_PATH.to_string(),
            content: DECOMPRESS_HOOK.to_string(),
            mode: 0o644,
        });
    }
    Ok(NodePlan {
        disk_id,
        boot_files,
        decompress_kernel: node.decompress_kernel,
        rootfs_files,
    })
}

/// The config.txt settings for a node, as (section, key, value), in the order they are applied.
fn config_settings(node: &Node) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut pi4 = |key: &str, value: String| out.push(("pi4".to_string(), key.to_string(), value));
    if let Some(oc) = node.overclock {
        pi4("arm_freq", oc.arm_freq.to_string());
        pi4("over_voltage", oc.over_voltage.to_string());
        if let Some(gpu) = oc.gpu_freq {
            pi4("gpu_freq", gpu.to_string());
        }
    }
    if node.target == Target::Ssd {
        let kernel = if node.decompress_kernel {
            "vmlinux"
        } else {
            "vmlinuz"
        };
        pi4("kernel", kernel.to_string());
        pi4("initramfs", "initrd.img followkernel".to_string());
    }
    for (section, keys) in &node.config_txt {
        for (key, value) in keys {
            out.push((section.clone(), key.clone(), value.clone()));
        }
    }
    out
}

fn cloud_config(node: &Node, release: Release) -> Result<NodeCloudConfig, PlanError> {
    let extra_user_data = match &node.user_data {
        Some(table) => Some(
            serde_yaml_ng::to_value(table).map_err(|e| PlanError::UserData {
                node: node.name.clone(),
                message: e.to_string(),
            })?,
        ),
        None => None,
    };
    Ok(NodeCloudConfig {
        release,
        hostname: node.hostname.clone(),
        domain: node.domain.clone(),
        user: node.user.clone(),
        ssh_keys: node.ssh_keys.clone(),
        password_hash: node.password_hash.clone(),
        timezone: node.timezone.clone(),
        network: node.network.clone(),
        extra_user_data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use std::path::Path;

    const STOCK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bootfiles/");

    fn stock(release: &str) -> impl Fn(&str) -> Option<String> {
        let dir = format!("{STOCK}{release}");
        move |name| std::fs::read_to_string(Path::new(&dir).join(name)).ok()
    }

    fn node(extra: &str) -> Node {
        let text =
            format!("[cluster]\nname = \"c\"\nbase = \"x.img\"\n[[nodes]]\nname = \"n1\"\n{extra}");
        Profile::parse(Path::new("/nonexistent/p.toml"), &text)
            .unwrap()
            .nodes
            .remove(0)
    }

    #[test]
    fn focal_ssd_goes_to_usercfg_and_confines_the_device_tree_address() {
        let plan = plan_node(
            "c",
            &node("target = \"ssd\"\nkubernetes = true"),
            Release::Focal,
            2,
            &stock("focal-20.04.5"),
        )
        .unwrap();
        let usercfg = &plan.boot_files["usercfg.txt"];
        assert!(
            usercfg.contains("[pi4]\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n"),
            "{usercfg}"
        );
        let read = |name: &str| {
            plan.boot_files
                .get(name)
                .cloned()
                .or_else(|| stock("focal-20.04.5")(name))
        };
        let pi4 = configtxt::effective("config.txt", &read, configtxt::Model::Pi4);
        assert_eq!(pi4.get("kernel"), Some("vmlinuz"));
        assert_eq!(pi4.get("device_tree_address"), None);
        let pi3 = configtxt::effective("config.txt", &read, configtxt::Model::Pi3);
        assert_eq!(pi3.get("kernel"), Some("uboot_rpi_3.bin"));
        assert_eq!(pi3.get("device_tree_address"), Some("0x03000000"));
        let cmdline = &plan.boot_files["cmdline.txt"];
        assert!(cmdline.contains(&format!("root=PARTUUID={:08x}-02 ", plan.disk_id)));
        assert!(
            cmdline.ends_with("cgroup_enable=cpuset cgroup_enable=memory cgroup_memory=1\n"),
            "{cmdline}"
        );
        assert!(
            plan.rootfs_files.is_empty() && !plan.boot_files.contains_key(DECOMPRESS_SCRIPT_PATH)
        );
    }

    #[test]
    fn focal_sd_keeps_the_stock_boot_path() {
        let plan = plan_node("c", &node(""), Release::Focal, 2, &stock("focal-20.04.5")).unwrap();
        assert_eq!(
            plan.boot_files["config.txt"],
            stock("focal-20.04.5")("config.txt").unwrap()
        );
        assert!(!plan.boot_files["usercfg.txt"].contains("kernel="));
        assert!(!plan.boot_files["cmdline.txt"].contains("cgroup"));
    }

    #[test]
    fn jammy_settings_go_into_config_txt() {
        let oc = "target = \"ssd\"\ndecompress_kernel = true\noverclock = { arm_freq = 2000, over_voltage = 6 }";
        let plan = plan_node("c", &node(oc), Release::Jammy, 2, &stock("jammy-current")).unwrap();
        assert!(!plan.boot_files.contains_key("usercfg.txt"));
        let read = |name: &str| plan.boot_files.get(name).cloned();
        let pi4 = configtxt::effective("config.txt", &read, configtxt::Model::Pi4);
        assert_eq!(pi4.get("arm_freq"), Some("2000"));
        assert_eq!(pi4.get("kernel"), Some("vmlinux"));
        assert!(plan.boot_files[DECOMPRESS_SCRIPT_PATH].starts_with("#!/bin/sh\n"));
        assert_eq!(plan.rootfs_files[0].path, DECOMPRESS_HOOK_PATH);
    }

    #[test]
    fn planning_twice_gives_the_same_files() {
        let n = node("target = \"ssd\"\naddress = \"10.0.0.5/24\"\ngateway = \"10.0.0.1\"");
        let a = plan_node("c", &n, Release::Focal, 2, &stock("focal-20.04.5")).unwrap();
        let b = plan_node("c", &n, Release::Focal, 2, &stock("focal-20.04.5")).unwrap();
        assert_eq!(a, b);
    }
}
