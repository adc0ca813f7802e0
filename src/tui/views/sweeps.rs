//! View 6: the sweeps in the registry and the ranking report of the selected one.

use super::{Action, View};
use crate::tui::state::{Data, Wanted};
use crate::tui::widgets::moved;
use ratatui::prelude::*;
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};

#[derive(Debug, Default)]
pub struct SweepsView {
    sel: usize,
}

impl View for SweepsView {
    fn title(&self) -> &'static str {
        "Sweeps"
    }

    fn help(&self) -> &'static str {
        "Sweeps: the ranking of the selected sweep (S in Experiments starts one)"
    }

    fn wants(&self, data: &Data, _shown: bool, wanted: &mut Wanted) {
        wanted.sweep = data.snapshot.sweeps.get(self.sel).map(|s| s.id);
    }

    fn move_selection(&mut self, delta: i64, data: &Data) -> Option<Action> {
        self.sel = moved(self.sel, delta, data.snapshot.sweeps.len());
        None
    }

    fn clamp(&mut self, data: &Data) {
        self.sel = self.sel.min(data.snapshot.sweeps.len().saturating_sub(1));
    }

    fn draw(&self, f: &mut Frame, area: Rect, data: &Data) {
        let [left, right] =
            Layout::horizontal([Constraint::Length(20), Constraint::Min(20)]).areas(area);
        let items: Vec<ListItem> = data
            .snapshot
            .sweeps
            .iter()
            .map(|s| {
                let active = if data.sweeping.contains(&s.id) {
                    " ▶"
                } else {
                    ""
                };
                ListItem::new(format!("{} {} ({}){active}", s.id, s.name, s.method))
            })
            .collect();
        let list = List::new(items)
            .block(Block::bordered().title("sweeps"))
            .highlight_style(Style::new().reversed());
        let mut state = ListState::default()
            .with_selected((!data.snapshot.sweeps.is_empty()).then_some(self.sel));
        f.render_stateful_widget(list, left, &mut state);
        let text = match data.snapshot.sweeps.get(self.sel) {
            Some(sweep) => match &data.snapshot.sweep_report {
                Some((id, report)) if *id == sweep.id => report.clone(),
                _ => "loading…".into(),
            },
            None => "No sweeps yet: press S on an experiment with a [sweep] section.".into(),
        };
        f.render_widget(
            Paragraph::new(text)
                .block(Block::bordered().title("ranking"))
                .wrap(Wrap { trim: false }),
            right,
        );
    }
}
