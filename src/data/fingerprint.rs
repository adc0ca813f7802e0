//! Dataset fingerprints: a sha256 over the relative paths, sizes and content hashes of the files
//! under a folder, so that runs can tell whether they saw the same data. Content hashes are
//! cached by (size, mtime), so fingerprinting an unchanged folder again is cheap.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What stands in for the content hash of an entry that could not be read.
pub const UNREADABLE: &str = "unreadable";

/// A file modified this close (or later) to the start of a fingerprint is hashed but not
/// cached: a later write within the same mtime tick would otherwise go unnoticed
/// (filesystems with coarse timestamps tick once a second or two).
const RACY_NS: i64 = 2_000_000_000;

const CHUNK: usize = 64 * 1024;

/// One file of the dataset as fingerprinted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the root, with '/' separators.
    pub path: String,
    pub size: u64,
    /// Hex sha256 of the content, or [`UNREADABLE`].
    pub sha256: String,
}

/// A dataset's fingerprint: the sha256 over the sorted (relative path, size, content hash) list,
/// the number of entries and their total size (unreadable entries included, with the size
/// their metadata gave, or 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub sha256: String,
    pub files: usize,
    pub bytes: u64,
}

/// The entries a cache file holds (sorted by path), as of the fingerprint that last wrote it;
/// None when there is no readable cache. Unreadable files and files too recently modified to
/// cache are not in it.
pub fn cached_entries(cache_file: &Path) -> Option<Vec<FileEntry>> {
    let cache = load_cache(cache_file)?;
    Some(
        cache
            .into_iter()
            .map(|(path, e)| FileEntry {
                path,
                size: e.size,
                sha256: e.sha256,
            })
            .collect(),
    )
}

/// What differs between two entry lists (each list sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A cached content hash, trusted while the file's size and mtime are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CacheEntry {
    size: u64,
    mtime_ns: i64,
    sha256: String,
}

type Cache = BTreeMap<String, CacheEntry>;

/// Fingerprints the regular files under `root` (recursively, symlinks followed as the loader
/// follows them; other special files skipped). An entry that cannot be read (a dangling link,
/// a link back to a folder above it) is part of the fingerprint as its path with
/// [`UNREADABLE`] for a hash, not an error. Only relative paths enter the hash, so a
/// copy of the dataset elsewhere has the same fingerprint.
///
/// Content hashes are cached in `cache_file` (JSON: relative path -> {size, mtime_ns, sha256}):
/// a file whose size and mtime are unchanged is not read again. A cache that cannot be read or
/// parsed is ignored and rewritten; writing it is atomic and best effort. A cache file inside
/// `root` is not part of the fingerprint.
pub fn fingerprint(root: &Path, cache_file: &Path) -> Result<Fingerprint> {
    Ok(fingerprint_files(root, cache_file)?.0)
}

/// The same as [`fingerprint`], also returning the per-file entries sorted by path.
pub fn fingerprint_files(root: &Path, cache_file: &Path) -> Result<(Fingerprint, Vec<FileEntry>)> {
    let meta = std::fs::metadata(root)
        .with_context(|| format!("cannot read dataset folder {}", root.display()))?;
    if !meta.is_dir() {
        bail!("dataset path {} is not a folder", root.display());
    }
    let root_abs = std::fs::canonicalize(root)
        .with_context(|| format!("cannot resolve dataset folder {}", root.display()))?;
    let cache_rel = cache_path_in(&root_abs, cache_file);
    let now_ns = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);

    let loaded = load_cache(cache_file);
    let mut hashes = Hashes {
        stale: loaded.is_none(),
        old: loaded.unwrap_or_default(),
        new: Cache::new(),
        now_ns,
    };
    let mut entries = Vec::new();
    // Each folder with its real path and those of the folders above it: a link back up is a
    // loop, named as unreadable rather than followed.
    let mut dirs: Vec<(PathBuf, String, Vec<PathBuf>)> =
        vec![(root_abs.clone(), String::new(), vec![root_abs.clone()])];
    while let Some((dir, prefix, above)) = dirs.pop() {
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if prefix.is_empty() => {
                return Err(e).with_context(|| format!("cannot list {}", root.display()));
            }
            Err(_) => {
                entries.push(unreadable(prefix, 0));
                continue;
            }
        };
        for entry in listing {
            let Ok(entry) = entry else {
                entries.push(unreadable(prefix.clone(), 0));
                continue;
            };
            let name = entry.file_name();
            let rel = if prefix.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{prefix}/{}", name.to_string_lossy())
            };
            // Links are followed, as the loader follows them: a split made of links has the
            // fingerprint of a copy of the same files. A dangling link is unreadable.
            let Ok(meta) = std::fs::metadata(entry.path()) else {
                entries.push(unreadable(rel, 0));
                continue;
            };
            if meta.is_dir() {
                let real = std::fs::canonicalize(entry.path()).unwrap_or_else(|_| entry.path());
                if above.contains(&real) {
                    entries.push(unreadable(rel, 0));
                } else {
                    let mut chain = above.clone();
                    chain.push(real);
                    dirs.push((entry.path(), rel, chain));
                }
            } else if meta.is_file() {
                if cache_rel
                    .as_deref()
                    .is_some_and(|c| rel == c || rel.starts_with(&format!("{c}.tmp.")))
                {
                    continue;
                }
                entries.push(hashes.entry(&entry.path(), rel, &meta));
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));

    // What is left of the old cache is stale: deleted files, or ones that changed.
    if hashes.stale || !hashes.old.is_empty() {
        // Best effort: a cache that cannot be written only costs time on the next run.
        let _ = save_cache(cache_file, &hashes.new);
    }

    let mut hasher = Sha256::new();
    for e in &entries {
        hasher.update(e.path.as_bytes());
        hasher.update([0u8]);
        hasher.update(e.size.to_string().as_bytes());
        hasher.update([0u8]);
        hasher.update(e.sha256.as_bytes());
        hasher.update(b"\n");
    }
    let fp = Fingerprint {
        sha256: hex::encode(hasher.finalize()),
        files: entries.len(),
        bytes: entries.iter().map(|e| e.size).sum(),
    };
    Ok((fp, entries))
}

/// What differs between two entry lists: paths only in `after` (added), only in `before`
/// (removed), and in both with a different size or content hash (changed).
pub fn changes(before: &[FileEntry], after: &[FileEntry]) -> Changes {
    let old: HashMap<&str, &FileEntry> = before.iter().map(|e| (e.path.as_str(), e)).collect();
    let new: HashMap<&str, &FileEntry> = after.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut out = Changes::default();
    for (path, e) in &new {
        match old.get(path) {
            None => out.added.push(path.to_string()),
            Some(o) if o.size != e.size || o.sha256 != e.sha256 => {
                out.changed.push(path.to_string())
            }
            Some(_) => {}
        }
    }
    out.removed = old
        .keys()
        .filter(|p| !new.contains_key(*p))
        .map(|p| p.to_string())
        .collect();
    out.added.sort();
    out.removed.sort();
    out.changed.sort();
    out
}

/// The sha256 (hex) of a list of items joined with '\n' (order-sensitive), e.g. a split's
/// relative paths with their labels.
pub fn list_hash<S: AsRef<str>>(items: &[S]) -> String {
    let mut hasher = Sha256::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            hasher.update(b"\n");
        }
        hasher.update(item.as_ref().as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn unreadable(path: String, size: u64) -> FileEntry {
    FileEntry {
        path,
        size,
        sha256: UNREADABLE.to_string(),
    }
}

fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// The content hashes of one fingerprint: the cache as loaded (`old`, whose entries move to
/// `new` as they are used) and the one to write.
struct Hashes {
    old: Cache,
    new: Cache,
    /// Whether `new` differs from the cache as loaded in more than what is left in `old` (or
    /// there was no valid cache).
    stale: bool,
    now_ns: i64,
}

impl Hashes {
    /// The entry of one regular file: from the cache when its size and mtime match, else hashed
    /// (and cached unless it was modified too recently to trust its mtime).
    fn entry(&mut self, path: &Path, rel: String, meta: &Metadata) -> FileEntry {
        let (size, mtime) = (meta.len(), mtime_ns(meta));
        match self.old.remove(&rel) {
            Some(c) if c.size == size && c.mtime_ns == mtime => {
                let sha256 = c.sha256.clone();
                self.new.insert(rel.clone(), c);
                return FileEntry {
                    path: rel,
                    size,
                    sha256,
                };
            }
            Some(_) => self.stale = true,
            None => {}
        }
        match hash_file(path) {
            Ok((read, sha256)) => {
                if read == size && mtime < self.now_ns.saturating_sub(RACY_NS) {
                    let entry = CacheEntry {
                        size,
                        mtime_ns: mtime,
                        sha256: sha256.clone(),
                    };
                    self.new.insert(rel.clone(), entry);
                    self.stale = true;
                }
                FileEntry {
                    path: rel,
                    size: read,
                    sha256,
                }
            }
            Err(_) => unreadable(rel, size),
        }
    }
}

/// The length and hex sha256 of a file's content, read in chunks.
fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

/// The cache file's path relative to the (canonical) root when it lies inside it.
fn cache_path_in(root_abs: &Path, cache_file: &Path) -> Option<String> {
    let name = cache_file.file_name()?;
    let parent = match cache_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(parent).ok()?;
    let rel = dir.join(name).strip_prefix(root_abs).ok()?.to_path_buf();
    let parts: Vec<_> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Some(parts.join("/"))
}

fn load_cache(path: &Path) -> Option<Cache> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn save_cache(path: &Path, cache: &Cache) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let name = path
        .file_name()
        .with_context(|| format!("fingerprint cache {} has no file name", path.display()))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let text = serde_json::to_string(cache).context("cannot encode the fingerprint cache")?;
    let written = std::fs::write(&tmp, text)
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot replace {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, FileTimes};
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    /// `secs_back` seconds ago: far enough back (over 2 s) for the cache to trust an mtime.
    fn past(secs_back: u64) -> SystemTime {
        SystemTime::now() - Duration::from_secs(secs_back)
    }

    fn write_at(path: &Path, content: &[u8], mtime: SystemTime) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut f = File::create(path).unwrap();
        f.write_all(content).unwrap();
        f.set_times(FileTimes::new().set_modified(mtime)).unwrap();
    }

    fn set_mtime(path: &Path, mtime: SystemTime) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_times(FileTimes::new().set_modified(mtime)).unwrap();
    }

    fn sample(root: &Path, mtime: SystemTime) {
        write_at(&root.join("cat/1.png"), b"cat one", mtime);
        write_at(&root.join("cat/2.png"), b"cat two!", mtime);
        write_at(&root.join("dog/1.jpg"), b"dog", mtime);
    }

    #[test]
    fn same_content_in_two_folders_has_the_same_fingerprint() {
        let (a, b, caches) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        sample(a.path(), past(3600));
        // Another place, other mtimes, files written in another order.
        write_at(&b.path().join("dog/1.jpg"), b"dog", past(7200));
        write_at(&b.path().join("cat/2.png"), b"cat two!", past(100));
        write_at(&b.path().join("cat/1.png"), b"cat one", past(5000));
        let (fa, ea) = fingerprint_files(a.path(), &caches.path().join("a.json")).unwrap();
        let (fb, eb) = fingerprint_files(b.path(), &caches.path().join("b.json")).unwrap();
        assert_eq!(fa, fb);
        assert_eq!(ea, eb);
        assert_eq!((fa.files, fa.bytes), (3, 7 + 8 + 3));
        let paths: Vec<_> = ea.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["cat/1.png", "cat/2.png", "dog/1.jpg"]);
        // A file moved to another class is a different dataset.
        std::fs::rename(b.path().join("dog/1.jpg"), b.path().join("cat/3.jpg")).unwrap();
        let moved = fingerprint(b.path(), &caches.path().join("b.json")).unwrap();
        assert_ne!(moved.sha256, fa.sha256);
    }

    #[test]
    fn a_changed_byte_changes_the_fingerprint_and_is_named() {
        let (root, caches) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = caches.path().join("fp.json");
        sample(root.path(), past(3600));
        let (before, e1) = fingerprint_files(root.path(), &cache).unwrap();
        write_at(&root.path().join("cat/2.png"), b"cat two?", past(1800));
        let (after, e2) = fingerprint_files(root.path(), &cache).unwrap();
        assert_ne!(before.sha256, after.sha256);
        assert_eq!((before.files, before.bytes), (after.files, after.bytes));
        let c = changes(&e1, &e2);
        assert_eq!(c.changed, ["cat/2.png"]);
        assert!(c.added.is_empty() && c.removed.is_empty());
        assert!(changes(&e2, &e2).is_empty());
    }

    #[test]
    fn added_and_removed_files_are_named() {
        let (root, caches) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = caches.path().join("fp.json");
        sample(root.path(), past(3600));
        let (f1, e1) = fingerprint_files(root.path(), &cache).unwrap();
        write_at(&root.path().join("bird/1.png"), b"bird", past(3600));
        std::fs::remove_file(root.path().join("cat/1.png")).unwrap();
        let (f2, e2) = fingerprint_files(root.path(), &cache).unwrap();
        assert_ne!(f1.sha256, f2.sha256);
        let c = changes(&e1, &e2);
        assert_eq!(c.added, ["bird/1.png"]);
        assert_eq!(c.removed, ["cat/1.png"]);
        assert!(c.changed.is_empty());
    }

    #[test]
    fn an_unchanged_file_is_not_read_again() {
        let (root, caches) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = caches.path().join("fp.json");
        let mtime = past(3600);
        sample(root.path(), mtime);
        let first = fingerprint(root.path(), &cache).unwrap();
        let file = root.path().join("cat/1.png");

        // Unreadable now, same size and mtime: the cached hash stands in for the content.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
        if File::open(&file).is_err() {
            assert_eq!(fingerprint(root.path(), &cache).unwrap(), first);
            // Without the cache the file is reported as unreadable, and no error.
            let (fresh, entries) =
                fingerprint_files(root.path(), &caches.path().join("other.json")).unwrap();
            assert_ne!(fresh.sha256, first.sha256);
            assert_eq!(entries[0].sha256, UNREADABLE);
        } else {
            eprintln!("running with permission to read mode-000 files: chmod check skipped");
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

        // New content of the same size with the mtime put back: the cache is trusted.
        write_at(&file, b"CAT ONE", mtime);
        assert_eq!(fingerprint(root.path(), &cache).unwrap(), first);
        // Without the cache the new content is seen.
        let uncached = fingerprint(root.path(), &caches.path().join("none.json")).unwrap();
        assert_ne!(uncached.sha256, first.sha256);
        // A touched mtime makes it read again.
        set_mtime(&file, past(60));
        assert_eq!(fingerprint(root.path(), &cache).unwrap(), uncached);
    }

    #[test]
    fn a_recently_modified_file_is_not_trusted_from_the_cache() {
        let (root, caches) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = caches.path().join("fp.json");
        let file = root.path().join("cat/1.png");
        let now = SystemTime::now();
        write_at(&file, b"cat one", now);
        let first = fingerprint(root.path(), &cache).unwrap();
        // Rewritten within the same mtime tick (simulated: the mtime put back).
        write_at(&file, b"CAT ONE", now);
        assert_ne!(fingerprint(root.path(), &cache).unwrap(), first);
    }

    #[test]
    fn an_unreadable_file_is_an_entry_not_an_error() {
        // A folder opens but cannot be read as a file, also for root.
        let dir = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let mut hashes = Hashes {
            old: Cache::new(),
            new: Cache::new(),
            stale: false,
            now_ns: i64::MAX,
        };
        let e = hashes.entry(dir.path(), "x.png".into(), &meta);
        assert_eq!(e.sha256, UNREADABLE);
        assert_eq!(e.path, "x.png");
        assert!(hashes.new.is_empty() && !hashes.stale);
    }

    #[test]
    fn a_corrupt_cache_is_ignored_and_rewritten() {
        let (root, caches) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = caches.path().join("fp.json");
        sample(root.path(), past(3600));
        let clean = fingerprint(root.path(), &caches.path().join("clean.json")).unwrap();
        std::fs::write(&cache, b"{\"cat/1.png\": {\"size\": tru").unwrap();
        assert_eq!(fingerprint(root.path(), &cache).unwrap(), clean);
        let rewritten = load_cache(&cache).expect("the cache is valid JSON again");
        assert_eq!(rewritten.len(), 3);
        // A cache of the wrong shape is ignored too.
        std::fs::write(&cache, b"[1, 2, 3]").unwrap();
        assert_eq!(fingerprint(root.path(), &cache).unwrap(), clean);
        // A cache that cannot be written costs nothing but time.
        let blocked = caches.path().join("file").join("fp.json");
        std::fs::write(caches.path().join("file"), b"").unwrap();
        assert_eq!(fingerprint(root.path(), &blocked).unwrap(), clean);
    }

    #[test]
    fn a_cache_inside_the_root_is_not_part_of_the_data() {
        let (root, caches) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        sample(root.path(), past(3600));
        let outside = fingerprint(root.path(), &caches.path().join("fp.json")).unwrap();
        let inside = root.path().join(".fp-cache.json");
        assert_eq!(fingerprint(root.path(), &inside).unwrap(), outside);
        assert!(inside.exists());
        assert_eq!(fingerprint(root.path(), &inside).unwrap(), outside);
        // Through a relative-looking path too.
        let dotted = root.path().join("cat/../.fp-cache.json");
        assert_eq!(fingerprint(root.path(), &dotted).unwrap(), outside);
    }

    #[test]
    fn links_are_followed_like_a_copy_and_dangling_ones_named() {
        let (copy, linked, caches) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        sample(copy.path(), past(3600));
        // The same files as links: each file, and a whole class folder.
        for (rel, is_dir) in [("cat", false), ("dog", true)] {
            let from = copy.path().join(rel);
            if is_dir {
                std::os::unix::fs::symlink(&from, linked.path().join(rel)).unwrap();
                continue;
            }
            std::fs::create_dir_all(linked.path().join(rel)).unwrap();
            for f in std::fs::read_dir(&from).unwrap() {
                let f = f.unwrap().path();
                std::os::unix::fs::symlink(
                    &f,
                    linked.path().join(rel).join(f.file_name().unwrap()),
                )
                .unwrap();
            }
        }
        let (a, b) = (caches.path().join("a.json"), caches.path().join("b.json"));
        let of_copy = fingerprint(copy.path(), &a).unwrap();
        assert!(of_copy.files > 0);
        assert_eq!(fingerprint(linked.path(), &b).unwrap(), of_copy);
        // A dangling link and a link back up are entries of their own, unreadable; no hang.
        std::os::unix::fs::symlink(
            copy.path().join("gone.png"),
            linked.path().join("cat/gone.png"),
        )
        .unwrap();
        std::os::unix::fs::symlink(linked.path(), linked.path().join("cat/loop")).unwrap();
        let (fp, entries) = fingerprint_files(linked.path(), &b).unwrap();
        assert_eq!(fp.files, of_copy.files + 2);
        for rel in ["cat/gone.png", "cat/loop"] {
            let e = entries.iter().find(|e| e.path == rel).unwrap();
            assert_eq!(e.sha256, UNREADABLE, "{rel}");
        }
    }

    #[test]
    fn a_missing_root_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-data");
        let err = fingerprint(&missing, &dir.path().join("fp.json")).unwrap_err();
        assert!(format!("{err:#}").contains("no-such-data"), "{err:#}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = fingerprint(&file, &dir.path().join("fp.json")).unwrap_err();
        assert!(format!("{err:#}").contains("not a folder"), "{err:#}");
    }

    #[test]
    fn list_hash_is_the_sha256_of_the_joined_items() {
        let items = ["cat/1.png\t0", "dog/1.jpg\t1"];
        assert_eq!(
            list_hash(&items),
            hex::encode(Sha256::digest(b"cat/1.png\t0\ndog/1.jpg\t1"))
        );
        assert_ne!(list_hash(&items), list_hash(&[items[1], items[0]]));
        let owned: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        assert_eq!(list_hash(&owned), list_hash(&items));
    }

    #[test]
    fn a_second_fingerprint_of_an_unchanged_folder_is_fast() {
        let (root, caches) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = caches.path().join("fp.json");
        let mtime = past(3600);
        let content: Vec<u8> = (0..16384u32).map(|i| (i * 31 % 251) as u8).collect();
        for i in 0..2000 {
            let mut c = content.clone();
            c[..4].copy_from_slice(&(i as u32).to_le_bytes());
            write_at(
                &root.path().join(format!("c{}/{i:04}.png", i % 10)),
                &c,
                mtime,
            );
        }
        let t = Instant::now();
        let first = fingerprint(root.path(), &cache).unwrap();
        let first_time = t.elapsed();
        // The best of three cached calls, so a busy machine (tests run in parallel) does not
        // decide the result.
        let mut second_time = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let second = fingerprint(root.path(), &cache).unwrap();
            second_time = second_time.min(t.elapsed());
            assert_eq!(first, second);
        }
        eprintln!(
            "2000 files of 16 KiB: first fingerprint {first_time:?}, second (cached) {second_time:?}"
        );
        assert_eq!((first.files, first.bytes), (2000, 2000 * 16384));
        assert!(
            second_time * 5 <= first_time,
            "cached {second_time:?} vs first {first_time:?}"
        );
    }
}
