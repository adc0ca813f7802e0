//! The data pipeline over real files: formats and colour types, bad files, the loader.

use crate::common::Timed;
use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};
use mvlab::data::loader::{Loader, LoaderOptions};
use mvlab::data::{self, decode_rgb};
use std::path::Path;

fn rgb_gradient(w: u32, h: u32) -> image::RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| Rgb([(x * 8) as u8, (y * 8) as u8, 128]))
}

#[test]
fn every_format_and_colour_type_decodes_to_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rgb = DynamicImage::ImageRgb8(rgb_gradient(20, 10));
    for ext in ["png", "jpg", "bmp", "gif", "webp", "tiff"] {
        rgb.save(d.join(format!("rgb.{ext}"))).unwrap();
    }
    DynamicImage::ImageLuma8(ImageBuffer::from_fn(20, 10, |x, _| Luma([(x * 10) as u8])))
        .save(d.join("gray.png"))
        .unwrap();
    DynamicImage::ImageLumaA8(ImageBuffer::from_fn(20, 10, |_, _| LumaA([0u8, 255])))
        .save(d.join("graya.png"))
        .unwrap();
    DynamicImage::ImageLuma16(ImageBuffer::from_fn(20, 10, |_, _| Luma([65535u16])))
        .save(d.join("gray16.png"))
        .unwrap();
    DynamicImage::ImageRgb16(ImageBuffer::from_fn(20, 10, |_, _| Rgb([65535u16, 0, 0])))
        .save(d.join("rgb16.png"))
        .unwrap();
    // Left half opaque red, right half fully transparent: the transparent half becomes white.
    DynamicImage::ImageRgba8(ImageBuffer::from_fn(20, 10, |x, _| {
        if x < 10 {
            Rgba([255, 0, 0, 255])
        } else {
            Rgba([0, 0, 0, 0])
        }
    }))
    .save(d.join("rgba.png"))
    .unwrap();
    for name in [
        "rgb.png",
        "rgb.jpg",
        "rgb.bmp",
        "rgb.gif",
        "rgb.webp",
        "rgb.tiff",
        "gray.png",
        "graya.png",
        "gray16.png",
        "rgb16.png",
        "rgba.png",
    ] {
        let img = decode_rgb(&d.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(img.dimensions(), (20, 10), "{name}");
    }
    assert_eq!(
        decode_rgb(&d.join("rgb.png")).unwrap(),
        rgb_gradient(20, 10)
    );
    let rgba = decode_rgb(&d.join("rgba.png")).unwrap();
    assert_eq!(rgba.get_pixel(2, 2).0, [255, 0, 0]);
    assert_eq!(rgba.get_pixel(15, 2).0, [255, 255, 255]);
    assert_eq!(
        decode_rgb(&d.join("graya.png")).unwrap().get_pixel(0, 0).0,
        [0, 0, 0]
    );
    assert_eq!(
        decode_rgb(&d.join("gray16.png")).unwrap().get_pixel(0, 0).0,
        [255, 255, 255]
    );
    assert_eq!(
        decode_rgb(&d.join("rgb16.png")).unwrap().get_pixel(0, 0).0,
        [255, 0, 0]
    );
    // GIF is palette-based.
    let gif = decode_rgb(&d.join("rgb.gif")).unwrap();
    assert!(gif.get_pixel(19, 9).0[0] > 100);
}

#[test]
fn bad_files_are_errors_that_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    DynamicImage::ImageRgb8(rgb_gradient(64, 64))
        .save(d.join("ok.jpg"))
        .unwrap();
    let jpg = std::fs::read(d.join("ok.jpg")).unwrap();
    // A JPEG cut off inside its header is unreadable (one cut in the scan data may still decode).
    std::fs::write(d.join("corrupt.jpg"), &jpg[..100]).unwrap();
    std::fs::write(d.join("zero.jpg"), b"").unwrap();
    std::fs::write(d.join("text.jpg"), b"hello, I am not an image").unwrap();
    for name in ["corrupt.jpg", "zero.jpg", "text.jpg"] {
        assert!(decode_rgb(&d.join(name)).is_err(), "{name} decoded");
    }
}

#[test]
fn dataset_folders_are_checked_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let e = data::scan(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    std::fs::create_dir_all(dir.path().join("only/a")).unwrap();
    DynamicImage::ImageRgb8(rgb_gradient(8, 8))
        .save(dir.path().join("only/a/x.png"))
        .unwrap();
    let e = data::scan(&dir.path().join("only"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 2"), "{e}");
    std::fs::create_dir_all(dir.path().join("only/b")).unwrap();
    let e = data::scan(&dir.path().join("only"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("only/b") && e.contains("no images"), "{e}");
}

fn opts(workers: usize, cache_mb: usize) -> LoaderOptions {
    LoaderOptions {
        image_size: 32,
        resize_bigger: 40,
        augment: true,
        batch_size: 5,
        shuffle: true,
        seed: 9,
        workers,
        prefetch: 2,
        cache_mb,
    }
}

fn epoch_data(loader: &Loader, epoch: usize) -> Vec<(Vec<f32>, Vec<i64>)> {
    loader
        .epoch(epoch)
        .into_iter()
        .map(|b| (b.images, b.labels))
        .collect()
}

#[test]
fn loader_is_deterministic_across_threads_caches_and_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::common::tiny_dataset(dir.path(), 3, 7, 50);
    let ds = data::scan(&root).unwrap();
    let one = Loader::new(&ds, opts(1, 1024), dir.path()).unwrap();
    let two_mapped = Loader::new(&ds, opts(2, 0), dir.path()).unwrap();
    assert!(two_mapped.cache().is_mapped() && !one.cache().is_mapped());
    let a = epoch_data(&one, 1);
    assert_eq!(a.len(), 5); // 21 images in batches of 5
    assert_eq!(a.iter().map(|b| b.1.len()).sum::<usize>(), 21);
    assert_eq!(a[0].0.len(), 5 * 3 * 32 * 32);
    assert!(a.iter().flat_map(|b| &b.0).all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(
        a,
        epoch_data(&two_mapped, 1),
        "1 thread in RAM == 2 threads memory-mapped"
    );
    assert_eq!(
        a,
        epoch_data(&one, 1),
        "second pass (from cache) == first pass (decoded)"
    );
    assert_ne!(
        a,
        epoch_data(&one, 2),
        "another epoch shuffles and augments differently"
    );
}

#[test]
fn validation_batches_are_the_resized_images_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::common::tiny_dataset(dir.path(), 2, 3, 32);
    let ds = data::scan(&root).unwrap();
    let o = LoaderOptions {
        augment: false,
        shuffle: false,
        resize_bigger: 32,
        ..opts(1, 64)
    };
    let loader = Loader::new(&ds, o, dir.path()).unwrap();
    let batches = epoch_data(&loader, 0);
    assert_eq!(batches[0].1, vec![0, 0, 0, 1, 1]);
    let img = decode_rgb(Path::new(&ds.items[0].path)).unwrap();
    let px = img.get_pixel(5, 7).0;
    let plane = 32 * 32;
    let got = [
        batches[0].0[7 * 32 + 5],
        batches[0].0[plane + 7 * 32 + 5],
        batches[0].0[2 * plane + 7 * 32 + 5],
    ];
    assert_eq!(got, px.map(|c| c as f32 / 255.0));
}

/// A split made of links (a common way to split a folder without copying it) is fingerprinted
/// like a copy of the same files; a dangling link is counted and named.
#[test]
fn a_symlinked_split_has_the_fingerprint_of_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::common::tiny_dataset(dir.path(), 2, 5, 24);
    let copy = dir.path().join("copy");
    let linked = dir.path().join("linked");
    let cp = std::process::Command::new("cp")
        .arg("-r")
        .arg(&root)
        .arg(&copy)
        .timed_status();
    assert!(cp.success());
    for class in std::fs::read_dir(&root).unwrap() {
        let class = class.unwrap().path();
        let to = linked.join(class.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&class).unwrap() {
            let f = f.unwrap().path();
            std::os::unix::fs::symlink(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    let fingerprint = |d: &std::path::Path| {
        let out =
            crate::common::run_ok(crate::common::mvlab().args(["data", "fingerprint"]).arg(d));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (a, b) = (fingerprint(&copy), fingerprint(&linked));
    let head = |s: &str| s.split(" in ").next().unwrap().to_string();
    assert_eq!(head(&a), head(&b));
    assert!(a.contains(" 10 files "), "{a}");
    std::os::unix::fs::symlink(dir.path().join("gone.png"), linked.join("disc/gone.png")).unwrap();
    let c = fingerprint(&linked);
    assert!(
        c.contains(" 11 files ") && c.contains("1 unreadable") && c.contains("disc/gone.png"),
        "{c}"
    );
}

/// A run on a split made of links: `rerun --verify` sees an image changed behind its link and
/// names it.
#[test]
fn rerun_verify_names_an_image_changed_behind_a_link() {
    use crate::common::{mvlab, run_ok, tiny_config, tiny_dataset};
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 2, 6, 32);
    let linked = dir.path().join("linked");
    for class in std::fs::read_dir(&root).unwrap() {
        let class = class.unwrap().path();
        let to = linked.join(class.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&class).unwrap() {
            let f = f.unwrap().path();
            std::os::unix::fs::symlink(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    let cfg = tiny_config(dir.path(), &linked, 1, "");
    let db = dir.path().join("r.db");
    // Files modified in the last 2 s are not trusted to the fingerprint cache, which is what
    // names the changed files later: the images are made older than that first.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    run_ok(mvlab().arg("--db").arg(&db).arg("run").arg(&cfg));
    // Every image of one class, so that the first epoch's steps see some of them.
    for f in std::fs::read_dir(root.join("disc")).unwrap() {
        let target = f.unwrap().path();
        let mut img = image::open(&target).unwrap().to_rgb8();
        for p in img.pixels_mut() {
            p.0 = [255 - p.0[0], 255 - p.0[1], 255 - p.0[2]];
        }
        img.save(&target).unwrap();
    }
    let out = mvlab()
        .arg("--db")
        .arg(&db)
        .args(["rerun", "1", "--verify"])
        .timed_output();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let named = linked.join("disc/00000.png").display().to_string();
    assert!(text.contains(&format!("changed: {named}")), "{text}");
}
