//! Where run folders live. Training always writes a local folder (`<runs>/<id>` under the
//! artifacts folder, or under a scratch folder when the artifacts are in an object store;
//! `<runs>` is the registry's own, e.g. `acc.runs` beside `acc.db`). With
//! an object store (`s3://bucket/prefix`, endpoint and credentials from the usual AWS
//! environment variables), each checkpoint's files are uploaded once complete, under a key of
//! their own epoch so that a recorded checkpoint always names a consistent set, with retries;
//! only then is the checkpoint recorded. Reading a checkpoint (resume, eval, predict, export,
//! the workbench) downloads it into the local folder and checks its sha256.

use anyhow::{Context, Result, bail};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Whose run folders these are: the registry's id (written into each folder's marker) and
/// the folder, under the artifacts folder or prefix, that its runs go in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub registry: String,
    pub runs: String,
}

impl Owner {
    /// For folders no registry records (a scratch retraining).
    pub fn scratch() -> Self {
        Self {
            registry: "scratch".into(),
            runs: "runs".into(),
        }
    }
}

#[derive(Clone)]
pub enum Artifacts {
    /// Run folders under this folder.
    Local { root: PathBuf, owner: Owner },
    /// Run folders in an object store; `scratch` is where this process trains and caches.
    Remote {
        url: String,
        store: Arc<dyn ObjectStore>,
        prefix: Key,
        scratch: PathBuf,
        rt: Arc<tokio::runtime::Runtime>,
        owner: Owner,
    },
}

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Artifacts::Local { root, owner } => write!(f, "{}", root.join(&owner.runs).display()),
            Artifacts::Remote { url, owner, .. } => write!(f, "{url}/{}", owner.runs),
        }
    }
}

impl Artifacts {
    /// A folder, or `s3://bucket/prefix` (with `scratch` for the local copies), for `owner`'s runs.
    pub fn parse(spec: &str, scratch: &Path, owner: Owner) -> Result<Self> {
        if !spec.starts_with("s3://") {
            if spec.contains("://") {
                bail!("--artifacts {spec}: a folder or s3://bucket/prefix");
            }
            let dir = PathBuf::from(spec);
            let root = std::path::absolute(&dir).unwrap_or(dir);
            return Ok(Self::Local { root, owner });
        }
        let rest = &spec["s3://".len()..];
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("--artifacts {spec}: name the bucket, s3://bucket/prefix");
        }
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .with_context(|| format!("--artifacts {spec}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mvlab-artifacts")
            .enable_all()
            .build()?;
        Ok(Self::Remote {
            url: spec.trim_end_matches('/').to_string(),
            store: Arc::new(store),
            prefix: Key::from(prefix.trim_matches('/')),
            scratch: std::path::absolute(scratch).unwrap_or_else(|_| scratch.to_path_buf()),
            rt: Arc::new(rt),
            owner,
        })
    }

    pub fn owner(&self) -> &Owner {
        match self {
            Artifacts::Local { owner, .. } | Artifacts::Remote { owner, .. } => owner,
        }
    }

    /// The local folder a run trains in (and remote checkpoints are fetched to).
    pub fn local_run_dir(&self, run: i64) -> PathBuf {
        let base = match self {
            Artifacts::Local { root, .. } => root,
            Artifacts::Remote { scratch, .. } => scratch,
        };
        base.join(&self.owner().runs).join(run.to_string())
    }

    /// A run's folder in the object store, relative to the prefix.
    fn run_key(&self, run: i64) -> String {
        format!("{}/{run}", self.owner().runs)
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Artifacts::Remote { .. })
    }

    fn key(prefix: &Key, rel: &str) -> Key {
        if prefix.as_ref().is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{prefix}/{rel}"))
        }
    }

    /// Makes the local file `file` of `run` durable under `rel` (relative to the run's
    /// folder): nothing to do locally, an upload (retried) to the store. Returns what a
    /// checkpoint row records: the local path, or the object's URL.
    pub fn publish(&self, run: i64, file: &Path, rel: &str) -> Result<String> {
        let Artifacts::Remote {
            url,
            store,
            prefix,
            rt,
            ..
        } = self
        else {
            return Ok(file.display().to_string());
        };
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let rel = format!("{}/{rel}", self.run_key(run));
        let key = Self::key(prefix, &rel);
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=4 {
            let put = rt.block_on(store.put(&key, bytes.clone().into()));
            match put {
                Ok(_) => return Ok(format!("{url}/{rel}")),
                Err(e) if attempt == 4 => {
                    return Err(e).with_context(|| {
                        format!("cannot upload {} to {url}/{rel}", file.display())
                    });
                }
                Err(_) => {
                    std::thread::sleep(wait);
                    wait *= 2;
                }
            }
        }
        unreachable!()
    }

    /// Whether run files can be stored here: with an object store, a small object is written and
    /// removed again, so that a missing endpoint, bucket or credentials is found out before any
    /// training rather than at the first upload after an epoch.
    pub fn check(&self) -> Result<()> {
        let Artifacts::Remote {
            url,
            store,
            prefix,
            rt,
            ..
        } = self
        else {
            return Ok(());
        };
        let key = Self::key(
            prefix,
            &format!(".mvlab-probe-{:016x}", rand::random::<u64>()),
        );
        rt.block_on(async {
            store.put(&key, Vec::<u8>::new().into()).await?;
            store.delete(&key).await
        })
        .with_context(|| {
            format!(
                "--artifacts {url}: cannot store files there (check the bucket, AWS_ENDPOINT and the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        })
    }

    /// Removes a superseded checkpoint's files from the store: `names` beside `recorded`.
    pub fn forget(&self, recorded: &str, names: &[&str]) {
        let Artifacts::Remote {
            url,
            store,
            prefix,
            rt,
            ..
        } = self
        else {
            return;
        };
        let Some(rel) = recorded.strip_prefix(url.as_str()) else {
            return;
        };
        let dir = rel
            .trim_start_matches('/')
            .rsplit_once('/')
            .map_or("", |d| d.0);
        for name in names {
            let _ = rt.block_on(store.delete(&Self::key(prefix, &format!("{dir}/{name}"))));
        }
    }

    /// Deletes every stored object of `run` (its checkpoints of every epoch). Nothing to do
    /// for local artifacts: the run's folder is the local one.
    pub fn delete_run(&self, run: i64) -> Result<()> {
        let Artifacts::Remote {
            url,
            store,
            prefix,
            rt,
            ..
        } = self
        else {
            return Ok(());
        };
        let root = Self::key(prefix, &self.run_key(run));
        rt.block_on(async {
            // Two levels: <runs>/<id>/<kind>-e<epoch>/<file>; listed a level at a time.
            let mut folders = vec![root];
            while let Some(folder) = folders.pop() {
                let listed = store.list_with_delimiter(Some(&folder)).await?;
                folders.extend(listed.common_prefixes);
                for object in listed.objects {
                    store.delete(&object.location).await?;
                }
            }
            Ok::<_, object_store::Error>(())
        })
        .with_context(|| format!("cannot delete run {run}'s files from {url}"))
    }

    /// The local copy of a recorded file (`recorded` as a checkpoint row has it), downloaded
    /// into `dir` when it is remote. With `sha256`, the bytes must match it.
    pub fn fetch(&self, recorded: &str, dir: &Path, sha256: Option<&str>) -> Result<PathBuf> {
        let local = match self {
            Artifacts::Remote {
                url,
                store,
                prefix,
                rt,
                ..
            } if recorded.starts_with("s3://") => {
                let Some(rel) = recorded
                    .strip_prefix(url.as_str())
                    .map(|r| r.trim_start_matches('/'))
                else {
                    bail!("{recorded} is not in this registry's artifacts ({url})");
                };
                let key = Self::key(prefix, rel);
                let got = rt
                    .block_on(async { store.get(&key).await?.bytes().await })
                    .with_context(|| format!("cannot download {recorded}"))?;
                let name = rel.rsplit('/').next().unwrap_or(rel);
                let path = dir.join(name);
                write_atomic(&path, &got)?;
                path
            }
            _ if recorded.starts_with("s3://") => {
                bail!("{recorded} is in an object store: give --artifacts s3://...")
            }
            _ => PathBuf::from(recorded),
        };
        if let Some(expected) = sha256 {
            let bytes = std::fs::read(&local)
                .with_context(|| format!("checkpoint {} is missing", local.display()))?;
            let actual = hex::encode(Sha256::digest(&bytes));
            if actual != expected {
                bail!("{recorded}: sha256 {actual} does not match the recorded {expected}",);
            }
        }
        Ok(local)
    }

    /// A recorded file's sibling (`model.json` beside a checkpoint, the optimizer and state
    /// beside `last.bpk`), downloaded into `dir` when remote.
    pub fn fetch_sibling(&self, recorded: &str, name: &str, dir: &Path) -> Result<PathBuf> {
        let sibling = match recorded.rsplit_once('/') {
            Some((parent, _)) => format!("{parent}/{name}"),
            None => name.to_string(),
        };
        self.fetch(&sibling, dir, None)
    }
}

/// Writes bytes atomically (a temporary file beside `path`, synced, then renamed over it) and
/// returns their sha256. Only a regular file is replaced: a symlink, FIFO, device, folder or
/// anything else already at `path` is refused, as is a path that names no file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else {
        bail!("{} does not name a file", path.display());
    };
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && !meta.file_type().is_file()
    {
        bail!(
            "{} is {}; mvlab replaces only regular files (choose another path)",
            path.display(),
            kind_of(&meta.file_type())
        );
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // A name of its own, created afresh (create_new does not follow a link planted there).
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        let full = e.kind() == std::io::ErrorKind::StorageFull;
        return Err(e).with_context(|| {
            if full {
                format!(
                    "cannot write {}: the disk is full ({} bytes to write, {}); the files \
                     written before are kept",
                    path.display(),
                    bytes.len(),
                    free_space(dir)
                )
            } else {
                format!("cannot write {}", path.display())
            }
        });
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(hex::encode(Sha256::digest(bytes)))
}

/// The space left for files on the filesystem of `dir`, in words.
fn free_space(dir: &Path) -> String {
    #[cfg(unix)]
    if let Ok(st) = rustix::fs::statvfs(dir) {
        return format!("{} bytes free there", st.f_bavail * st.f_frsize);
    }
    "free space unknown".into()
}

/// What a non-regular file is, in words.
fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device file"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}
