//! Drawing pieces more than one view uses: the line chart, the status colours, a centred box.

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
    let refs: Vec<&[(f64, f64)]> = series.iter().map(|s| s.1).collect();
    let (xb, yb) = bounds(&refs);
    let datasets = series
        .into_iter()
        .map(|(name, data, color)| {
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
        })
        .collect();
    let label = |v: f64| Span::raw(format!("{v:.3}"));
    Chart::new(datasets)
        .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)))
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

/// Moves a list selection by `delta` within `len` entries.
pub fn moved(sel: usize, delta: i64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    (sel as i64 + delta).clamp(0, len as i64 - 1) as usize
}
