//! Temporary files and directories pi-image creates beside their final paths.
//!
//! - **Names** are `.<name>.<pid>.<16 hex digits>.tmp`: hidden, unpredictable (the digits come
//!   from `getrandom(2)`), and carrying the owner's process id, so a later run can tell a
//!   leftover of a dead run from a live run's file.
//! - **Creation** is exclusive and never follows a symlink (`O_CREAT|O_EXCL|O_NOFOLLOW`), so a
//!   file or link planted at the name makes the creation fail instead of being written through.
//! - **Registration**: every temp is registered while it exists, so that SIGINT/SIGTERM
//!   ([`crate::io::signal`]) can remove them all before the process exits.
//! - **Sweeping**: [`sweep_stale`] removes the temps (files or directories) whose owner process
//!   is gone: what a SIGKILL, a crash or a power cut left behind.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// What a registered temp is, for removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

/// Every temp that exists now, by registration number.
static REGISTRY: Mutex<BTreeMap<u64, (PathBuf, Kind)>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
/// Directories already swept by this process.
static SWEPT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn registry() -> MutexGuard<'static, BTreeMap<u64, (PathBuf, Kind)>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A registered temp: removed by SIGINT/SIGTERM while this value lives. Dropping it only
/// unregisters (the owner removes or renames the temp itself).
#[derive(Debug)]
pub struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        registry().remove(&self.0);
    }
}

fn register(path: &Path, kind: Kind) -> Registered {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    registry().insert(id, (path.to_owned(), kind));
    Registered(id)
}

/// The registry, locked until the process exits.
pub(super) struct Held(#[allow(dead_code)] MutexGuard<'static, BTreeMap<u64, (PathBuf, Kind)>>);

/// Remove every registered temp and keep the registry locked, so that nothing registers or
/// renames under it while the process exits: for the signal handler only. Returns how many
/// were removed.
pub(super) fn remove_all_and_hold() -> (usize, Held) {
    let reg = registry();
    let mut removed = 0;
    for (path, kind) in reg.values() {
        let gone = match kind {
            Kind::File => fs::remove_file(path),
            Kind::Dir => fs::remove_dir_all(path),
        };
        if gone.is_ok() {
            removed += 1;
        }
    }
    (removed, Held(reg))
}

/// 16 random hex digits from `getrandom(2)`.
pub fn random_hex() -> io::Result<String> {
    let mut bytes = [0u8; 8];
    let mut got = 0;
    while got < bytes.len() {
        // SAFETY: getrandom writes at most the given length into the buffer we own.
        let n = unsafe { libc::getrandom(bytes[got..].as_mut_ptr().cast(), bytes.len() - got, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            got += n as usize;
        }
    }
    Ok(super::hex(&bytes))
}

/// A fresh temp name beside `target` (in the same directory, so a rename is atomic):
/// `.<file name>.<pid>.<random>.tmp`.
pub fn temp_beside(target: &Path) -> io::Result<PathBuf> {
    let dir = parent_dir(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        random_hex()?
    )))
}

/// The directory of `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// A new temp file beside `target`, open for reading and writing: created exclusively, never
/// through a symlink, registered for removal on SIGINT/SIGTERM. The first temp created in a
/// directory also sweeps that directory's stale temps ([`sweep_stale`]).
pub fn create_file_beside(target: &Path) -> io::Result<(PathBuf, File, Registered)> {
    let _ = sweep_stale(&parent_dir(target));
    let path = temp_beside(target)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)?;
    let reg = register(&path, Kind::File);
    Ok((path, file, reg))
}

/// A new temp directory beside `target` (`mkdir` fails on anything already at the name, a
/// symlink included), registered for removal (with its contents) on SIGINT/SIGTERM.
pub fn create_dir_beside(target: &Path) -> io::Result<(PathBuf, Registered)> {
    let _ = sweep_stale(&parent_dir(target));
    let path = temp_beside(target)?;
    fs::create_dir(&path)?;
    let reg = register(&path, Kind::Dir);
    Ok((path, reg))
}

/// The owner's pid of a temp named by this module (`.<name>.<pid>.<16 hex>.tmp`), or by
/// earlier versions of pi-image (`.<name>.<pid>.tmp`); `None` for any other name.
pub fn owner_pid(file_name: &str) -> Option<u32> {
    let inner = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (rest, last) = inner.rsplit_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (name, pid) = if last.len() == 16 && last.bytes().all(|b| b.is_ascii_hexdigit()) {
        rest.rsplit_once('.')?
    } else {
        (rest, last)
    };
    if name.is_empty() || !digits(pid) {
        return None;
    }
    pid.parse().ok()
}

/// True while process `pid` exists (also when it belongs to another user).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Remove the temps in `dir` (files, or directories with their contents) whose owner process is
/// gone, once per directory and process. Returns how many were removed. Symlinks and anything
/// not named like a temp are left alone.
pub fn sweep_stale(dir: &Path) -> io::Result<usize> {
    {
        let mut swept = SWEPT.lock().unwrap_or_else(PoisonError::into_inner);
        if !swept
            .get_or_insert_with(HashSet::new)
            .insert(dir.to_owned())
        {
            return Ok(0);
        }
    }
    let mut removed = 0;
    for temp in temps_in(dir)? {
        if temp.owner == std::process::id() || pid_alive(temp.owner) {
            continue;
        }
        let result = if temp.is_dir {
            fs::remove_dir_all(&temp.path)
        } else {
            fs::remove_file(&temp.path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// A temp file or directory found in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundTemp {
    /// Its path.
    pub path: PathBuf,
    /// The process that made it.
    pub owner: u32,
    /// A directory (else a regular file).
    pub is_dir: bool,
}

/// The temp files and directories in `dir` (none if it does not exist); symlinks and anything
/// else are left out.
pub fn temps_in(dir: &Path) -> io::Result<Vec<FoundTemp>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(owner) = entry.file_name().to_str().and_then(owner_pid) else {
            continue;
        };
        let ft = entry.file_type()?;
        if ft.is_file() || ft.is_dir() {
            out.push(FoundTemp {
                path: entry.path(),
                owner,
                is_dir: ft.is_dir(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_the_pid_and_are_unpredictable() {
        let a = temp_beside(Path::new("out/pi1.img")).unwrap();
        let b = temp_beside(Path::new("out/pi1.img")).unwrap();
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(".pi1.img.") && name.ends_with(".tmp"),
            "{name}"
        );
        assert_eq!(owner_pid(name), Some(std::process::id()));
        assert_eq!(owner_pid(".base.raw.123.tmp"), Some(123));
        for other in [
            "pi1.img",
            ".pi1.img",
            "..123.tmp",
            ".x.12a.tmp",
            ".x.tmp",
            "x.1.tmp",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn creation_never_follows_a_planted_link_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let (path, _file, _reg) = create_file_beside(&dir.path().join("x.img")).unwrap();
        // The same name again (a planted file or link) is refused, never opened.
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn stale_temps_of_dead_owners_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        // pid_max is at most 2^22: this pid cannot exist.
        let dead = ".pi1.img.99999999.0123456789abcdef.tmp";
        let live = format!(".pi2.img.{}.0123456789abcdef.tmp", std::process::id());
        fs::write(p.join(dead), b"x").unwrap();
        fs::write(p.join(&live), b"x").unwrap();
        fs::create_dir(p.join(".flash.99999999.0123456789abcdef.tmp")).unwrap();
        fs::write(p.join(".flash.99999999.0123456789abcdef.tmp/pi1.img"), b"x").unwrap();
        fs::write(p.join(".base.raw.99999999.tmp"), b"x").unwrap();
        fs::write(p.join("pi1.img"), b"x").unwrap();
        std::os::unix::fs::symlink("/", p.join(".l.99999999.tmp")).unwrap();
        assert_eq!(sweep_stale(p).unwrap(), 3);
        let mut left: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [".l.99999999.tmp".to_string(), live, "pi1.img".into()]
        );
        // Once per directory and process.
        fs::write(p.join(dead), b"x").unwrap();
        assert_eq!(sweep_stale(p).unwrap(), 0);
    }
}
