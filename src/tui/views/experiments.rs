//! View 1: the experiment files of the watched folder, each with its text or its located error;
//! a run or the file's `[sweep]` is started from here.

use super::{Action, View};
use crate::tui::state::{Command, Data};
use crate::tui::widgets::moved;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::prelude::*;
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};

#[derive(Debug, Default)]
pub struct ExperimentsView {
    sel: usize,
}

impl ExperimentsView {
    /// The run or sweep of the selected file, or a word on why there is none.
    fn start(&self, data: &Data, sweep: bool) -> Option<Action> {
        let entry = data.experiments.get(self.sel)?;
        if let Some(e) = &entry.error {
            return Some(Action::Say(format!(
                "{} is invalid: {e}",
                entry.path.display()
            )));
        }
        let (path, name) = (entry.path.clone(), entry.name.clone());
        Some(Action::Do(if sweep {
            Command::StartSweep { path, name }
        } else {
            Command::StartRun { path, name }
        }))
    }

}

impl View for ExperimentsView {
    fn title(&self) -> &'static str {
        "Experiments"
    }

    fn help(&self) -> &'static str {
        "Experiments: Enter/r start a run, S queue and work its [sweep]"
    }

    fn handle_key(&mut self, key: KeyEvent, data: &Data) -> Option<Action> {
        match key.code {
            KeyCode::Enter | KeyCode::Char('r') => self.start(data, false),
            KeyCode::Char('S') => self.start(data, true),
            _ => None,
        }
    }

    fn move_selection(&mut self, delta: i64, data: &Data) -> Option<Action> {
        self.sel = moved(self.sel, delta, data.experiments.len());
        None
    }

    fn clamp(&mut self, data: &Data) {
        self.sel = self.sel.min(data.experiments.len().saturating_sub(1));
    }

    fn draw(&self, f: &mut Frame, area: Rect, data: &Data) {
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(35), Constraint::Percentage(65)])
                .areas(area);
        let items: Vec<ListItem> = data
            .experiments
            .iter()
            .map(|e| {
                let (mark, style) = if e.error.is_some() {
                    ("✗", Style::new().red())
                } else {
                    ("✓", Style::new().green())
                };
                ListItem::new(Line::from(vec![
                    Span::styled(format!("{mark} "), style),
                    Span::raw(e.name.clone()),
                ]))
            })
            .collect();
        let list = List::new(items)
            .block(Block::bordered().title("experiments"))
            .highlight_style(Style::new().reversed());
        let mut state =
            ListState::default().with_selected((!data.experiments.is_empty()).then_some(self.sel));
        f.render_stateful_widget(list, left, &mut state);
        let selected = data.experiments.get(self.sel);
        let title = match selected {
            Some(e) => format!(
                "{} (Enter: run, S: sweep)",
                e.path.file_name().unwrap_or_default().to_string_lossy()
            ),
            None => format!("{}", data.experiments_dir.display()),
        };
        let preview = match selected {
            None => Paragraph::new(
                "No experiment files yet: add a TOML file to the experiments folder.",
            ),
            Some(e) => match &e.error {
                Some(err) => Paragraph::new(format!("invalid:\n{err}\n\n{}", e.text))
                    .style(Style::new().red()),
                None => Paragraph::new(e.text.clone()),
            },
        };
        f.render_widget(
            preview
                .block(Block::bordered().title(title))
                .wrap(Wrap { trim: false }),
            right,
        );
    }
}
