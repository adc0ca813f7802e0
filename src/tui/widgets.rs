//! Drawing pieces more than one view uses: the line chart, the status colours, a centred box.

use super::terminal::Images;
use crate::status::RunStatus;
use ratatui::prelude::*;
use ratatui::symbols::Marker;
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType};

/// Colours of the series of several runs, in order.
pub const PALETTE: [Color; 6] = [
    Color::Cyan,
    Color::Yellow,
    Color::Magenta,
    Color::Green,
    Color::Red,
    Color::Blue,
];

pub fn status_style(s: RunStatus) -> Style {
    match s {
        RunStatus::Running => Style::new().cyan(),
        RunStatus::Completed => Style::new().green(),
        RunStatus::Failed | RunStatus::Interrupted => Style::new().red(),
        RunStatus::Cancelled | RunStatus::Pruned => Style::new().yellow(),
        RunStatus::Queued => Style::new(),
    }
}

pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// The x and y ranges that hold every finite point, y padded a little.
fn bounds(series: &[&[(f64, f64)]]) -> ([f64; 2], [f64; 2]) {
    let pts = series.iter().flat_map(|s| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return ([0.0, 1.0], [0.0, 1.0]);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    ([x0, x1], [y0 - pad, y1 + pad])
}

/// A braille line chart of named series (a single point is drawn as a dot).
pub fn chart<'a>(
    title: &'a str,
    x_name: &'a str,
    series: Vec<(String, &'a [(f64, f64)], Color)>,
) -> Chart<'a> {
    chart_with_bands(title, x_name, series, Vec::new())
}

/// [`chart`] with shaded bands (e.g. a seed group's ±1 std) drawn under the lines.
pub fn chart_with_bands<'a>(
    title: &'a str,
    x_name: &'a str,
    series: Vec<(String, &'a [(f64, f64)], Color)>,
    bands: Vec<(&'a [(f64, f64)], Color)>,
) -> Chart<'a> {
    let refs: Vec<&[(f64, f64)]> = series
        .iter()
        .map(|s| s.1)
        .chain(bands.iter().map(|b| b.0))
        .collect();
    let (xb, yb) = bounds(&refs);
    let shaded = bands.into_iter().map(|(fill, color)| {
        Dataset::default()
            .marker(Marker::Dot)
            .graph_type(GraphType::Scatter)
            .style(Style::new().fg(color).add_modifier(Modifier::DIM))
            .data(fill)
    });
    let lines = series.into_iter().map(|(name, data, color)| {
        let g = if data.len() == 1 {
            GraphType::Scatter
        } else {
            GraphType::Line
        };
        Dataset::default()
            .name(name)
            .marker(Marker::Braille)
            .graph_type(g)
            .style(Style::new().fg(color))
            .data(data)
    });
    let datasets = shaded.chain(lines).collect();
    let label = |v: f64| Span::raw(format!("{v:.3}"));
    Chart::new(datasets)
        // The legend may cover part of the plot rather than vanish from small charts.
        .hidden_legend_constraints((Constraint::Ratio(2, 3), Constraint::Ratio(1, 1)))
        .block(Block::bordered().title(title))
        .x_axis(Axis::default().title(x_name).bounds(xb).labels(vec![
            Span::raw(format!("{:.0}", xb[0])),
            Span::raw(format!("{:.0}", xb[1])),
        ]))
        .y_axis(
            Axis::default()
                .bounds(yb)
                .labels(vec![label(yb[0]), label(yb[1])]),
        )
}

/// Several runs' curves as one: the mean at each x that at least two of them reach, and the
/// points that shade mean ± 1 standard deviation (sample) between them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Band {
    pub mean: Vec<(f64, f64)>,
    pub fill: Vec<(f64, f64)>,
}

pub fn band(curves: &[&[(f64, f64)]]) -> Band {
    let mut at: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
    for curve in curves {
        for &(x, y) in curve.iter() {
            // Curves are per epoch: x is a whole number, kept exactly as a key.
            if x.is_finite() && y.is_finite() {
                at.entry(x.round() as i64).or_default().push(y);
            }
        }
    }
    let stats: Vec<(f64, f64, f64)> = at
        .into_iter()
        .filter(|(_, ys)| ys.len() >= 2)
        .filter_map(|(x, ys)| crate::stats::mean_std(&ys).map(|(m, s)| (x as f64, m, s)))
        .collect();
    let mean = stats.iter().map(|&(x, m, _)| (x, m)).collect();
    // Vertical strokes of dots, 8 per epoch and 6 high, interpolated between epochs.
    let mut fill = Vec::new();
    for pair in stats.windows(2) {
        let ((x0, m0, s0), (x1, m1, s1)) = (pair[0], pair[1]);
        for k in 0..8 {
            let t = k as f64 / 8.0;
            let (x, m, s) = (x0 + t * (x1 - x0), m0 + t * (m1 - m0), s0 + t * (s1 - s0));
            fill.extend((0..=6).map(|j| (x, m - s + 2.0 * s * j as f64 / 6.0)));
        }
    }
    if let Some(&(x, m, s)) = stats.last() {
        fill.extend((0..=6).map(|j| (x, m - s + 2.0 * s * j as f64 / 6.0)));
    }
    Band { mean, fill }
}

/// Moves a list selection by `delta` within `len` entries.
pub fn moved(sel: usize, delta: i64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    (sel as i64 + delta).clamp(0, len as i64 - 1) as usize
}

/// How images are drawn, set once per process ([`use_images`], from the terminal's answer);
/// Unicode half-blocks until then, which every terminal shows (and the test backend).
static PICKER: std::sync::OnceLock<Option<ratatui_image::picker::Picker>> =
    std::sync::OnceLock::new();

fn picker_for(images: Images, cell: (u16, u16)) -> Option<ratatui_image::picker::Picker> {
    use ratatui_image::picker::{Picker, ProtocolType};
    let protocol = match images {
        Images::Kitty => ProtocolType::Kitty,
        Images::Sixel => ProtocolType::Sixel,
        Images::Iterm2 => ProtocolType::Iterm2,
        Images::Halfblocks => ProtocolType::Halfblocks,
        Images::None => return None,
    };
    let mut p = Picker::from_fontsize(cell);
    p.set_protocol_type(protocol);
    Some(p)
}

/// Draws images with this protocol from now on (the first call wins).
pub fn use_images(images: Images, cell: (u16, u16)) {
    let _ = PICKER.set(picker_for(images, cell));
}

/// An image file drawn to fill an area (small images are scaled up, keeping their aspect),
/// encoded again only when the file or the area changes.
#[derive(Default)]
pub struct ImagePanel {
    cache: std::cell::RefCell<
        Option<(
            std::path::PathBuf,
            Rect,
            Result<ratatui_image::protocol::Protocol, String>,
        )>,
    >,
}

impl std::fmt::Debug for ImagePanel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ImagePanel")
    }
}

impl ImagePanel {
    pub fn draw(&self, f: &mut Frame, area: Rect, path: &std::path::Path, title: String) {
        let block = Block::bordered().title(title);
        let inner = block.inner(area);
        f.render_widget(block, area);
        if inner.width == 0 || inner.height == 0 {
            return;
        }
        let mut cache = self.cache.borrow_mut();
        let fresh = !matches!(&*cache, Some((p, r, _)) if p == path && *r == inner);
        if fresh {
            *cache = Some((path.to_path_buf(), inner, encode(path, inner)));
        }
        match cache.as_ref().map(|c| &c.2) {
            Some(Ok(protocol)) => f.render_widget(ratatui_image::Image::new(protocol), inner),
            Some(Err(e)) => {
                let off = matches!(PICKER.get(), Some(None));
                let style = if off {
                    Style::new().dim()
                } else {
                    Style::new().red()
                };
                f.render_widget(
                    ratatui::widgets::Paragraph::new(e.clone()).style(style),
                    inner,
                )
            }
            None => {}
        }
    }
}

fn encode(path: &std::path::Path, area: Rect) -> Result<ratatui_image::protocol::Protocol, String> {
    let Some(picker) = PICKER.get_or_init(|| picker_for(Images::Halfblocks, (8, 16))) else {
        return Err(format!(
            "{} (images are off: MVLAB_IMAGES=none)",
            path.display()
        ));
    };
    let rgb = crate::data::decode_rgb(path).map_err(|e| format!("{e:#}"))?;
    let (fw, fh) = picker.font_size();
    let (w, h) = (
        u32::from(area.width) * u32::from(fw),
        u32::from(area.height) * u32::from(fh),
    );
    let scale = (w as f64 / rgb.width().max(1) as f64).min(h as f64 / rgb.height().max(1) as f64);
    let (tw, th) = (
        ((rgb.width() as f64 * scale) as u32).max(1),
        ((rgb.height() as f64 * scale) as u32).max(1),
    );
    let scaled = image::imageops::resize(&rgb, tw, th, image::imageops::FilterType::Nearest);
    picker
        .new_protocol(
            image::DynamicImage::ImageRgb8(scaled),
            area,
            ratatui_image::Resize::Fit(None),
        )
        .map_err(|e| format!("cannot draw {}: {e}", path.display()))
}
