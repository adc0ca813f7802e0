//! A procedurally drawn, learnable image-folder dataset: each class has its own shape and hue,
//! drawn at random places and sizes over a noisy, tinted background.

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::path::Path;

pub struct SynthOptions {
    pub classes: usize,
    pub per_class: usize,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    /// "jpg" or "png".
    pub format: String,
}

const SHAPES: [&str; 8] = [
    "disc", "square", "triangle", "ring", "stripes", "cross", "diamond", "checker",
];

pub fn class_name(c: usize) -> String {
    let round = c / SHAPES.len();
    if round == 0 {
        SHAPES[c].to_string()
    } else {
        format!("{}{}", SHAPES[c % SHAPES.len()], round + 1)
    }
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h = (h.fract() + 1.0).fract() * 6.0;
    let (i, f) = (h.floor() as i32, h.fract());
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Whether the point (u, v), relative to the shape centre in units of its radius, is inside.
fn inside(shape: usize, u: f32, v: f32) -> bool {
    match shape % SHAPES.len() {
        0 => u * u + v * v <= 1.0,
        1 => u.abs() <= 0.8 && v.abs() <= 0.8,
        2 => v <= 0.8 && v >= -0.9 + 1.7 * u.abs(),
        3 => (0.45..=1.0).contains(&(u * u + v * v).sqrt()),
        4 => u.abs() <= 1.0 && v.abs() <= 1.0 && ((v + 1.0) * 2.5).floor() as i32 % 2 == 0,
        5 => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
        6 => u.abs() + v.abs() <= 1.0,
        _ => {
            u.abs() <= 1.0
                && v.abs() <= 1.0
                && (((u + 1.0) * 2.0).floor() as i32 + ((v + 1.0) * 2.0).floor() as i32) % 2 == 0
        }
    }
}

pub fn draw(class: usize, classes: usize, rng: &mut StdRng, w: u32, h: u32) -> RgbImage {
    let hue = class as f32 / classes.max(1) as f32 + rng.random_range(-0.03..0.03);
    let fg = hsv(hue, rng.random_range(0.6..1.0), rng.random_range(0.7..1.0));
    let bg = hsv(
        rng.random_range(0.0..1.0),
        rng.random_range(0.0..0.3),
        rng.random_range(0.2..0.6),
    );
    let m = w.min(h) as f32;
    let r = rng.random_range(0.18..0.35) * m;
    let (cx, cy) = (
        rng.random_range(r..w as f32 - r),
        rng.random_range(r..h as f32 - r),
    );
    let angle: f32 = rng.random_range(-0.4..0.4);
    let (sin, cos) = angle.sin_cos();
    let noise = rng.random_range(0.02..0.10);
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = ((x as f32 - cx) / r, (y as f32 - cy) / r);
        let (u, v) = (dx * cos - dy * sin, dx * sin + dy * cos);
        let base = if inside(class, u, v) { fg } else { bg };
        let shade = 1.0 - 0.25 * (y as f32 / h as f32);
        let px = base
            .map(|c| ((c * shade + rng.random_range(-noise..noise)).clamp(0.0, 1.0) * 255.0) as u8);
        Rgb(px)
    })
}

/// Writes `out/<class>/<i>.<format>`; returns the number of images.
pub fn generate(out: &Path, o: &SynthOptions) -> Result<usize> {
    let mut rng = StdRng::seed_from_u64(o.seed);
    let mut n = 0;
    for c in 0..o.classes {
        let dir = out.join(class_name(c));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        for i in 0..o.per_class {
            let img = draw(c, o.classes, &mut rng, o.width, o.height);
            let path = dir.join(format!("{i:05}.{}", o.format));
            img.save(&path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_differ_and_draws_are_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let o = SynthOptions {
            classes: 3,
            per_class: 2,
            width: 40,
            height: 30,
            seed: 1,
            format: "png".into(),
        };
        assert_eq!(generate(dir.path(), &o).unwrap(), 6);
        let ds = crate::data::scan(dir.path()).unwrap();
        assert_eq!(ds.classes, vec!["disc", "square", "triangle"]);
        let a = std::fs::read(dir.path().join("disc/00000.png")).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        generate(dir2.path(), &o).unwrap();
        assert_eq!(
            a,
            std::fs::read(dir2.path().join("disc/00000.png")).unwrap()
        );
        assert_eq!(
            image::open(dir.path().join("square/00001.png"))
                .unwrap()
                .to_rgb8()
                .dimensions(),
            (40, 30)
        );
    }
}
