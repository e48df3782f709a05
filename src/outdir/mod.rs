//! The output directory (`--out`, default `out/`): what `build` wrote there and from what
//! ([`record`], `<out>/.pi-image/build.json`), and each node's current image,
//! `<out>/<node>.img`, built first when it is missing or stale ([`current_images`]).
//!
//! Whether an image is current is decided from the hashes of its inputs ([`identity`]): the
//! profile's text, the node's SSH keys, its overlay trees, its EEPROM files, the base image,
//! `SOURCE_DATE_EPOCH` and pi-image's version. File times only decide whether a file's recorded
//! hash can be reused (see [`identity::FileStamp`]), never whether an image is current.
//!
//! Every run that builds into the directory holds a lock on it (`flock` of the directory)
//! exclusively, and one that only reads an image from it holds it shared, so an image is never
//! replaced while it is read. It is taken before the image cache's lock, in every run.

pub mod identity;
pub mod record;

use std::fs::File;
use std::path::{Path, PathBuf};

use self::identity::{FileStamp, HashedFile, Inputs, file_sha256};
use self::record::{ImageEntry, LastBuild, Record};
use crate::base::BaseImage;
use crate::base::cache::{self, Cache, CacheError};
use crate::base::fetch::{self, FetchError, FetchOptions};
use crate::build::overlay::OverlayError;
use crate::build::{self, BuildError, BuildOptions};
use crate::image::ImageError;
use crate::io::{AtPath, PathError};
use crate::profile::{BaseSpec, Node, Profile};

/// Errors finding, checking, building or recording the images of an output directory.
#[derive(Debug, thiserror::Error)]
pub enum OutDirError {
    /// I/O on a named file failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The record could not be moved into place.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// An overlay could not be read to hash it.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// Building a node failed.
    #[error(transparent)]
    Build(Box<BuildError>),
    /// The base could not be fetched.
    #[error(transparent)]
    Fetch(Box<FetchError>),
    /// The image cache could not be read.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The record is not what pi-image writes.
    #[error("{}: {reason} (remove it; the next build writes a new one)", path.display())]
    Record {
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A recorded image is no longer what was built.
    #[error(
        "{}: changed since pi-image built it (sha256 {recorded} then, {now} now); build it again: pi-image build --node {node}",
        image.display()
    )]
    Changed {
        /// The image.
        image: PathBuf,
        /// Its node.
        node: String,
        /// The sha256 recorded when it was built.
        recorded: String,
        /// Its sha256 now.
        now: String,
    },
    /// The image the last build wrote is no longer there.
    #[error(
        "{}: the image the last build wrote for node {node} is gone; build it again: pi-image build --node {node}",
        image.display()
    )]
    Gone {
        /// Where it was.
        image: PathBuf,
        /// Its node.
        node: String,
    },
}

impl From<BuildError> for OutDirError {
    fn from(e: BuildError) -> OutDirError {
        OutDirError::Build(Box::new(e))
    }
}

impl From<FetchError> for OutDirError {
    fn from(e: FetchError) -> OutDirError {
        OutDirError::Fetch(Box::new(e))
    }
}

/// An output directory and its lock, held until dropped.
#[derive(Debug)]
pub struct OutDir {
    dir: PathBuf,
    /// The directory itself, open: the lock is a `flock` on it, so no lock file is left behind
    /// (a failed build leaves nothing in the directory).
    lock: Option<File>,
}

impl OutDir {
    /// `dir` (created if missing), locked for building into it: other runs wait.
    pub fn for_building(dir: &Path) -> Result<OutDir, OutDirError> {
        std::fs::create_dir_all(dir).at(dir)?;
        Ok(OutDir {
            dir: dir.to_owned(),
            lock: Some(take_lock(dir, true)?),
        })
    }

    /// `dir`, locked for reading its images: builds into it wait, other readers don't. A
    /// directory that does not exist is neither locked nor created.
    pub fn for_reading(dir: &Path) -> Result<OutDir, OutDirError> {
        let lock = if dir.is_dir() {
            Some(take_lock(dir, false)?)
        } else {
            None
        };
        Ok(OutDir {
            dir: dir.to_owned(),
            lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Hold the lock shared from now on: building is done, the images are only read.
    pub fn share(&self) -> Result<(), OutDirError> {
        if let Some(f) = &self.lock {
            f.lock_shared().at(&self.dir)?;
        }
        Ok(())
    }
}

/// Lock the directory `dir`, exclusive or shared, waiting (and saying so) while another run
/// holds it.
fn take_lock(dir: &Path, exclusive: bool) -> Result<File, OutDirError> {
    let file = File::open(dir).at(dir)?;
    let tried = if exclusive {
        file.try_lock()
    } else {
        file.try_lock_shared()
    };
    match tried {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "pi-image: waiting for another pi-image run to finish with {}",
                dir.display()
            );
            if exclusive {
                file.lock().at(dir)?;
            } else {
                file.lock_shared().at(dir)?;
            }
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(PathError::new(dir, e).into()),
    }
    Ok(file)
}

/// What node images are built from.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The profile.
    pub profile: &'a Profile,
    /// The base: `--base`, else the profile's.
    pub base: BaseSpec,
    /// The image cache (`None`: the default).
    pub cache_dir: Option<&'a Path>,
    /// How a URL base is fetched.
    pub fetch: FetchOptions,
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: i64,
}

/// A node's image in the output directory.
#[derive(Debug, Clone)]
pub struct NodeImage {
    /// The node.
    pub node: String,
    /// The image file.
    pub path: PathBuf,
    /// What is recorded about it.
    pub entry: ImageEntry,
    /// Built by this run (it was missing or stale).
    pub built: bool,
}

/// The current raw image `<out>/<node>.img` of each of `nodes`, in order. Images that are
/// missing or stale are built first (all in one build, so the base is prepared once) and
/// recorded; `building(node, why)` is called for each before the build starts.
pub fn current_images(
    out: &OutDir,
    req: &Request,
    nodes: &[&Node],
    building: &mut dyn FnMut(&str, &str),
) -> Result<Vec<NodeImage>, OutDirError> {
    let record = Record::read(out.path())?;
    let profile_sha256 = file_sha256(&req.profile.path)?;
    let base = probe_base(req, &record)?;
    let mut images: Vec<Option<NodeImage>> = vec![None; nodes.len()];
    let mut stale = Vec::new();
    let mut refreshed = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let now = match &base {
            Some(b) => Some(Inputs::of(
                req.profile,
                &profile_sha256,
                node,
                &b.sha256,
                req.epoch,
            )?),
            None => None,
        };
        match check(out.path(), &record, node, base.as_ref().zip(now.as_ref()))? {
            Ok(image) => {
                if record.images.get(&node.name) != Some(&image.entry) {
                    refreshed.push((node.name.clone(), image.entry.clone()));
                }
                images[i] = Some(image);
            }
            Err(why) => {
                building(&node.name, &why);
                stale.push(i);
            }
        }
    }
    // Files hashed again (a new stamp, the same contents) get their new stamps recorded, so the
    // next run need not hash them again.
    if !refreshed.is_empty() {
        record.update(out.path(), refreshed, None)?;
    }
    if !stale.is_empty() {
        let to_build: Vec<&Node> = stale.iter().map(|&i| nodes[i]).collect();
        let built = build_recorded(out, req, &to_build, false)?;
        for (i, image) in stale.into_iter().zip(built) {
            images[i] = Some(image);
        }
    }
    Ok(images.into_iter().flatten().collect())
}

/// Build `nodes` into `<out>/<node>.img` and record them, as the last build.
pub fn build_images(
    out: &OutDir,
    req: &Request,
    nodes: &[&Node],
) -> Result<Vec<NodeImage>, OutDirError> {
    build_recorded(out, req, nodes, true)
}

/// What the last `pi-image build` into a directory wrote.
#[derive(Debug, Clone)]
pub enum LastBuilt {
    /// Nothing recorded.
    Nothing,
    /// One node's image, checked to be what was built.
    One {
        /// The image (boxed: the other variants are small).
        image: Box<NodeImage>,
        /// The profile it was built from has changed since.
        profile_changed: bool,
    },
    /// Several nodes: which one is for the caller to say.
    Several(Vec<String>),
}

/// What the last `pi-image build` into `out` wrote; a single image is checked (by its
/// recorded sha256) to be unchanged since.
pub fn last_built(out: &OutDir) -> Result<LastBuilt, OutDirError> {
    let record = Record::read(out.path())?;
    let nodes = record.last_build.map(|l| l.nodes).unwrap_or_default();
    let [node] = nodes.as_slice() else {
        return Ok(if nodes.is_empty() {
            LastBuilt::Nothing
        } else {
            LastBuilt::Several(nodes)
        });
    };
    let Some(entry) = record.images.get(node) else {
        return Err(OutDirError::Gone {
            image: out.path().join(format!("{node}.img")),
            node: node.clone(),
        });
    };
    let path = out.path().join(&entry.file);
    if !path.is_file() {
        return Err(OutDirError::Gone {
            image: path,
            node: node.clone(),
        });
    }
    let now = HashedFile::of(&path, Some(&entry.written))?;
    if now.sha256 != entry.written.sha256 {
        return Err(OutDirError::Changed {
            image: path,
            node: node.clone(),
            recorded: entry.written.sha256.clone(),
            now: now.sha256,
        });
    }
    // A profile that cannot be read from here (another directory, moved) is not called changed.
    let profile_changed =
        file_sha256(&entry.profile).is_ok_and(|s| s != entry.inputs.profile_sha256);
    Ok(LastBuilt::One {
        image: Box::new(NodeImage {
            node: node.clone(),
            path,
            entry: entry.clone(),
            built: false,
        }),
        profile_changed,
    })
}

/// What the record of the image's directory says about the image at `path`, if `build` wrote
/// it there and it has not changed since (same stamp: it is not hashed again). `None` for any
/// other file, or when there is no readable record.
pub fn recorded_image(path: &Path) -> Option<NodeImage> {
    let dir = path.parent()?;
    let file = path.file_name()?.to_string_lossy();
    let stamp = identity::FileStamp::of(path).ok()?;
    // Only for showing what is known: an unreadable record just means nothing is.
    let record = Record::read(dir).ok()?;
    let (node, entry) = record
        .images
        .into_iter()
        .find(|(_, e)| e.file == file && e.written.stamp == stamp)?;
    Some(NodeImage {
        node,
        path: path.to_owned(),
        entry,
        built: false,
    })
}

/// Builds `nodes` from a resolved base and records what was written (for release artifacts,
/// whose build the caller runs; [`build_images`] and [`current_images`] use it for raw images).
pub struct Recorder<'a> {
    out: &'a OutDir,
    req: &'a Request<'a>,
    record: Record,
    profile_sha256: String,
    base_source: String,
    base_hash: BaseHash,
    entries: Vec<(String, ImageEntry)>,
}

/// The base's sha256 as a build records it: known (verified by the fetch, or recorded for
/// the file's current stamp), or being computed on another thread while the nodes are built.
struct BaseHash {
    sha256: String,
    /// For a local file: its hash with the stamp it was taken at.
    file: Option<HashedFile>,
    /// Hashing the local file (at this path); `sha256` and `file` are set from it when it is
    /// joined.
    hashing: Option<(
        PathBuf,
        std::thread::JoinHandle<Result<HashedFile, OutDirError>>,
    )>,
}

impl BaseHash {
    fn known(sha256: String, file: Option<HashedFile>) -> BaseHash {
        BaseHash {
            sha256,
            file,
            hashing: None,
        }
    }

    /// The sha256 and the local file's hash; waits for the hashing thread the first time.
    fn get(&mut self) -> Result<(&str, Option<&HashedFile>), OutDirError> {
        if let Some((path, thread)) = self.hashing.take() {
            let file = thread.join().map_err(|_| {
                PathError::new(
                    &path,
                    std::io::Error::other("the thread hashing it panicked"),
                )
            })??;
            self.sha256 = file.sha256.clone();
            self.file = Some(file);
        }
        Ok((&self.sha256, self.file.as_ref()))
    }
}

impl<'a> Recorder<'a> {
    /// Start recording into `out` images built per `req` from `base` (resolved from
    /// `req.base`): the profile is identified now; a local base whose recorded hash no longer
    /// holds is hashed on another thread, while the caller builds (the base is only read).
    pub fn new(
        out: &'a OutDir,
        req: &'a Request<'a>,
        base: &BaseImage,
    ) -> Result<Recorder<'a>, OutDirError> {
        let record = Record::read(out.path())?;
        let profile_sha256 = file_sha256(&req.profile.path)?;
        let (base_source, base_hash) = match (&req.base, base.download_sha256()) {
            (BaseSpec::Url(remote), Some(sha)) => {
                (remote.url.clone(), BaseHash::known(sha.to_string(), None))
            }
            _ => {
                let known = known_base_hash(&record, base.path())
                    .filter(|k| FileStamp::of(base.path()).is_ok_and(|now| now == k.stamp));
                let hash = match known {
                    Some(k) => BaseHash::known(k.sha256.clone(), Some(k.clone())),
                    None => {
                        let path = base.path().to_owned();
                        let hashing = std::thread::spawn(move || HashedFile::of(&path, None));
                        BaseHash {
                            sha256: String::new(),
                            file: None,
                            hashing: Some((base.path().to_owned(), hashing)),
                        }
                    }
                };
                (absolute(base.path()), hash)
            }
        };
        Ok(Recorder {
            out,
            req,
            record,
            profile_sha256,
            base_source,
            base_hash,
            entries: Vec::new(),
        })
    }

    /// Record `node`'s image at `path` (in the output directory): its `format` (`raw`, `xz`,
    /// ...), its `sha256` as the build computed it and the base's `release`.
    pub fn add(
        &mut self,
        node: &Node,
        path: &Path,
        format: &str,
        sha256: &str,
        release: &str,
    ) -> Result<NodeImage, OutDirError> {
        let now = cache::now_rfc3339();
        let (base_sha256, base_file) = self.base_hash.get()?;
        let entry = ImageEntry {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            format: format.to_string(),
            written: HashedFile {
                sha256: sha256.to_string(),
                stamp: identity::FileStamp::of(path)?,
            },
            hostname: node.fqdn(),
            address: node.cidr(),
            target: node.target.to_string(),
            release: release.to_string(),
            built_at: now,
            profile: PathBuf::from(absolute(&self.req.profile.path)),
            base: self.base_source.clone(),
            base_file: base_file.cloned(),
            inputs: Inputs::of(
                self.req.profile,
                &self.profile_sha256,
                node,
                base_sha256,
                self.req.epoch,
            )?,
        };
        self.entries.push((node.name.clone(), entry.clone()));
        Ok(NodeImage {
            node: node.name.clone(),
            path: path.to_owned(),
            entry,
            built: true,
        })
    }

    /// Write the record; with `last_build`, the nodes added are what the last build wrote.
    pub fn finish(self, last_build: bool) -> Result<(), OutDirError> {
        let last = last_build.then(|| LastBuild {
            finished_at: cache::now_rfc3339(),
            nodes: self.entries.iter().map(|(n, _)| n.clone()).collect(),
        });
        self.record.update(self.out.path(), self.entries, last)
    }
}

/// Build `nodes` into `<out>/<node>.img` from the request's base (fetched if need be) and
/// record them (as the last build if `last_build`).
fn build_recorded(
    out: &OutDir,
    req: &Request,
    nodes: &[&Node],
    last_build: bool,
) -> Result<Vec<NodeImage>, OutDirError> {
    let base = BaseImage::resolve(&req.base, req.cache_dir, &req.fetch)?;
    let mut recorder = Recorder::new(out, req, &base)?;
    let opts = BuildOptions {
        base: base.path().to_owned(),
        out_dir: out.path().to_owned(),
        epoch: req.epoch,
    };
    let mut images = Vec::new();
    for (node, b) in nodes
        .iter()
        .zip(build::build_nodes(req.profile, nodes, &opts)?)
    {
        images.push(recorder.add(node, &b.path, "raw", &b.sha256, &b.release.to_string())?);
    }
    recorder.finish(last_build)?;
    Ok(images)
}

/// `path` made absolute (symlinks resolved) for the record, so it means the same file from any
/// directory; as given if that fails.
fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// The recorded hash of the local base at `path`, if an image was built from it.
fn known_base_hash<'r>(record: &'r Record, path: &Path) -> Option<&'r HashedFile> {
    let source = absolute(path);
    record
        .images
        .values()
        .filter(|e| e.base == source)
        .find_map(|e| e.base_file.as_ref())
}

/// The base as identified now.
struct BaseNow {
    /// Its sha256 as a build would record it.
    sha256: String,
    /// For a local file: its absolute path and hash with the current stamp.
    file: Option<(String, HashedFile)>,
}

/// The base as a build would record it, without fetching anything: a local file's sha256
/// (hashed unless its recorded hash still holds), a URL's pinned sha256 or the one its cache
/// entry was verified with. `None` for a URL the cache lacks (it must be fetched to build).
fn probe_base(req: &Request, record: &Record) -> Result<Option<BaseNow>, OutDirError> {
    match &req.base {
        BaseSpec::Path(path) => {
            if !path.is_file() {
                return Err(BuildError::BaseNotFound { base: path.clone() }.into());
            }
            let file = HashedFile::of(path, known_base_hash(record, path))?;
            Ok(Some(BaseNow {
                sha256: file.sha256.clone(),
                file: Some((absolute(path), file)),
            }))
        }
        BaseSpec::Url(remote) => {
            let sha256 = match &remote.sha256 {
                Some(sha) => Some(sha.clone()),
                None => {
                    let cache = Cache::open_or_default(req.cache_dir)?;
                    let _lock = cache.lock()?;
                    fetch::cached(&cache, remote)?.map(|e| e.meta.compressed_sha256)
                }
            };
            Ok(sha256.map(|sha256| BaseNow { sha256, file: None }))
        }
    }
}

/// `Ok(Ok(image))` if `node`'s recorded raw image in `out_dir` is there, unchanged, and built
/// from inputs equal to `now` (with `base`, as identified now); else `Ok(Err(why not))`. `None`
/// when the base is not available to identify. The image's entry comes with the stamps taken
/// now.
fn check(
    out_dir: &Path,
    record: &Record,
    node: &Node,
    now: Option<(&BaseNow, &Inputs)>,
) -> Result<Result<NodeImage, String>, OutDirError> {
    let path = out_dir.join(format!("{}.img", node.name));
    let Some((base, now)) = now else {
        return Ok(Err("the base image is not in the cache yet".into()));
    };
    let entry = match record.images.get(&node.name) {
        Some(e) if e.file == format!("{}.img", node.name) && path.is_file() => e,
        _ => return Ok(Err(format!("{} has not been built", path.display()))),
    };
    let changed = now.changes_since(&entry.inputs);
    if !changed.is_empty() {
        return Ok(Err(format!(
            "{} changed since {} was built",
            changed.join(", "),
            path.display()
        )));
    }
    let written = HashedFile::of(&path, Some(&entry.written))?;
    if written.sha256 != entry.written.sha256 {
        return Ok(Err(format!(
            "{} was modified after it was built",
            path.display()
        )));
    }
    let mut entry = entry.clone();
    entry.written = written;
    if let Some((source, file)) = &base.file
        && entry.base == *source
    {
        entry.base_file = Some(file.clone());
    }
    Ok(Ok(NodeImage {
        node: node.name.clone(),
        path,
        entry,
        built: false,
    }))
}
