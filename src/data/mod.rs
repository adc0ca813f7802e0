//! Image-folder datasets: index and stratified split, decode (any colour type to RGB),
//! the reference augmentation, a decode cache and a threaded, prefetching batch loader.

pub mod cache;
pub mod fingerprint;
pub mod idx;
pub mod loader;
pub mod synth;

use crate::config::DataSection;
use anyhow::{Context, Result, bail};
use image::{DynamicImage, RgbImage, imageops::FilterType};
use rand::{SeedableRng, seq::SliceRandom};
use std::path::{Path, PathBuf};

pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub path: PathBuf,
    pub label: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub classes: Vec<String>,
    pub items: Vec<Item>,
    /// Folder entries that could not even be looked at (broken links, symlink loops), with the
    /// reason: skipped, and counted here so they are reported.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl Dataset {
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for it in &self.items {
            counts[it.label] += 1;
        }
        counts
    }
}

/// Indexes `root/<class>/<image>`, class names sorted. Files with image extensions are listed;
/// whether they decode is found out (and counted) when they are read.
pub fn scan(root: &Path) -> Result<Dataset> {
    if !root.is_dir() {
        bail!(
            "dataset folder {} does not exist (expected ROOT/<class>/<image>)",
            root.display()
        );
    }
    let mut unreadable = Vec::new();
    let mut classes: Vec<String> = entries(root, &mut unreadable)?
        .into_iter()
        .filter(|(_, meta)| meta.is_dir())
        .map(|(p, _)| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    classes.sort();
    if classes.len() < 2 {
        bail!(
            "dataset {} has {} class folder(s); at least 2 are needed",
            root.display(),
            classes.len()
        );
    }
    let mut items = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        let mut files: Vec<PathBuf> = entries(&dir, &mut unreadable)?
            .into_iter()
            .filter(|(p, meta)| meta.is_file() && has_image_extension(p))
            .map(|(p, _)| p)
            .collect();
        if files.is_empty() {
            bail!(
                "class folder {} has no images ({})",
                dir.display(),
                IMAGE_EXTENSIONS.join(", ")
            );
        }
        files.sort();
        items.extend(files.into_iter().map(|path| Item { path, label }));
    }
    unreadable.sort();
    Ok(Dataset {
        classes,
        items,
        unreadable,
    })
}

/// The visible entries of a folder with their metadata (links followed). An entry whose
/// metadata cannot be read (a broken link, a symlink loop) goes to `unreadable` instead.
fn entries(
    dir: &Path,
    unreadable: &mut Vec<(PathBuf, String)>,
) -> Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(meta) => out.push((path, meta)),
            Err(e) => unreadable.push((path, e.to_string())),
        }
    }
    Ok(out)
}

pub fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Keeps at most `n` images of each class (the first ones in sorted order).
pub fn limit_per_class(ds: &mut Dataset, n: usize) {
    if n == 0 {
        return;
    }
    let mut seen = vec![0; ds.classes.len()];
    ds.items.retain(|it| {
        seen[it.label] += 1;
        seen[it.label] <= n
    });
}

/// Stratified, seeded split: each class contributes `round(n * val_fraction)` images to val
/// (at least one when the fraction is positive and the class has two or more).
pub fn split(ds: &Dataset, val_fraction: f64, seed: u64) -> (Dataset, Dataset) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for label in 0..ds.classes.len() {
        let mut class: Vec<Item> = ds
            .items
            .iter()
            .filter(|i| i.label == label)
            .cloned()
            .collect();
        class.shuffle(&mut rng);
        let mut n_val = (class.len() as f64 * val_fraction).round() as usize;
        if val_fraction > 0.0 && n_val == 0 && class.len() >= 2 {
            n_val = 1;
        }
        let rest = class.split_off(n_val.min(class.len()));
        val.extend(class);
        train.extend(rest);
    }
    let classes = ds.classes.clone();
    // Unreadable entries belong to no split; the train side carries them so they are told once.
    (
        Dataset {
            classes: classes.clone(),
            items: train,
            unreadable: ds.unreadable.clone(),
        },
        Dataset {
            classes,
            items: val,
            unreadable: Vec::new(),
        },
    )
}

/// The train and val sets an experiment describes.
pub fn load_splits(d: &DataSection, seed: u64) -> Result<(Dataset, Dataset)> {
    let (mut train, mut val) = match (&d.root, &d.train_dir, &d.val_dir) {
        (_, Some(t), Some(v)) => {
            let (train, val) = (scan(t)?, scan(v)?);
            if train.classes != val.classes {
                bail!(
                    "class folders differ between {} ({:?}) and {} ({:?})",
                    t.display(),
                    train.classes,
                    v.display(),
                    val.classes
                );
            }
            (train, val)
        }
        (Some(root), _, _) => {
            let mut all = scan(root)?;
            limit_per_class(&mut all, d.max_per_class);
            split(&all, d.val_fraction, seed)
        }
        _ => bail!("data: set data.root, or both data.train_dir and data.val_dir"),
    };
    if d.root.is_none() {
        limit_per_class(&mut train, d.max_per_class);
        limit_per_class(&mut val, d.max_per_class);
    }
    if train.items.is_empty() {
        bail!("the training split is empty");
    }
    Ok((train, val))
}

/// Decodes any image the `image` crate reads into 8-bit RGB; alpha is composited on white.
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?
        .decode()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(to_rgb_on_white(img))
}

pub fn to_rgb_on_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as u32;
        let blend = |c: u8| ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([blend(p[0]), blend(p[1]), blend(p[2])])
    })
}

/// Decode then resize to `side x side` (bilinear, aspect not kept, as `tf.image.resize`).
pub fn decode_resized(path: &Path, side: usize) -> Result<RgbImage> {
    let img = decode_rgb(path)?;
    let s = side as u32;
    if img.dimensions() == (s, s) {
        return Ok(img);
    }
    Ok(image::imageops::resize(&img, s, s, FilterType::Triangle))
}

/// Writes a `side x side` RGB crop (optionally mirrored) as CHW floats in [0, 1].
pub fn crop_to_chw(
    src: &[u8],
    src_side: usize,
    x0: usize,
    y0: usize,
    side: usize,
    flip: bool,
    out: &mut [f32],
) {
    let plane = side * side;
    for y in 0..side {
        let row = &src[((y0 + y) * src_side + x0) * 3..];
        for x in 0..side {
            let sx = if flip { side - 1 - x } else { x };
            let p = &row[sx * 3..sx * 3 + 3];
            let o = y * side + x;
            out[o] = p[0] as f32 / 255.0;
            out[plane + o] = p[1] as f32 / 255.0;
            out[2 * plane + o] = p[2] as f32 / 255.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(per_class: &[usize]) -> Dataset {
        let mut items = Vec::new();
        for (label, n) in per_class.iter().enumerate() {
            for i in 0..*n {
                items.push(Item {
                    path: format!("c{label}/{i}.png").into(),
                    label,
                });
            }
        }
        Dataset {
            classes: (0..per_class.len()).map(|i| format!("c{i}")).collect(),
            items,
            unreadable: Vec::new(),
        }
    }

    #[test]
    fn split_is_stratified_deterministic_and_disjoint() {
        let all = ds(&[100, 50, 10]);
        let (train, val) = split(&all, 0.1, 7);
        assert_eq!(val.counts(), vec![10, 5, 1]);
        assert_eq!(train.counts(), vec![90, 45, 9]);
        let (train2, val2) = split(&all, 0.1, 7);
        assert_eq!(
            (train.items.clone(), val.items.clone()),
            (train2.items, val2.items)
        );
        let (_, val3) = split(&all, 0.1, 8);
        assert_ne!(val.items, val3.items);
        for v in &val.items {
            assert!(!train.items.contains(v));
        }
    }

    #[test]
    fn symlink_loops_and_broken_links_are_counted_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        for class in ["a", "b"] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            std::fs::write(dir.path().join(class).join("1.png"), b"x").unwrap();
        }
        let a = dir.path().join("a");
        std::os::unix::fs::symlink(a.join("loop.png"), a.join("loop.png")).unwrap();
        std::os::unix::fs::symlink(a.join("gone.png"), a.join("broken.png")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("c"), dir.path().join("c")).unwrap();
        let ds = scan(dir.path()).unwrap();
        assert_eq!(ds.classes, ["a", "b"]);
        assert_eq!(ds.items.len(), 2);
        let names: Vec<String> = ds
            .unreadable
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["broken.png", "loop.png", "c"],
            "{:?}",
            ds.unreadable
        );
        let (train, val) = split(&ds, 0.5, 1);
        assert_eq!((train.unreadable.len(), val.unreadable.len()), (3, 0));
    }

    #[test]
    fn crop_and_flip_take_the_right_pixels() {
        // 4x4 source where pixel (x, y) has red = 10*y + x.
        let src: Vec<u8> = (0..16)
            .flat_map(|i| [((i / 4) * 10 + i % 4) as u8, 0, 255])
            .collect();
        let mut out = vec![0.0; 3 * 4];
        crop_to_chw(&src, 4, 1, 2, 2, false, &mut out);
        let red: Vec<u8> = out[..4].iter().map(|v| (v * 255.0).round() as u8).collect();
        assert_eq!(red, vec![21, 22, 31, 32]);
        assert!(out[8..].iter().all(|v| *v == 1.0));
        crop_to_chw(&src, 4, 1, 2, 2, true, &mut out);
        let red: Vec<u8> = out[..4].iter().map(|v| (v * 255.0).round() as u8).collect();
        assert_eq!(red, vec![22, 21, 32, 31]);
    }
}
