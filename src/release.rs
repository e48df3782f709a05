//! Which Ubuntu release a base image holds, and what that means for patching it.

/// The Ubuntu releases whose Raspberry Pi images pi-image knows how to patch.
///
/// The differences that matter: 20.04 boots the Pi 4 through U-Boot and keeps user boot settings
/// in `usercfg.txt` (included from `config.txt`); 22.04 and later boot the kernel directly and
/// have no `usercfg.txt`, so settings go into `config.txt`. netplan in `network-config` is bare
/// `version: 2` on 20.04 and wrapped in `network:` on 22.04+, where `gateway4` is deprecated in
/// favour of `routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Release {
    /// Ubuntu 20.04 (focal).
    Focal,
    /// Ubuntu 22.04 (jammy).
    Jammy,
    /// Ubuntu 24.04 (noble).
    Noble,
}

impl Release {
    /// The `VERSION_ID` of `/etc/os-release`, e.g. "20.04".
    pub fn version_id(self) -> &'static str {
        match self {
            Release::Focal => "20.04",
            Release::Jammy => "22.04",
            Release::Noble => "24.04",
        }
    }

    /// The `VERSION_CODENAME` of `/etc/os-release`, e.g. "focal".
    pub fn codename(self) -> &'static str {
        match self {
            Release::Focal => "focal",
            Release::Jammy => "jammy",
            Release::Noble => "noble",
        }
    }

    /// The release for a `VERSION_ID` such as "20.04" (point releases like "20.04.5" included).
    pub fn from_version_id(version_id: &str) -> Option<Release> {
        [Release::Focal, Release::Jammy, Release::Noble]
            .into_iter()
            .find(|r| version_id == r.version_id() || version_id.starts_with(&format!("{}.", r.version_id())))
    }

    /// True when user settings belong in `usercfg.txt` (20.04), false when in `config.txt`.
    pub fn uses_usercfg(self) -> bool {
        self == Release::Focal
    }

    /// True when the stock Pi 4 boot path goes through U-Boot (20.04).
    pub fn boots_through_uboot(self) -> bool {
        self == Release::Focal
    }

    /// True when `network-config` is wrapped in a top-level `network:` key (22.04+).
    pub fn wraps_network_config(self) -> bool {
        self != Release::Focal
    }

    /// True when the default route is written as `gateway4` (20.04) rather than `routes` (22.04+).
    pub fn uses_gateway4(self) -> bool {
        self == Release::Focal
    }
}

/// The release a base image holds, judged from its stock boot files: 20.04's config.txt includes
/// `usercfg.txt`; 24.04's user-data sets passwords with the `chpasswd: users:` form, 22.04's with
/// `chpasswd: list:`. Used when the root filesystem's `/etc/os-release` cannot be read.
pub fn detect_from_boot_files(config_txt: &str, user_data: &str) -> Release {
    let includes_usercfg = config_txt.lines().any(|l| l.trim() == "include usercfg.txt");
    if includes_usercfg {
        Release::Focal
    } else if user_data.lines().any(|l| l.trim_start().starts_with("users:")) {
        Release::Noble
    } else {
        Release::Jammy
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ubuntu {} ({})", self.version_id(), self.codename())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ids_round_trip_and_point_releases_match() {
        for r in [Release::Focal, Release::Jammy, Release::Noble] {
            assert_eq!(Release::from_version_id(r.version_id()), Some(r));
        }
        assert_eq!(Release::from_version_id("20.04.5"), Some(Release::Focal));
        assert_eq!(Release::from_version_id("20.040"), None);
        assert_eq!(Release::from_version_id("18.04"), None);
    }
}
