//! View 7: the training images of the run shown in Run that most likely carry a wrong label,
//! and those the model forgot most often (`mvlab samples`), each with the label the model
//! prefers and the image itself.

use crate::samples::{Sample, Samples};
use crate::tui::state::{Action, Command, Data};
use crate::tui::widgets::{ImagePanel, moved};
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::prelude::*;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};

pub const HELP: &str =
    "Samples: the shown run's likeliest mislabelled training images (f: forgotten
         most often instead): conf, mean probability of the label; prefers, the class the
         best checkpoint predicts; r reloads";

/// Which list the view shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum List {
    #[default]
    Suspects,
    Forgotten,
}

#[derive(Debug, Default)]
pub struct SamplesView {
    /// The run whose samples are loaded or loading.
    pub run: Option<i64>,
    pub loading: bool,
    pub result: Option<Result<Box<Samples>, String>>,
    pub list: List,
    sel: usize,
    image: ImagePanel,
}

impl SamplesView {
    /// The command that loads `run`'s samples, unless they are loaded or loading.
    pub fn want(&mut self, run: Option<i64>) -> Option<Command> {
        let run = run?;
        if self.run == Some(run) && (self.loading || self.result.is_some()) {
            return None;
        }
        self.reload(run)
    }

    fn reload(&mut self, run: i64) -> Option<Command> {
        self.run = Some(run);
        self.loading = true;
        self.result = None;
        self.sel = 0;
        Some(Command::LoadSamples(run))
    }

    pub fn loaded(&mut self, run: i64, result: Result<Box<Samples>, String>) {
        if self.run == Some(run) {
            self.loading = false;
            self.result = Some(result);
        }
    }

    fn rows(&self) -> &[Sample] {
        match (&self.result, self.list) {
            (Some(Ok(s)), List::Suspects) => &s.suspects,
            (Some(Ok(s)), List::Forgotten) => &s.forgotten,
            _ => &[],
        }
    }

    pub fn handle_key(&mut self, key: KeyEvent, _data: &Data) -> Option<Action> {
        match key.code {
            KeyCode::Char('f') => {
                self.list = match self.list {
                    List::Suspects => List::Forgotten,
                    List::Forgotten => List::Suspects,
                };
                self.sel = 0;
                None
            }
            KeyCode::Char('r') => self.run.and_then(|r| self.reload(r)).map(Action::Do),
            _ => None,
        }
    }

    pub fn move_selection(&mut self, delta: i64) {
        self.sel = moved(self.sel, delta, self.rows().len());
    }

    pub fn draw(&self, f: &mut Frame, area: Rect) {
        let message = match (&self.result, self.run, self.loading) {
            (_, None, _) => Some("No run shown: pick one in Runs (Enter), then come back.".into()),
            (_, Some(r), true) => Some(format!("reading run {r}'s per-image dynamics…")),
            (Some(Err(e)), _, _) => Some(e.clone()),
            _ => None,
        };
        if let Some(m) = message {
            f.render_widget(
                Paragraph::new(m).block(Block::bordered().title("samples")),
                area,
            );
            return;
        }
        let Some(Ok(s)) = &self.result else { return };
        let [table, image] =
            Layout::horizontal([Constraint::Min(40), Constraint::Length(26)]).areas(area);
        let rows: Vec<Row> = self
            .rows()
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
            TableState::default().with_selected((!self.rows().is_empty()).then_some(self.sel));
        f.render_stateful_widget(t, table, &mut state);
        match self.rows().get(self.sel) {
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
