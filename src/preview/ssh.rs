//! Logging in to the booted node with OpenSSH's `ssh`, through QEMU's forwarded port on
//! 127.0.0.1, with a private key whose public half is one of the node's keys.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::PreviewError;
use super::checks::key_id;

/// The client.
pub const SSH: &str = "ssh";
/// The Debian/Ubuntu package that has it.
pub const SSH_PACKAGE: &str = "openssh-client";
/// The name the guest's host keys are pinned under in the scratch `known_hosts`.
const HOST_ALIAS: &str = "pi-image-preview";
/// The key files `ssh` itself would try, in `~/.ssh`.
const DEFAULT_KEYS: &[&str] = &["id_ed25519", "id_ecdsa", "id_rsa"];

/// The private key to log in with: `explicit` (whose `.pub`, if there, must be one of `keys`),
/// else the first of `~/.ssh/id_{ed25519,ecdsa,rsa}` whose `.pub` is one of `keys`; `None` when
/// no private key of the node's keys is at hand.
pub fn find_identity(
    explicit: Option<&Path>,
    keys: &[String],
) -> Result<Option<PathBuf>, PreviewError> {
    let wanted: Vec<_> = keys.iter().filter_map(|k| key_id(k)).collect();
    let public_matches = |private: &Path| -> Option<bool> {
        let text = std::fs::read_to_string(pub_path(private)).ok()?;
        Some(
            text.lines()
                .filter_map(key_id)
                .any(|id| wanted.contains(&id)),
        )
    };
    if let Some(path) = explicit {
        if !path.is_file() {
            return Err(PreviewError::Identity {
                path: path.to_owned(),
                problem: "is not a file".into(),
            });
        }
        if public_matches(path) == Some(false) {
            return Err(PreviewError::Identity {
                path: path.to_owned(),
                problem: format!(
                    "its public half {} is none of the keys the node should have",
                    pub_path(path).display()
                ),
            });
        }
        return Ok(Some(path.to_owned()));
    }
    let Some(home) = std::env::var_os("HOME") else {
        return Ok(None);
    };
    Ok(DEFAULT_KEYS
        .iter()
        .map(|name| Path::new(&home).join(".ssh").join(name))
        .find(|p| p.is_file() && public_matches(p) == Some(true)))
}

fn pub_path(private: &Path) -> PathBuf {
    let mut p = private.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// How to reach the guest.
#[derive(Debug, Clone)]
pub struct Login<'a> {
    /// The `ssh` program.
    pub ssh: &'a Path,
    /// The private key.
    pub identity: &'a Path,
    /// The user.
    pub user: &'a str,
    /// The forwarded port on 127.0.0.1.
    pub port: u16,
    /// A `known_hosts` with the guest's host keys (from its console), if it printed them;
    /// without one the host key is not checked (a fresh guest on a loopback port).
    pub known_hosts: Option<&'a Path>,
}

impl Login<'_> {
    fn args(&self, batch: bool) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["-i".into(), self.identity.into()];
        let port = self.port.to_string();
        let mut opts = vec![
            "IdentitiesOnly=yes".to_owned(),
            "ConnectTimeout=10".into(),
            "ServerAliveInterval=5".into(),
            "ServerAliveCountMax=6".into(),
            "LogLevel=ERROR".into(),
        ];
        if batch {
            opts.push("BatchMode=yes".into());
        }
        match self.known_hosts {
            Some(file) => {
                opts.push("StrictHostKeyChecking=yes".into());
                opts.push(format!("HostKeyAlias={HOST_ALIAS}"));
                a.push("-o".into());
                let mut o = OsString::from("UserKnownHostsFile=");
                o.push(file);
                a.push(o);
            }
            None => {
                opts.push("StrictHostKeyChecking=no".into());
                opts.push("UserKnownHostsFile=/dev/null".into());
            }
        }
        for o in opts {
            a.push("-o".into());
            a.push(o.into());
        }
        a.push("-p".into());
        a.push(port.into());
        a.push(format!("{}@127.0.0.1", self.user).into());
        a
    }

    /// Run `script` in the guest, retrying while sshd is not up yet, for at most `wait`.
    /// Returns its stdout, or what ssh said on the last attempt.
    pub fn run(&self, script: &str, wait: Duration) -> Result<String, String> {
        let until = Instant::now() + wait;
        loop {
            let mut cmd = Command::new(self.ssh);
            cmd.args(self.args(true))
                .arg(script)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let (status, out, err) = run_bounded(&mut cmd, Duration::from_secs(60))
                .map_err(|e| format!("{}: {e}", self.ssh.display()))?;
            // ssh exits 255 for its own failures; otherwise the script ran.
            if status.is_some_and(|s| s.code() != Some(255)) {
                return Ok(out);
            }
            let said = err.lines().last().unwrap_or("no answer").trim().to_owned();
            // A refused key does not get better by waiting.
            if said.contains("Permission denied") || Instant::now() >= until {
                return Err(format!(
                    "ssh -i {} -p {} {}@127.0.0.1: {said}",
                    self.identity.display(),
                    self.port,
                    self.user
                ));
            }
            if super::scratch::interrupted() {
                return Err("interrupted".into());
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    /// An interactive session on the user's terminal.
    pub fn interactive(&self) -> std::io::Result<ExitStatus> {
        Command::new(self.ssh).args(self.args(false)).status()
    }

    /// The `ssh` command line, for the user to copy.
    pub fn command_line(&self) -> String {
        let mut line = SSH.to_owned();
        for a in self.args(false) {
            line.push(' ');
            line.push_str(&a.to_string_lossy());
        }
        line
    }
}

/// `known_hosts` lines pinning `host_keys` (`TYPE BASE64 [COMMENT]`) to the preview's alias.
pub fn known_hosts(host_keys: &[String]) -> String {
    host_keys
        .iter()
        .filter_map(|k| key_id(k))
        .map(|(kind, data)| format!("{HOST_ALIAS} {kind} {data}\n"))
        .collect()
}

/// Run `cmd` with its stdout and stderr piped, killing it after `limit`: (status, None when
/// killed), stdout, stderr (each at most 1 MiB kept).
fn run_bounded(
    cmd: &mut Command,
    limit: Duration,
) -> std::io::Result<(Option<ExitStatus>, String, String)> {
    let mut child = cmd.spawn()?;
    let take = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(r) = r {
                let _ = r.take(1 << 20).read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = take(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = take(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    Ok((status, out, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINd3KpW+6WpO3uDAUX7LlKuqf4mtYxWOpRNi+byBhT/q sample";

    #[test]
    fn an_explicit_identity_must_match_the_nodes_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("key");
        std::fs::write(&key, "private").unwrap();
        std::fs::write(tmp.path().join("key.pub"), format!("{KEY}\n")).unwrap();
        assert_eq!(
            find_identity(Some(&key), &[KEY.into()]).unwrap(),
            Some(key.clone())
        );
        let other =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx8sOVzYVu6pgNpw2gEZm6hOEiXsWTjOb8wyNc3P0CB a";
        let e = find_identity(Some(&key), &[other.into()]).unwrap_err();
        assert!(e.to_string().contains("none of the keys"), "{e}");
        let e = find_identity(Some(&tmp.path().join("nope")), &[]).unwrap_err();
        assert!(e.to_string().contains("is not a file"), "{e}");
    }

    #[test]
    fn host_keys_are_pinned_to_the_alias() {
        assert_eq!(
            known_hosts(&[format!("{KEY} root@pi3"), "garbage".into()]),
            "pi-image-preview ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINd3KpW+6WpO3uDAUX7LlKuqf4mtYxWOpRNi+byBhT/q\n"
        );
    }

    #[test]
    fn a_command_that_hangs_is_killed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdout(Stdio::piped()).stderr(Stdio::piped());
        let t = Instant::now();
        let (status, _, _) = run_bounded(&mut cmd, Duration::from_millis(300)).unwrap();
        assert!(status.is_none());
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
