//! Where a run comes from, recorded to be checked rather than only read: mvlab's version and
//! features, the device and its driver, the experiment file's git commit and whether its
//! repository had changes (a hash of the diff), the dataset's fingerprint, the hash of the
//! train/val lists, and the seed. `compare` warns when two runs differ in data or split;
//! `rerun --verify` names what changed when a rerun's losses do not match.

use crate::data::fingerprint::{self, FileEntry, Fingerprint};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The experiment file's state in git, when it is in a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    pub commit: String,
    /// The sha256 of `git diff HEAD` when the repository had uncommitted changes. Written as
    /// `false` when clean (records of earlier versions say `null`; both read back as clean).
    #[serde(serialize_with = "dirty_out", deserialize_with = "dirty_in", default)]
    pub dirty: Option<String>,
}

fn dirty_out<S: serde::Serializer>(dirty: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match dirty {
        Some(hash) => s.serialize_str(hash),
        None => s.serialize_bool(false),
    }
}

fn dirty_in<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::String(hash)) => Some(hash),
        _ => None,
    })
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub version: String,
    pub features: Vec<String>,
    pub seed: u64,
    #[serde(default)]
    pub experiment: Option<GitState>,
    /// Known once the run has started (the data it trained on, where).
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub dataset: Option<Fingerprint>,
    #[serde(default)]
    pub split_sha256: Option<String>,
}

/// The cargo features this binary was built with.
pub fn features() -> Vec<String> {
    let mut f = Vec::new();
    for (on, name) in [
        (cfg!(feature = "cuda"), "cuda"),
        (cfg!(feature = "vulkan"), "vulkan"),
        (cfg!(feature = "cube-cpu"), "cube-cpu"),
    ] {
        if on {
            f.push(name.to_string());
        }
    }
    f
}

/// What is known when a run is created from `experiment` with `seed`.
pub fn at_creation(experiment: &Path, seed: u64) -> Provenance {
    Provenance {
        version: env!("CARGO_PKG_VERSION").to_string(),
        features: features(),
        seed,
        experiment: git_state(experiment),
        ..Provenance::default()
    }
}

/// What is known when a run is created, with the data it will train on: the dataset's
/// fingerprint (its root, or its train and val folders) and the hash of the split's lists.
pub fn of_new_run(
    experiment: &Path,
    config: &crate::config::ExperimentConfig,
    train: &crate::data::Dataset,
    val: &crate::data::Dataset,
) -> anyhow::Result<Provenance> {
    let mut p = at_creation(experiment, config.train.seed);
    p.dataset = dataset_fingerprint(config)?.0;
    p.split_sha256 = Some(split_sha256(config, train, val));
    Ok(p)
}

/// The fingerprint of an experiment's data (its root, or its train and val folders combined),
/// and each folder's entries in [`data_roots`] order; content hashes come from the folders'
/// caches where the files are unchanged.
pub fn dataset_fingerprint(
    config: &crate::config::ExperimentConfig,
) -> anyhow::Result<(Option<Fingerprint>, Vec<Vec<FileEntry>>)> {
    let mut prints = Vec::new();
    let mut entries = Vec::new();
    for root in data_roots(config) {
        let (print, files) = fingerprint::fingerprint_files(root, &cache_file(root))?;
        prints.push(print);
        entries.push(files);
    }
    let combined = match prints.len() {
        0 => None,
        1 => prints.pop(),
        _ => Some(Fingerprint {
            sha256: fingerprint::list_hash(
                &prints.iter().map(|f| f.sha256.as_str()).collect::<Vec<_>>(),
            ),
            files: prints.iter().map(|f| f.files).sum(),
            bytes: prints.iter().map(|f| f.bytes).sum(),
        }),
    };
    Ok((combined, entries))
}

/// The folders an experiment's data comes from: its root, or its train and val folders.
pub fn data_roots(config: &crate::config::ExperimentConfig) -> Vec<&Path> {
    let d = &config.data;
    match (&d.root, &d.train_dir, &d.val_dir) {
        (Some(root), _, _) => vec![root.as_path()],
        (None, Some(t), Some(v)) => vec![t.as_path(), v.as_path()],
        _ => vec![],
    }
}

/// The hash of the train and val lists (split, label, path relative to the data folder), in
/// order: two runs with the same hash trained and validated on the same images.
pub fn split_sha256(
    config: &crate::config::ExperimentConfig,
    train: &crate::data::Dataset,
    val: &crate::data::Dataset,
) -> String {
    let roots = data_roots(config);
    let roots = &roots;
    let lists: Vec<String> = [("train", train), ("val", val)]
        .iter()
        .flat_map(|(split, set)| {
            set.items.iter().map(move |it| {
                let rel = roots
                    .iter()
                    .find_map(|r| it.path.strip_prefix(r).ok())
                    .unwrap_or(&it.path);
                format!("{split}\t{}\t{}", it.label, rel.display())
            })
        })
        .collect();
    fingerprint::list_hash(&lists)
}

/// Where a dataset folder's content hashes are cached between fingerprints (by the folder's
/// path), so a second fingerprint of an unchanged folder reads no image.
pub fn cache_file(root: &Path) -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let key = hex::encode(Sha256::digest(root.display().to_string().as_bytes()));
    base.join("mvlab/fingerprints")
        .join(format!("{}.json", &key[..16]))
}

/// The lines `mvlab show` prints.
pub fn describe(p: &Provenance) -> Vec<String> {
    let mut out = vec![format!(
        "mvlab {} ({})",
        p.version,
        if p.features.is_empty() {
            "no features".to_string()
        } else {
            p.features.join(", ")
        }
    )];
    out.push(format!("seed {}", p.seed));
    match &p.experiment {
        Some(g) => out.push(format!(
            "experiment at commit {}{}",
            &g.commit[..g.commit.len().min(12)],
            match &g.dirty {
                Some(h) => format!(
                    ", uncommitted changes (diff sha256 {})",
                    &h[..h.len().min(12)]
                ),
                None => ", clean".to_string(),
            }
        )),
        None => out.push("experiment file not in a git repository".into()),
    }
    if let Some(d) = &p.dataset {
        out.push(format!(
            "dataset {} files, {} bytes, sha256 {}",
            d.files,
            d.bytes,
            &d.sha256[..d.sha256.len().min(16)]
        ));
    }
    if let Some(s) = &p.split_sha256 {
        out.push(format!("train/val lists sha256 {}", &s[..s.len().min(16)]));
    }
    if let Some(d) = &p.device {
        out.push(format!("device {d}"));
    }
    if let Some(d) = &p.driver {
        out.push(format!("driver {d}"));
    }
    out
}

fn git(dir: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

/// The commit of the repository holding `file`, and a hash of its uncommitted changes.
pub fn git_state(file: &Path) -> Option<GitState> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty())?;
    let commit = String::from_utf8(git(dir, &["rev-parse", "HEAD"])?).ok()?;
    let diff = git(dir, &["diff", "HEAD"]).unwrap_or_default();
    use sha2::{Digest, Sha256};
    Some(GitState {
        commit: commit.trim().to_string(),
        dirty: (!diff.is_empty()).then(|| hex::encode(Sha256::digest(&diff))),
    })
}

/// The GPU driver, where the machine says (NVIDIA's version file).
pub fn driver() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    Some(text.lines().next()?.trim().to_string())
}

/// What differs between two runs' provenance that makes their numbers incomparable, in words.
pub fn data_differences(a: &Provenance, b: &Provenance) -> Vec<String> {
    let mut out = Vec::new();
    match (&a.dataset, &b.dataset) {
        (Some(x), Some(y)) if x.sha256 != y.sha256 => out.push(format!(
            "the datasets differ ({} files vs {})",
            x.files, y.files
        )),
        _ => {}
    }
    match (&a.split_sha256, &b.split_sha256) {
        (Some(x), Some(y)) if x != y => out.push("the train/val splits differ".into()),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::GitState;

    #[test]
    fn a_clean_checkout_is_written_as_not_dirty_and_old_records_read_back() {
        let clean = GitState {
            commit: "abc".into(),
            dirty: None,
        };
        let json = serde_json::to_string(&clean).unwrap();
        assert_eq!(json, r#"{"commit":"abc","dirty":false}"#);
        assert_eq!(serde_json::from_str::<GitState>(&json).unwrap(), clean);
        let old: GitState = serde_json::from_str(r#"{"commit":"abc","dirty":null}"#).unwrap();
        assert_eq!(old, clean);
        let dirty: GitState = serde_json::from_str(r#"{"commit":"abc","dirty":"ff"}"#).unwrap();
        assert_eq!(dirty.dirty.as_deref(), Some("ff"));
    }
}
