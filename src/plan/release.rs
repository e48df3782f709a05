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
            .find(|r| {
                version_id == r.version_id()
                    || version_id.starts_with(&format!("{}.", r.version_id()))
            })
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

/// The fields of `/etc/os-release` pi-image uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, e.g. "ubuntu" ("linux" when absent, as os-release(5) specifies).
    pub id: String,
    /// `VERSION_ID`, e.g. "20.04".
    pub version_id: String,
    /// `VERSION_CODENAME`, e.g. "focal".
    pub version_codename: Option<String>,
    /// `PRETTY_NAME`, e.g. "Ubuntu 20.04.5 LTS".
    pub pretty_name: Option<String>,
}

impl OsRelease {
    /// Parses os-release text (`KEY=value` lines, values optionally quoted). `None` when
    /// `VERSION_ID` is missing.
    pub fn parse(text: &str) -> Option<OsRelease> {
        let mut id = None;
        let mut version_id = None;
        let mut version_codename = None;
        let mut pretty_name = None;
        for line in text.lines().map(str::trim) {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = unquote(value.trim());
            match key.trim() {
                "ID" => id = Some(value),
                "VERSION_ID" => version_id = Some(value),
                "VERSION_CODENAME" => version_codename = Some(value),
                "PRETTY_NAME" => pretty_name = Some(value),
                _ => {}
            }
        }
        Some(OsRelease {
            id: id.unwrap_or_else(|| "linux".into()),
            version_id: version_id?,
            version_codename,
            pretty_name,
        })
    }

    /// The Ubuntu release this is, when it is one pi-image knows.
    pub fn release(&self) -> Option<Release> {
        if self.id == "ubuntu" {
            Release::from_version_id(&self.version_id)
        } else {
            None
        }
    }
}

/// Removes shell-style quotes: `"..."` with backslash escapes, or `'...'` verbatim.
fn unquote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        let mut out = String::new();
        let mut chars = v[1..v.len() - 1].chars();
        while let Some(c) = chars.next() {
            match (c, chars.clone().next()) {
                ('\\', Some(n @ ('"' | '\\' | '$' | '`'))) => {
                    out.push(n);
                    chars.next();
                }
                _ => out.push(c),
            }
        }
        out
    } else if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        v[1..v.len() - 1].to_owned()
    } else {
        v.to_owned()
    }
}

/// Why a base image's release is not one pi-image can patch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// `/etc/os-release` names a system pi-image does not support.
    #[error(
        "the root filesystem holds {described}; pi-image supports Ubuntu 20.04, 22.04 and 24.04"
    )]
    Unsupported {
        /// The system, as os-release describes it.
        described: String,
    },
    /// The boot files do not look like that release's stock boot files.
    #[error(
        "/etc/os-release says {described}, but the boot partition's config.txt {} `include usercfg.txt`, unlike that release's stock boot files",
        if *includes_usercfg { "has" } else { "lacks" }
    )]
    BootFilesDisagree {
        /// The system, as os-release describes it.
        described: String,
        /// Whether config.txt includes usercfg.txt.
        includes_usercfg: bool,
    },
}

/// The release a base image holds: what its `/etc/os-release` says, checked against how its
/// boot partition is laid out (20.04's `config.txt` ends with `include usercfg.txt`, later
/// releases have no usercfg.txt), since that decides where boot settings must go.
pub fn detect(os_release: &OsRelease, config_txt: &str) -> Result<Release, ReleaseError> {
    let described = os_release
        .pretty_name
        .clone()
        .unwrap_or_else(|| format!("{} {}", os_release.id, os_release.version_id));
    let Some(release) = os_release.release() else {
        return Err(ReleaseError::Unsupported { described });
    };
    let includes_usercfg = config_txt
        .lines()
        .any(|l| l.trim() == "include usercfg.txt");
    if includes_usercfg != release.uses_usercfg() {
        return Err(ReleaseError::BootFilesDisagree {
            described,
            includes_usercfg,
        });
    }
    Ok(release)
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ubuntu {} ({})", self.version_id(), self.codename())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(version_id: &str) -> OsRelease {
        OsRelease::parse(&format!("ID=ubuntu\nVERSION_ID=\"{version_id}\"\n")).unwrap()
    }

    #[test]
    fn os_release_decides_and_the_boot_files_must_agree() {
        let focal_cfg = "[all]\ninclude syscfg.txt\ninclude usercfg.txt\n";
        assert_eq!(detect(&os("20.04"), focal_cfg), Ok(Release::Focal));
        assert_eq!(
            detect(&os("22.04"), "[all]\nkernel=vmlinuz\n"),
            Ok(Release::Jammy)
        );
        let error = |os, cfg| detect(&os, cfg).unwrap_err().to_string();
        assert!(error(os("22.04"), focal_cfg).contains("has `include usercfg.txt`"));
        assert!(error(os("20.04"), "").contains("lacks"));
        assert!(error(os("18.04"), focal_cfg).contains("supports Ubuntu 20.04"));
    }

    #[test]
    fn os_release_is_parsed() {
        let text = "NAME=\"Ubuntu\"\nVERSION=\"20.04.5 LTS (Focal Fossa)\"\nID=ubuntu\nID_LIKE=debian\n\
                    PRETTY_NAME=\"Ubuntu 20.04.5 LTS\"\nVERSION_ID=\"20.04\"\nVERSION_CODENAME=focal\n";
        let os = OsRelease::parse(text).unwrap();
        assert_eq!(os.id, "ubuntu");
        assert_eq!(os.version_id, "20.04");
        assert_eq!(os.version_codename.as_deref(), Some("focal"));
        assert_eq!(os.pretty_name.as_deref(), Some("Ubuntu 20.04.5 LTS"));
        assert_eq!(os.release(), Some(Release::Focal));
        assert_eq!(unquote(r#""a \"b\" \\ c""#), r#"a "b" \ c"#);
        assert_eq!(unquote("'x y'"), "x y");
        assert!(OsRelease::parse("ID=ubuntu\n").is_none());
    }

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
