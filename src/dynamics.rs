//! Per-image training dynamics: what each training image looked like to the model, epoch by
//! epoch, and what that says about the image.
//!
//! Every epoch the trainer turns each batch's logits into one [`Observation`] per image
//! ([`observe`]: loss, probability of the given label, margin, correct or not) and appends the
//! epoch's observations, indexed by the image's position in the run's train list, to the run's
//! [`DynamicsFile`]. The file is binary and compact (13 bytes per image per epoch) rather than
//! one registry row per image per epoch, which would be millions of rows for a modest run.
//!
//! From the recorded epochs, [`image_stats`] computes per image the "dataset cartography"
//! coordinates of Swayamdipta et al. (2020), confidence (mean probability of the given label)
//! and variability (its standard deviation), plus the forgetting events of Toneva et al. (2019).
//! [`mislabel_suspects`] lists the hard-to-learn images (low confidence: the model never
//! agrees with the label), which are the likeliest to be mislabelled, and [`most_forgotten`] the
//! images the model learns and unlearns most often.

use std::cmp::Ordering;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// First bytes of every dynamics file; the trailing digit is the format version.
const MAGIC: &[u8; 6] = b"MVDYN1";
/// Magic plus the image count (u32).
const HEADER_LEN: u64 = 10;
/// Per image per epoch: loss, p_label, margin (f32 each) and the flags byte.
const OBSERVATION_LEN: usize = 13;
/// Per epoch, before the observations: the epoch number (u32).
const EPOCH_NUMBER_LEN: u64 = 4;
const FLAG_SEEN: u8 = 1;
const FLAG_CORRECT: u8 = 2;

/// What one epoch recorded for one training image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Cross-entropy of the given label (no label smoothing).
    pub loss: f32,
    /// Softmax probability of the given label.
    pub p_label: f32,
    /// `p_label` minus the highest probability among the other classes: negative when the model
    /// prefers another class.
    pub margin: f32,
    /// Whether the predicted class (first maximal logit) is the given label.
    pub correct: bool,
}

/// Observations of one epoch, indexed by image (`None` for images not seen that epoch, e.g.
/// unreadable ones).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    pub epoch: u32,
    pub observations: Vec<Option<Observation>>,
}

/// One run's dynamics file.
///
/// Layout, all little endian: a header (magic `b"MVDYN1"`, image count as u32), then per epoch
/// the epoch number (u32) followed, for each image in order, by loss, p_label and margin (f32
/// each) and a flags byte (bit 0 seen, bit 1 correct). An unseen image's floats are zero.
///
/// Each epoch is appended in one write and fsynced. A truncated last epoch (a crash mid-write)
/// is ignored when reading and overwritten by the next append.
#[derive(Debug, Clone)]
pub struct DynamicsFile {
    path: PathBuf,
    images: usize,
}

impl DynamicsFile {
    /// Opens the dynamics file at `path` for a run with `images` training images, creating it
    /// (with its header) if it does not exist. An existing file must have the right magic and
    /// image count. A file shorter than a header that could be the start of this header (a
    /// crash while creating it) is rewritten.
    pub fn create_or_open(path: &Path, images: usize) -> Result<Self> {
        let header = header_bytes(images)
            .with_context(|| format!("cannot create dynamics file {}", path.display()))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open dynamics file {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot stat dynamics file {}", path.display()))?
            .len();
        if len < HEADER_LEN {
            let mut existing = Vec::new();
            Read::by_ref(&mut file)
                .take(HEADER_LEN)
                .read_to_end(&mut existing)
                .with_context(|| format!("cannot read dynamics file {}", path.display()))?;
            if !header.starts_with(&existing) {
                bail!(
                    "{} is not a dynamics file (too short, bad header)",
                    path.display()
                );
            }
            file.set_len(0)
                .and_then(|()| file.seek(SeekFrom::Start(0)))
                .and_then(|_| file.write_all(&header))
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write dynamics file {}", path.display()))?;
        } else {
            let found = read_header(&mut file, path)?;
            if found != images {
                bail!(
                    "dynamics file {} records {found} images, but the run has {images}",
                    path.display()
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            images,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn images(&self) -> usize {
        self.images
    }

    /// Appends one epoch and fsyncs. Epochs already in the file numbered `record.epoch` or
    /// later are cut off first (a resumed run redoes its last epochs, which must each be
    /// recorded once), and so is a truncated epoch left by a crash.
    pub fn append(&mut self, record: &EpochRecord) -> Result<()> {
        let path = &self.path;
        if record.observations.len() != self.images {
            bail!(
                "epoch {} has {} observations, but dynamics file {} records {} images",
                record.epoch,
                record.observations.len(),
                path.display(),
                self.images
            );
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open dynamics file {}", path.display()))?;
        // Re-checked because the file may have been replaced since create_or_open.
        let found = read_header(&mut file, path)?;
        if found != self.images {
            bail!(
                "dynamics file {} records {found} images, expected {}",
                path.display(),
                self.images
            );
        }
        let len = file
            .metadata()
            .with_context(|| format!("cannot stat dynamics file {}", path.display()))?
            .len();
        let epoch_len = epoch_len(self.images);
        let complete = len.saturating_sub(HEADER_LEN) / epoch_len;
        // Keep the epochs before the first one numbered `record.epoch` or later.
        let mut keep = complete;
        let mut number = [0u8; 4];
        for i in 0..complete {
            file.seek(SeekFrom::Start(HEADER_LEN + i * epoch_len))
                .and_then(|_| file.read_exact(&mut number))
                .with_context(|| format!("cannot read dynamics file {}", path.display()))?;
            if u32::from_le_bytes(number) >= record.epoch {
                keep = i;
                break;
            }
        }
        let end = HEADER_LEN + keep * epoch_len;

        let mut buf = Vec::with_capacity(4 + OBSERVATION_LEN * self.images);
        buf.extend_from_slice(&record.epoch.to_le_bytes());
        for observation in &record.observations {
            match observation {
                Some(o) => {
                    buf.extend_from_slice(&o.loss.to_le_bytes());
                    buf.extend_from_slice(&o.p_label.to_le_bytes());
                    buf.extend_from_slice(&o.margin.to_le_bytes());
                    buf.push(FLAG_SEEN | if o.correct { FLAG_CORRECT } else { 0 });
                }
                None => buf.extend_from_slice(&[0; OBSERVATION_LEN]),
            }
        }
        file.set_len(end)
            .and_then(|()| file.seek(SeekFrom::Start(end)))
            .and_then(|_| file.write_all(&buf))
            .and_then(|()| file.sync_all())
            .with_context(|| {
                format!(
                    "cannot write epoch {} to dynamics file {}",
                    record.epoch,
                    path.display()
                )
            })?;
        Ok(())
    }

    /// Reads a dynamics file: its image count and its complete epochs, in file order. A
    /// truncated last epoch is ignored.
    pub fn read(path: &Path) -> Result<(usize, Vec<EpochRecord>)> {
        let mut file = File::open(path)
            .with_context(|| format!("cannot open dynamics file {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot stat dynamics file {}", path.display()))?
            .len();
        let images = read_header(&mut file, path)?;
        let epoch_len = epoch_len(images);
        // Bounded by the file's length, so a corrupt image count cannot make us allocate more
        // than the file holds.
        let complete = len.saturating_sub(HEADER_LEN) / epoch_len;
        if complete == 0 {
            return Ok((images, Vec::new()));
        }
        let mut reader = std::io::BufReader::new(file);
        let mut buf = vec![0u8; OBSERVATION_LEN * images];
        let mut epochs = Vec::new();
        for i in 0..complete {
            let mut number = [0u8; 4];
            reader
                .read_exact(&mut number)
                .and_then(|()| reader.read_exact(&mut buf))
                .with_context(|| format!("cannot read dynamics file {}", path.display()))?;
            let epoch = u32::from_le_bytes(number);
            let mut observations = Vec::with_capacity(images);
            for (image, chunk) in buf.chunks_exact(OBSERVATION_LEN).enumerate() {
                let Ok(c) = <[u8; OBSERVATION_LEN]>::try_from(chunk) else {
                    bail!(
                        "internal error: bad chunk length reading {}",
                        path.display()
                    );
                };
                let flags = c[12];
                if flags & !(FLAG_SEEN | FLAG_CORRECT) != 0 {
                    bail!(
                        "dynamics file {} is corrupt: epoch {epoch} (record {i}) image {image} \
                         has flags {flags:#04x}",
                        path.display()
                    );
                }
                observations.push((flags & FLAG_SEEN != 0).then(|| Observation {
                    loss: f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    p_label: f32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                    margin: f32::from_le_bytes([c[8], c[9], c[10], c[11]]),
                    correct: flags & FLAG_CORRECT != 0,
                }));
            }
            epochs.push(EpochRecord {
                epoch,
                observations,
            });
        }
        Ok((images, epochs))
    }
}

fn header_bytes(images: usize) -> Result<[u8; HEADER_LEN as usize]> {
    let Ok(count) = u32::try_from(images) else {
        bail!(
            "{images} images do not fit a dynamics file (at most {})",
            u32::MAX
        );
    };
    let mut header = [0u8; HEADER_LEN as usize];
    header[..6].copy_from_slice(MAGIC);
    header[6..].copy_from_slice(&count.to_le_bytes());
    Ok(header)
}

/// Reads and checks the header from the start of `file`; returns the image count.
fn read_header(file: &mut File, path: &Path) -> Result<usize> {
    let mut header = [0u8; HEADER_LEN as usize];
    match file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut header))
    {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
            bail!("{} is not a dynamics file (too short)", path.display())
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read dynamics file {}", path.display()));
        }
    }
    if &header[..6] != MAGIC {
        bail!("{} is not a dynamics file (bad magic)", path.display());
    }
    let count = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
    usize::try_from(count)
        .with_context(|| format!("dynamics file {}: {count} images", path.display()))
}

/// Bytes per epoch; never zero, so it can divide.
fn epoch_len(images: usize) -> u64 {
    EPOCH_NUMBER_LEN + OBSERVATION_LEN as u64 * images as u64
}

/// Per image, over the epochs it was seen in: Swayamdipta et al.'s cartography coordinates and
/// Toneva et al.'s forgetting events. For an image never seen, `epochs` is 0 and the means are
/// 0.
#[derive(Debug, Clone, Serialize)]
pub struct ImageStats {
    pub index: usize,
    /// Epochs the image was seen in.
    pub epochs: usize,
    /// Mean probability of the given label.
    pub confidence: f64,
    /// Population standard deviation of the probability of the given label (as the paper).
    pub variability: f64,
    /// Fraction of epochs in which the prediction was right.
    pub correctness: f64,
    pub mean_loss: f64,
    pub mean_margin: f64,
    /// Forgetting events: right at one seen epoch, wrong at the next seen epoch.
    pub forgetting: usize,
    /// Seen at least once and never predicted right.
    pub never_learned: bool,
}

/// Per-image statistics over `epochs` (taken in the given order, which should be epoch order).
/// Observations beyond `images` are ignored; a record shorter than `images` counts its missing
/// images as unseen.
pub fn image_stats(images: usize, epochs: &[EpochRecord]) -> Vec<ImageStats> {
    #[derive(Clone, Default)]
    struct Acc {
        n: usize,
        // Welford's running mean and sum of squared deviations of p_label: one pass, stable.
        mean_p: f64,
        m2_p: f64,
        correct: usize,
        sum_loss: f64,
        sum_margin: f64,
        last_correct: Option<bool>,
        forgetting: usize,
    }
    let mut accs = vec![Acc::default(); images];
    for record in epochs {
        for (acc, observation) in accs.iter_mut().zip(&record.observations) {
            let Some(o) = observation else { continue };
            acc.n += 1;
            let p = f64::from(o.p_label);
            let delta = p - acc.mean_p;
            acc.mean_p += delta / acc.n as f64;
            acc.m2_p += delta * (p - acc.mean_p);
            acc.correct += usize::from(o.correct);
            acc.sum_loss += f64::from(o.loss);
            acc.sum_margin += f64::from(o.margin);
            if acc.last_correct == Some(true) && !o.correct {
                acc.forgetting += 1;
            }
            acc.last_correct = Some(o.correct);
        }
    }
    accs.into_iter()
        .enumerate()
        .map(|(index, acc)| {
            // max(1) only guards the never-seen case, whose sums are all zero.
            let n = acc.n.max(1) as f64;
            ImageStats {
                index,
                epochs: acc.n,
                confidence: acc.mean_p,
                variability: (acc.m2_p / n).max(0.0).sqrt(),
                correctness: acc.correct as f64 / n,
                mean_loss: acc.sum_loss / n,
                mean_margin: acc.sum_margin / n,
                forgetting: acc.forgetting,
                never_learned: acc.n > 0 && acc.correct == 0,
            }
        })
        .collect()
}

/// The score [`mislabel_suspects`] ranks by, lowest first: the confidence (mean probability of
/// the given label). Ties are broken by variability, lowest first.
pub fn mislabel_score(stats: &ImageStats) -> f64 {
    stats.confidence
}

/// The `k` images most likely mislabelled: Swayamdipta et al.'s hard-to-learn region, where the
/// model consistently gives the given label a low probability. Sorted by [`mislabel_score`]
/// ascending, then variability ascending, then index; only images seen in at least
/// `min_epochs` epochs (and at least one) count. NaN statistics (a diverged run) sort last.
pub fn mislabel_suspects(stats: &[ImageStats], k: usize, min_epochs: usize) -> Vec<&ImageStats> {
    let mut suspects: Vec<&ImageStats> = stats
        .iter()
        .filter(|s| s.epochs >= min_epochs.max(1))
        .collect();
    suspects.sort_by(|a, b| {
        nan_last(mislabel_score(a), mislabel_score(b))
            .then_with(|| nan_last(a.variability, b.variability))
            .then_with(|| a.index.cmp(&b.index))
    });
    suspects.truncate(k);
    suspects
}

/// The `k` images forgotten most often: only images with at least one forgetting event, by
/// forgetting events descending, then mean margin ascending (the more the model disagrees with
/// the label on average, the earlier), then index.
pub fn most_forgotten(stats: &[ImageStats], k: usize) -> Vec<&ImageStats> {
    let mut forgotten: Vec<&ImageStats> = stats.iter().filter(|s| s.forgetting > 0).collect();
    forgotten.sort_by(|a, b| {
        b.forgetting
            .cmp(&a.forgetting)
            .then_with(|| nan_last(a.mean_margin, b.mean_margin))
            .then_with(|| a.index.cmp(&b.index))
    });
    forgotten.truncate(k);
    forgotten
}

/// Ascending order with NaN after every number.
fn nan_last(a: f64, b: f64) -> Ordering {
    a.is_nan().cmp(&b.is_nan()).then_with(|| a.total_cmp(&b))
}

/// Each image's [`Observation`] from a batch's logits (row-major `[labels.len(), classes]`) and
/// given labels. Computed in f64 through log-sum-exp, so large logits neither overflow nor
/// lose the small probabilities: loss = logsumexp - logit[label] (plain cross-entropy, no label
/// smoothing), p = exp(logit - logsumexp). With one class the margin is p_label (no other
/// class). Non-finite logits give NaN statistics.
///
/// # Panics
///
/// If `classes` is 0, `logits.len() != labels.len() * classes`, or a label is `>= classes`:
/// these are the trainer's shapes, not data.
pub fn observe(logits: &[f32], classes: usize, labels: &[usize]) -> Vec<Observation> {
    assert!(classes > 0, "observe: no classes");
    assert_eq!(
        Some(logits.len()),
        labels.len().checked_mul(classes),
        "observe: {} logits for {} labels of {classes} classes",
        logits.len(),
        labels.len()
    );
    logits
        .chunks_exact(classes)
        .zip(labels)
        .map(|(row, &label)| {
            assert!(
                label < classes,
                "observe: label {label} out of range for {classes} classes"
            );
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let max = f64::from(max);
            let sum: f64 = row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
            let lse = max + sum.ln();
            // First maximal logit, as argmax picks it.
            let mut predicted = 0;
            let mut max_other = f64::NEG_INFINITY;
            for (class, &x) in row.iter().enumerate() {
                if x > row[predicted] {
                    predicted = class;
                }
                if class != label {
                    max_other = max_other.max(f64::from(x));
                }
            }
            let log_p = f64::from(row[label]) - lse;
            let p_label = log_p.exp();
            // exp(-inf) = 0 when there is no other class.
            let p_other = (max_other - lse).exp();
            Observation {
                loss: (-log_p) as f32,
                p_label: p_label as f32,
                margin: (p_label - p_other) as f32,
                correct: predicted == label,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn obs(p_label: f32, correct: bool) -> Option<Observation> {
        Some(Observation {
            loss: -p_label.ln(),
            p_label,
            margin: if correct { p_label - 0.1 } else { -0.2 },
            correct,
        })
    }

    #[test]
    fn observe_matches_hand_computed_softmax() {
        // Row 0: logits [2, 1, 0], label 0 (right). Row 1: same logits, label 2 (wrong).
        let logits = [2.0, 1.0, 0.0, 2.0, 1.0, 0.0];
        let got = observe(&logits, 3, &[0, 2]);
        let z = 2f64.exp() + 1f64.exp() + 1.0;
        let (p0, p1, p2) = (2f64.exp() / z, 1f64.exp() / z, 1.0 / z);
        assert_eq!(got.len(), 2);
        let close = |a: f32, b: f64| (f64::from(a) - b).abs() < 1e-6;
        assert!(close(got[0].p_label, p0), "{:?}", got[0]);
        assert!(close(got[0].margin, p0 - p1), "{:?}", got[0]);
        assert!(got[0].margin > 0.0);
        assert!(close(got[0].loss, -p0.ln()), "{:?}", got[0]);
        assert!(got[0].correct);
        assert!(close(got[1].p_label, p2), "{:?}", got[1]);
        assert!(close(got[1].margin, p2 - p0), "{:?}", got[1]);
        assert!(got[1].margin < 0.0);
        assert!(close(got[1].loss, -p2.ln()), "{:?}", got[1]);
        assert!(!got[1].correct);
        // loss = -ln p for every row.
        for o in &got {
            assert!((o.loss - -o.p_label.ln()).abs() < 1e-5, "{o:?}");
        }
    }

    #[test]
    fn observe_is_stable_for_huge_logits() {
        let logits = [1000.0, 0.0, -1000.0, 1000.0, 0.0, -1000.0];
        let got = observe(&logits, 3, &[0, 2]);
        for o in &got {
            assert!(o.loss.is_finite() && o.p_label.is_finite() && o.margin.is_finite());
        }
        assert_eq!(got[0].p_label, 1.0);
        assert!(got[0].loss.abs() < 1e-6);
        assert_eq!(got[0].margin, 1.0);
        assert!(got[0].correct);
        assert_eq!(got[1].p_label, 0.0);
        assert!((got[1].loss - 2000.0).abs() < 1e-3, "{:?}", got[1]);
        assert_eq!(got[1].margin, -1.0);
        assert!(!got[1].correct);
    }

    #[test]
    fn observe_ties_pick_the_first_class() {
        let got = observe(&[0.5, 0.5], 2, &[1]);
        assert!(!got[0].correct);
        assert!((got[0].p_label - 0.5).abs() < 1e-7);
        assert_eq!(got[0].margin, 0.0);
    }

    fn three_epochs() -> Vec<EpochRecord> {
        (1..=3)
            .map(|epoch| EpochRecord {
                epoch,
                observations: (0..5)
                    .map(|i| {
                        // Image 3 is unreadable; image 1 is skipped in epoch 2.
                        (i != 3 && !(i == 1 && epoch == 2)).then(|| Observation {
                            loss: 0.1 * i as f32 + epoch as f32,
                            p_label: 0.05 * (i + epoch as usize) as f32,
                            margin: -0.5 + 0.1 * i as f32,
                            correct: (i + epoch as usize).is_multiple_of(2),
                        })
                    })
                    .collect(),
            })
            .collect()
    }

    fn write(path: &Path, images: usize, records: &[EpochRecord]) {
        let mut file = DynamicsFile::create_or_open(path, images).unwrap();
        for record in records {
            file.append(record).unwrap();
        }
    }

    #[test]
    fn file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dynamics.bin");
        let records = three_epochs();
        write(&path, 5, &records);
        let (images, read) = DynamicsFile::read(&path).unwrap();
        assert_eq!(images, 5);
        assert_eq!(read, records);
        assert!(read[0].observations[3].is_none());
        assert!(read[1].observations[1].is_none());
        // Reopening with the same count keeps what is there.
        DynamicsFile::create_or_open(&path, 5).unwrap();
        assert_eq!(DynamicsFile::read(&path).unwrap().1, records);
    }

    #[test]
    fn truncated_last_epoch_is_ignored_then_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dynamics.bin");
        let records = three_epochs();
        write(&path, 5, &records);
        let full = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 7).unwrap();
        drop(file);
        let (_, read) = DynamicsFile::read(&path).unwrap();
        assert_eq!(read, records[..2]);
        // The next append replaces the torn epoch rather than following it.
        let mut file = DynamicsFile::create_or_open(&path, 5).unwrap();
        file.append(&records[2]).unwrap();
        assert_eq!(DynamicsFile::read(&path).unwrap().1, records);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full);
    }

    #[test]
    fn bad_magic_and_wrong_count_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-dynamics.bin");
        std::fs::write(&path, b"MVDYN2\x05\x00\x00\x00").unwrap();
        let err = format!("{:#}", DynamicsFile::read(&path).unwrap_err());
        assert!(
            err.contains("not-dynamics.bin") && err.contains("magic"),
            "{err}"
        );
        let err = format!("{:#}", DynamicsFile::create_or_open(&path, 5).unwrap_err());
        assert!(err.contains("not-dynamics.bin"), "{err}");

        let path = dir.path().join("five.bin");
        write(&path, 5, &three_epochs());
        let err = format!("{:#}", DynamicsFile::create_or_open(&path, 6).unwrap_err());
        assert!(err.contains("five.bin") && err.contains('6'), "{err}");

        let path = dir.path().join("short.bin");
        std::fs::write(&path, b"MVD").unwrap();
        let err = format!("{:#}", DynamicsFile::read(&path).unwrap_err());
        assert!(err.contains("short.bin"), "{err}");
        // ...but a torn header is rewritten on open.
        DynamicsFile::create_or_open(&path, 5).unwrap();
        assert_eq!(DynamicsFile::read(&path).unwrap(), (5, Vec::new()));
    }

    #[test]
    fn corrupt_contents_error_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.bin");
        // Claims u32::MAX images: no epoch can be complete, nothing huge is allocated.
        std::fs::write(&path, b"MVDYN1\xff\xff\xff\xff\x01\x00\x00\x00\x00").unwrap();
        assert_eq!(
            DynamicsFile::read(&path).unwrap(),
            (u32::MAX as usize, Vec::new())
        );
        // Unknown flag bits.
        let path = dir.path().join("flags.bin");
        write(&path, 1, &[]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[1, 0, 0, 0]);
        bytes.extend_from_slice(&[0; 12]);
        bytes.push(0x80);
        std::fs::write(&path, bytes).unwrap();
        let err = format!("{:#}", DynamicsFile::read(&path).unwrap_err());
        assert!(err.contains("flags.bin") && err.contains("flags"), "{err}");
    }

    #[test]
    fn append_with_the_wrong_length_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.bin");
        let mut file = DynamicsFile::create_or_open(&path, 5).unwrap();
        let record = EpochRecord {
            epoch: 1,
            observations: vec![None; 4],
        };
        let err = format!("{:#}", file.append(&record).unwrap_err());
        assert!(err.contains("d.bin"), "{err}");
    }

    #[test]
    fn redoing_an_epoch_drops_it_and_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dynamics.bin");
        let records = three_epochs();
        write(&path, 5, &records);
        // A resumed run redoes epoch 2 with different numbers.
        let mut redo = records[1].clone();
        redo.observations[0] = obs(0.77, true);
        let mut file = DynamicsFile::create_or_open(&path, 5).unwrap();
        file.append(&redo).unwrap();
        let (_, read) = DynamicsFile::read(&path).unwrap();
        let numbers: Vec<u32> = read.iter().map(|r| r.epoch).collect();
        assert_eq!(numbers, [1, 2]);
        assert_eq!(read[0], records[0]);
        assert_eq!(read[1], redo);
    }

    #[test]
    fn file_size_is_13_bytes_per_image_per_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dynamics.bin");
        let images = 2000;
        let mut file = DynamicsFile::create_or_open(&path, images).unwrap();
        let observations = observe(&vec![0.0; images * 4], 4, &vec![1; images]);
        for epoch in 1..=30 {
            let record = EpochRecord {
                epoch,
                observations: observations.iter().copied().map(Some).collect(),
            };
            file.append(&record).unwrap();
        }
        // 10-byte header + per epoch a 4-byte number and 13 bytes per image.
        let expected = 10 + 30 * (4 + 2000 * 13);
        assert_eq!(expected, 780_130);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), expected);
        let (_, read) = DynamicsFile::read(&path).unwrap();
        assert_eq!(read.len(), 30);
    }

    #[test]
    fn forgetting_counts_right_then_wrong_transitions() {
        // right, right, wrong, right, wrong; an unseen epoch between does not break the chain.
        let pattern = [
            Some(true),
            Some(true),
            Some(false),
            None,
            Some(true),
            Some(false),
        ];
        let epochs: Vec<EpochRecord> = pattern
            .iter()
            .enumerate()
            .map(|(e, c)| EpochRecord {
                epoch: e as u32 + 1,
                observations: vec![c.and_then(|c| obs(if c { 0.8 } else { 0.3 }, c))],
            })
            .collect();
        let stats = image_stats(1, &epochs);
        assert_eq!(stats[0].forgetting, 2);
        assert_eq!(stats[0].epochs, 5);
        assert!((stats[0].correctness - 0.6).abs() < 1e-12);
        assert!(!stats[0].never_learned);
        // Mean and population std of [0.8, 0.8, 0.3, 0.8, 0.3] (f32 inputs).
        let ps = [0.8f32, 0.8, 0.3, 0.8, 0.3].map(f64::from);
        let mean = ps.iter().sum::<f64>() / 5.0;
        let std = (ps.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / 5.0).sqrt();
        assert!((stats[0].confidence - mean).abs() < 1e-12);
        assert!((stats[0].variability - std).abs() < 1e-12);
        assert!((std - 0.244_948_974).abs() < 1e-6);

        let forgotten = most_forgotten(&stats, 5);
        assert_eq!(forgotten.len(), 1);
    }

    #[test]
    fn unseen_and_never_learned_images() {
        let epochs = vec![EpochRecord {
            epoch: 1,
            observations: vec![None, obs(0.2, false)],
        }];
        let stats = image_stats(3, &epochs);
        assert_eq!(stats[0].epochs, 0);
        assert!(!stats[0].never_learned);
        assert_eq!(stats[0].confidence, 0.0);
        assert!(stats[1].never_learned);
        assert_eq!(stats[2].epochs, 0);
        // Unseen images are never suspects, even with min_epochs 0.
        let suspects = mislabel_suspects(&stats, 10, 0);
        assert_eq!(suspects.len(), 1);
        assert_eq!(suspects[0].index, 1);
        assert!(most_forgotten(&stats, 10).is_empty());
        let json = serde_json::to_string(&stats[1]).unwrap();
        assert!(json.contains("\"never_learned\":true"), "{json}");
    }

    #[test]
    fn rankings_follow_their_keys() {
        let mk = |index, epochs, confidence, variability, forgetting, mean_margin| ImageStats {
            index,
            epochs,
            confidence,
            variability,
            correctness: 0.5,
            mean_loss: 1.0,
            mean_margin,
            forgetting,
            never_learned: false,
        };
        let stats = vec![
            mk(0, 10, 0.3, 0.2, 1, 0.1),
            mk(1, 10, 0.1, 0.3, 3, 0.2),
            mk(2, 10, 0.1, 0.1, 3, -0.2),
            mk(3, 2, 0.01, 0.0, 0, 0.0),
            mk(4, 10, f64::NAN, 0.0, 2, f64::NAN),
            mk(5, 10, 0.9, 0.05, 0, 0.5),
        ];
        let suspects: Vec<usize> = mislabel_suspects(&stats, 10, 5)
            .iter()
            .map(|s| s.index)
            .collect();
        assert_eq!(suspects, [2, 1, 0, 5, 4]);
        let top2: Vec<usize> = mislabel_suspects(&stats, 2, 1)
            .iter()
            .map(|s| s.index)
            .collect();
        assert_eq!(top2, [3, 2]);
        assert_eq!(mislabel_score(&stats[2]), 0.1);
        let forgotten: Vec<usize> = most_forgotten(&stats, 10).iter().map(|s| s.index).collect();
        assert_eq!(forgotten, [2, 1, 4, 0]);
        assert_eq!(most_forgotten(&stats, 1).len(), 1);
    }

    #[test]
    fn cartography_finds_synthetic_mislabelled_images() {
        let mut rng = StdRng::seed_from_u64(20);
        let images = 200;
        // Every tenth image is "mislabelled": the model never comes to agree with its label.
        let mislabelled = |i: usize| i % 10 == 3;
        // Clean images are learned at different speeds: each starts rising at its own epoch.
        let onsets: Vec<f32> = (0..images).map(|_| rng.random_range(0.0..6.0)).collect();
        let epochs: Vec<EpochRecord> = (0..10)
            .map(|e| EpochRecord {
                epoch: e + 1,
                observations: (0..images)
                    .map(|i| {
                        let noise: f32 = rng.random_range(-0.03..0.03);
                        let p = if mislabelled(i) {
                            0.1 + noise
                        } else {
                            let progress = ((e as f32 - onsets[i]) / 4.0).clamp(0.0, 1.0);
                            0.1 + 0.8 * progress + 2.0 * noise
                        };
                        let p = p.clamp(0.001, 0.999);
                        obs(p, p > 0.5)
                    })
                    .collect(),
            })
            .collect();
        let stats = image_stats(images, &epochs);
        let suspects = mislabel_suspects(&stats, 20, 5);
        assert_eq!(suspects.len(), 20);
        let hits = suspects.iter().filter(|s| mislabelled(s.index)).count();
        assert!(
            hits >= 18,
            "only {hits} of the top 20 suspects are mislabelled"
        );
        assert!(
            suspects
                .iter()
                .all(|s| s.never_learned || !mislabelled(s.index))
        );
    }
}
