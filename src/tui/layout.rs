//! Where things sit on screen, shared by drawing and mouse hit-tests so the two cannot drift.

use ratatui::layout::{Constraint, Layout, Rect};

/// The workbench's views, in tab-bar order (each drawn and keyed by its module in `views`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Experiments,
    Runs,
    Run,
    Compare,
    Checkpoints,
    Sweeps,
    Samples,
}

pub const TABS: [(Tab, &str); 7] = [
    (Tab::Experiments, "1 Experiments"),
    (Tab::Runs, "2 Runs"),
    (Tab::Run, "3 Run"),
    (Tab::Compare, "4 Compare"),
    (Tab::Checkpoints, "5 Ckpts"),
    (Tab::Sweeps, "6 Sweeps"),
    (Tab::Samples, "7 Samples"),
];

/// Space each side of a tab title, and the line between titles (ratatui's `Tabs` defaults,
/// set explicitly so the hit-test below measures what is drawn).
pub const TAB_PADDING: &str = " ";
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

/// The tab whose title is under (column, row), if any.
pub fn tab_at(area: Rect, column: u16, row: u16) -> Option<Tab> {
    let [bar, _, _] = screen(area);
    if row != bar.y {
        return None;
    }
    let pad = TAB_PADDING.chars().count() as u16;
    let divider = TAB_DIVIDER.chars().count() as u16;
    let mut x = bar.x;
    for (tab, label) in TABS {
        let end = x + pad + label.chars().count() as u16 + pad;
        if column >= x && column < end {
            return Some(tab);
        }
        x = end + divider;
    }
    None
}
