//! scripts/deps.sh, the system-package check `make demo`, `make test` and .ci/run share, run
//! against fake `dpkg-query`, `apt-get`, `sudo` and `id` on a PATH holding nothing else (plus
//! the real awk, dirname and env it uses): what it installs, how, and what it says when it
//! cannot. And the one list (scripts/deps.txt) is the one everything uses, with names apt knows.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo;

/// Every package of scripts/deps.txt for `groups` (`build`, `test`), in file order.
fn packages(groups: &[&str]) -> Vec<String> {
    fs::read_to_string(repo().join("scripts/deps.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (p, g) = (w.next()?, w.next()?);
            groups.contains(&g).then(|| p.to_string())
        })
        .collect()
}

/// A PATH directory with the fakes (and, if `sudo`, a fake sudo) and links to the real tools the
/// script needs.
struct FakeSystem {
    dir: tempfile::TempDir,
}

impl FakeSystem {
    fn new(sudo: bool, dpkg: bool) -> FakeSystem {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        for tool in ["awk", "dirname", "env"] {
            let real = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap();
            symlink(real, bin.join(tool)).unwrap();
        }
        let mut fakes = vec![
            ("id", "#!/bin/sh\n[ \"$1\" = -u ] && echo \"$FAKE_UID\"\n"),
            (
                "apt-get",
                "#!/bin/sh\necho \"apt-get $*\" >> \"$LOG\"\nexit \"${APT_RC:-0}\"\n",
            ),
        ];
        if dpkg {
            // Like dpkg-query -W: a line per installed package; unknown ones go to stderr.
            fakes.push((
                "dpkg-query",
                "#!/bin/sh\nrc=0\nfor p in \"$@\"; do case \"$p\" in -*) continue ;; esac\n\
                 case \" $INSTALLED \" in *\" $p \"*) echo \"$p installed\" ;;\n\
                 *) echo \"dpkg-query: no packages found matching $p\" >&2; rc=1 ;; esac; done\nexit $rc\n",
            ));
        }
        if sudo {
            fakes.push((
                "sudo",
                "#!/bin/sh\necho \"sudo $*\" >> \"$LOG\"\nexec \"$@\"\n",
            ));
        }
        for (name, text) in fakes {
            let p = bin.join(name);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        FakeSystem { dir }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Run `scripts/deps.sh group` as user `uid` with `installed` installed: (exit status,
    /// stderr, the log of apt-get and sudo calls).
    fn run(
        &self,
        group: &str,
        uid: u32,
        installed: &[String],
        env: &[(&str, &str)],
    ) -> (i32, String, String) {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg(repo().join("scripts/deps.sh"))
            .arg(group)
            .env_clear()
            .env("PATH", self.dir.path().join("bin"))
            .env("FAKE_UID", uid.to_string())
            .env("INSTALLED", installed.join(" "))
            .env("LOG", self.log());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            fs::read_to_string(self.log()).unwrap_or_default(),
        )
    }
}

fn all_but(missing: &[&str]) -> Vec<String> {
    packages(&["build", "test", "boot"])
        .into_iter()
        .filter(|p| !missing.contains(&p.as_str()))
        .collect()
}

#[test]
fn nothing_missing_means_nothing_done_and_nothing_said() {
    let sys = FakeSystem::new(true, true);
    assert_eq!(
        sys.run("test", 1000, &all_but(&[]), &[]),
        (0, String::new(), String::new())
    );
    // Test-only packages are not needed to build.
    assert_eq!(
        sys.run("build", 1000, &all_but(&["zsh", "fish"]), &[]),
        (0, String::new(), String::new())
    );
    // QEMU is needed to boot nodes (preview's tests), not by `make test`.
    assert_eq!(
        sys.run("test", 1000, &all_but(&["qemu-system-arm"]), &[]),
        (0, String::new(), String::new())
    );
    let (rc, err, _) = sys.run("boot", 1000, &all_but(&["qemu-system-arm"]), &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains(": qemu-system-arm (sudo apt-get install"),
        "{err}"
    );
}

#[test]
fn missing_packages_are_installed_with_sudo_in_one_line() {
    let sys = FakeSystem::new(true, true);
    let (rc, err, log) = sys.run("test", 1000, &all_but(&["gcc", "zsh"]), &[]);
    assert_eq!(rc, 0, "{err}");
    let list = repo().join("scripts/deps.txt");
    assert_eq!(
        err,
        format!(
            "pi-image: installing the missing system packages to build pi-image and run its tests \
             (see {}): gcc zsh (sudo apt-get install -y --no-install-recommends gcc zsh)\n",
            list.display()
        )
    );
    assert_eq!(
        log,
        "sudo apt-get update -qq\napt-get update -qq\n\
         sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc zsh -qq\n\
         apt-get install -y --no-install-recommends gcc zsh -qq\n"
    );
}

#[test]
fn root_installs_without_sudo() {
    let sys = FakeSystem::new(false, true);
    let (rc, err, log) = sys.run("build", 0, &all_but(&["libext2fs-dev"]), &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains(": libext2fs-dev (apt-get install"), "{err}");
    assert_eq!(
        log,
        "apt-get update -qq\napt-get install -y --no-install-recommends libext2fs-dev -qq\n"
    );
}

#[test]
fn without_sudo_or_apt_it_stops_with_the_exact_command() {
    let sys = FakeSystem::new(false, true);
    let (rc, err, log) = sys.run("build", 1000, &all_but(&["gcc", "pkg-config"]), &[]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("missing system packages to build pi-image")
            && err.ends_with(
                "Install them as root: apt-get install -y --no-install-recommends gcc pkg-config\n"
            ),
        "{err}"
    );
    assert_eq!(log, "", "nothing may be run");

    // apt-get fails (no network, say): the command to run by hand.
    let sys = FakeSystem::new(true, true);
    let (rc, err, _) = sys.run("build", 1000, &all_but(&["gcc"]), &[("APT_RC", "100")]);
    assert_eq!(rc, 1);
    assert!(
        err.ends_with(
            "pi-image: installing failed; run it yourself: sudo apt-get install -y --no-install-recommends gcc\n"
        ),
        "{err}"
    );

    // Not Debian: the packages to look for, and how to go on.
    let sys = FakeSystem::new(true, false);
    let (rc, err, log) = sys.run("build", 1000, &[], &[]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("not Debian or Ubuntu")
            && err.contains(&packages(&["build"]).join(" "))
            && err.contains("PI_IMAGE_SKIP_DEPS=1"),
        "{err}"
    );
    assert_eq!(log, "");
    assert_eq!(
        sys.run("build", 1000, &[], &[("PI_IMAGE_SKIP_DEPS", "1")]),
        (0, String::new(), String::new())
    );
    assert_eq!(sys.run("everything", 1000, &[], &[]).0, 2);
}

#[test]
fn make_ci_and_the_workflow_use_the_one_list_of_real_packages() {
    let make = fs::read_to_string(repo().join("Makefile")).unwrap();
    assert!(
        make.contains("\tscripts/deps.sh build\n")
            && make.contains("\tscripts/deps.sh test\n")
            && make.contains("\tscripts/deps.sh boot\n")
    );
    let ci = fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(
        ci.contains("scripts/deps.sh boot") && !ci.contains("apt-get install"),
        "{ci}"
    );
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains("scripts/deps.txt")
            && !readme.contains("apt-get install -y build-essential")
    );
    let all = packages(&["build", "test", "boot"]);
    assert!(all.len() > 20 && all.contains(&"python3-jsonschema".to_string()));
    match Command::new("apt-cache").arg("--version").output() {
        Ok(o) if o.status.success() => {
            for p in &all {
                let ok = Command::new("apt-cache")
                    .args(["show", "--no-all-versions", p])
                    .output()
                    .unwrap();
                assert!(ok.status.success(), "apt does not know the package {p}");
            }
        }
        _ => eprintln!("SKIPPED: no apt-cache here to check the package names"),
    }
}
