//! IDX files (MNIST / Fashion-MNIST format, optionally gzipped) into an image folder.

use anyhow::{Context, Result, bail};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
];

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{} is not a valid gzip file", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// Images of an IDX3 file: (rows, cols, pixels of each image).
pub fn read_images(path: &Path) -> Result<(usize, usize, Vec<Vec<u8>>)> {
    let b = read_maybe_gz(path)?;
    if b.len() < 16 || be_u32(&b, 0) != 2051 {
        bail!(
            "{}: not an IDX image file (magic 2051 expected)",
            path.display()
        );
    }
    let (n, rows, cols) = (be_u32(&b, 4), be_u32(&b, 8), be_u32(&b, 12));
    if b.len() != 16 + n * rows * cols {
        bail!(
            "{}: expected {} bytes of pixels for {n} images, found {}",
            path.display(),
            n * rows * cols,
            b.len() - 16
        );
    }
    Ok((
        rows,
        cols,
        b[16..].chunks(rows * cols).map(|c| c.to_vec()).collect(),
    ))
}

pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let b = read_maybe_gz(path)?;
    if b.len() < 8 || be_u32(&b, 0) != 2049 {
        bail!(
            "{}: not an IDX label file (magic 2049 expected)",
            path.display()
        );
    }
    let n = be_u32(&b, 4);
    if b.len() != 8 + n {
        bail!(
            "{}: expected {n} labels, found {}",
            path.display(),
            b.len() - 8
        );
    }
    Ok(b[8..].to_vec())
}

/// Writes `out/<class>/<prefix>-<i>.png`, at most `per_class` images of each class (0 = all).
/// Returns the number of images written.
pub fn import(
    images: &Path,
    labels: &Path,
    out: &Path,
    prefix: &str,
    per_class: usize,
    classes: &[&str],
) -> Result<usize> {
    let (rows, cols, imgs) = read_images(images)?;
    let label_file = labels;
    let labels = read_labels(label_file)?;
    if imgs.len() != labels.len() {
        bail!(
            "{} has {} images but {} has {} labels",
            images.display(),
            imgs.len(),
            label_file.display(),
            labels.len()
        );
    }
    let mut written = vec![0usize; classes.len()];
    for (i, (px, &label)) in imgs.iter().zip(&labels).enumerate() {
        let label = label as usize;
        let Some(class) = classes.get(label) else {
            bail!(
                "{}: label {label} at index {i} has no class name",
                label_file.display()
            );
        };
        if per_class > 0 && written[label] >= per_class {
            continue;
        }
        let dir = out.join(class);
        std::fs::create_dir_all(&dir)?;
        let img =
            image::GrayImage::from_raw(cols as u32, rows as u32, px.clone()).expect("sized buffer");
        let file: PathBuf = dir.join(format!("{prefix}-{i:05}.png"));
        img.save(&file)
            .with_context(|| format!("cannot write {}", file.display()))?;
        written[label] += 1;
    }
    Ok(written.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_gz(path: &Path, bytes: &[u8]) {
        let mut e = flate2::write::GzEncoder::new(
            std::fs::File::create(path).unwrap(),
            flate2::Compression::fast(),
        );
        e.write_all(bytes).unwrap();
        e.finish().unwrap();
    }

    #[test]
    fn imports_a_small_idx_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (n, r, c) = (6usize, 3usize, 2usize);
        let mut img = vec![0, 0, 8, 3];
        for v in [n, r, c] {
            img.extend((v as u32).to_be_bytes());
        }
        img.extend((0..n * r * c).map(|i| (i * 7 % 256) as u8));
        let mut lab = vec![0, 0, 8, 1];
        lab.extend((n as u32).to_be_bytes());
        lab.extend([0u8, 1, 0, 1, 0, 2]);
        write_gz(&dir.path().join("img.gz"), &img);
        std::fs::write(dir.path().join("lab"), &lab).unwrap();
        let out = dir.path().join("out");
        let written = import(
            &dir.path().join("img.gz"),
            &dir.path().join("lab"),
            &out,
            "train",
            2,
            &["a", "b", "c"],
        )
        .unwrap();
        assert_eq!(written, 5); // class a capped at 2
        let first = image::open(out.join("a/train-00000.png"))
            .unwrap()
            .to_luma8();
        assert_eq!(first.dimensions(), (2, 3));
        assert_eq!(
            first.as_raw(),
            &(0..6).map(|i| (i * 7) as u8).collect::<Vec<_>>()
        );
        let ds = crate::data::scan(&out).unwrap();
        assert_eq!(ds.counts(), vec![2, 2, 1]);
        // A truncated file is refused with its name.
        std::fs::write(dir.path().join("bad"), &img[..20]).unwrap();
        let e = read_images(&dir.path().join("bad"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad"), "{e}");
    }
}
