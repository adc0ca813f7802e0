//! View 7: the training images of the run shown in Run that most likely carry a wrong label,
//! and those the model forgot most often (`mvlab samples`), each with the label the model
//! prefers and the image itself.

use super::{Action, View};
use crate::samples::Sample;
use crate::tui::state::{Command, Data, Pending};
use crate::tui::widgets::{ImagePanel, moved};
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::prelude::*;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};

/// Which list the view shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum List {
    #[default]
    Suspects,
    Forgotten,
}

/// Shows the samples of the run in focus, read when the view is shown (`Data::samples`).
#[derive(Debug, Default)]
pub struct SamplesView {
    pub list: List,
    sel: usize,
    image: ImagePanel,
}

impl SamplesView {
    fn rows<'a>(&self, data: &'a Data) -> &'a [Sample] {
        match (&data.samples, self.list) {
            (Some((_, Pending::Done(Ok(s)))), List::Suspects) => &s.suspects,
            (Some((_, Pending::Done(Ok(s)))), List::Forgotten) => &s.forgotten,
            _ => &[],
        }
    }
}

impl View for SamplesView {
    fn title(&self) -> &'static str {
        "Samples"
    }

    fn help(&self) -> &'static str {
        "Samples: the shown run's likeliest mislabelled training images   r reloads
         f: those forgotten most often instead   conf: mean probability of the label
         prefers: the class the best checkpoint predicts"
    }

    /// Reads the focused run's samples unless they are read or being read.
    fn on_show(&mut self, data: &Data) -> Option<Action> {
        let run = data.focused_run()?;
        match &data.samples {
            Some((r, Pending::Running | Pending::Done(_))) if *r == run => None,
            _ => {
                self.sel = 0;
                Some(Action::Do(Command::LoadSamples(run)))
            }
        }
    }

    fn handle_key(&mut self, key: KeyEvent, data: &Data) -> Option<Action> {
        match key.code {
            KeyCode::Char('f') => {
                self.list = match self.list {
                    List::Suspects => List::Forgotten,
                    List::Forgotten => List::Suspects,
                };
                self.sel = 0;
                None
            }
            KeyCode::Char('r') => {
                self.sel = 0;
                data.focused_run()
                    .map(|run| Action::Do(Command::LoadSamples(run)))
            }
            _ => None,
        }
    }

    fn move_selection(&mut self, delta: i64, data: &Data) -> Option<Action> {
        self.sel = moved(self.sel, delta, self.rows(data).len());
        None
    }

    fn clamp(&mut self, data: &Data) {
        self.sel = self.sel.min(self.rows(data).len().saturating_sub(1));
    }

    fn draw(&self, f: &mut Frame, area: Rect, data: &Data) {
        let message = match &data.samples {
            None => Some("No run shown: pick one in Runs (Enter), then come back.".into()),
            Some((r, Pending::Running | Pending::None)) => {
                Some(format!("reading run {r}'s per-image dynamics…"))
            }
            Some((_, Pending::Done(Err(e)))) => Some(e.clone()),
            Some((_, Pending::Done(Ok(_)))) => None,
        };
        if let Some(m) = message {
            f.render_widget(
                Paragraph::new(m).block(Block::bordered().title("samples")),
                area,
            );
            return;
        }
        let Some((_, Pending::Done(Ok(s)))) = &data.samples else {
            return;
        };
        let [table, image] =
            Layout::horizontal([Constraint::Min(40), Constraint::Length(26)]).areas(area);
        let rows: Vec<Row> = self
            .rows(data)
            .iter()
            .map(|r| {
                Row::new(vec![
                    r.stats.index.to_string(),
                    format!("{:.2}", r.stats.confidence),
                    r.stats.forgetting.to_string(),
                    r.label.clone(),
                    r.preferred.clone().unwrap_or("?".into()),
                    r.path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ])
            })
            .collect();
        let title = match self.list {
            List::Suspects => format!(
                "run {}: likeliest mislabelled of {} images over {} epochs (f: forgotten)",
                s.run, s.images, s.epochs
            ),
            List::Forgotten => format!(
                "run {}: forgotten most often (f: likeliest mislabelled)",
                s.run
            ),
        };
        let t = Table::new(
            rows,
            [
                Constraint::Length(5),
                Constraint::Length(5),
                Constraint::Length(6),
                Constraint::Length(11),
                Constraint::Length(11),
                Constraint::Min(8),
            ],
        )
        .header(
            Row::new(["index", "conf", "forgot", "label", "prefers", "file"])
                .style(Style::new().bold()),
        )
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().reversed());
        let mut state =
            TableState::default().with_selected((!self.rows(data).is_empty()).then_some(self.sel));
        f.render_stateful_widget(t, table, &mut state);
        match self.rows(data).get(self.sel) {
            Some(r) => self.image.draw(
                f,
                image,
                &r.path,
                format!(
                    "labelled {}, model: {}",
                    r.label,
                    r.preferred.as_deref().unwrap_or("?")
                ),
            ),
            None => f.render_widget(Paragraph::new("none").block(Block::bordered()), image),
        }
    }
}
