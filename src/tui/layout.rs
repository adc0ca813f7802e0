//! Where things sit on screen, shared by drawing and mouse hit-tests so the two cannot drift.

use ratatui::layout::{Constraint, Layout, Rect};

/// Space before a tab title, and the line between titles (set explicitly so the hit-test
/// below measures what is drawn; one space, not ratatui's two, so that eight tabs fit 80
/// columns).
pub const TAB_PADDING_LEFT: &str = " ";
pub const TAB_PADDING_RIGHT: &str = "";
pub const TAB_DIVIDER: &str = "│";

/// The screen's three bands: tab bar, the current view, the status line.
pub fn screen(area: Rect) -> [Rect; 3] {
    Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area)
}

/// The index of the tab whose label (of `labels`, drawn in order) is under (column, row).
pub fn tab_at(area: Rect, labels: &[String], column: u16, row: u16) -> Option<usize> {
    let [bar, _, _] = screen(area);
    if row != bar.y {
        return None;
    }
    let width = |s: &str| s.chars().count() as u16;
    let mut x = bar.x;
    for (i, label) in labels.iter().enumerate() {
        let end = x + width(TAB_PADDING_LEFT) + width(label) + width(TAB_PADDING_RIGHT);
        if column >= x && column < end {
            return Some(i);
        }
        x = end + width(TAB_DIVIDER);
    }
    None
}
