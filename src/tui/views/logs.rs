//! The log of the run in focus: every line the registry holds for it (skipped images, collapsed
//! predictions, errors, checkpoints), following its end while it trains, filtered by level.

use super::{Action, View};
use crate::registry::LogRow;
use crate::status::LogLevel;
use crate::tui::state::{Data, Wanted};
use std::sync::Arc;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::prelude::*;
use ratatui::widgets::{Block, Paragraph};

#[derive(Debug, Default)]
pub struct LogsView {
    /// The lowest level shown (`None`: every line).
    least: Option<LogLevel>,
    /// The line shown last when scrolled up; `None` follows the end.
    anchor: Option<usize>,
}

/// Lines PageUp and PageDown move by.
const PAGE: i64 = 20;

/// The most log lines read for one run.
pub const LOG_LINES: usize = 5000;

/// What the refresher reads for this view: the focused run and its log.
pub type RunLog = (i64, Vec<LogRow>);

/// The log read for the view, if any.
pub fn read(data: &Data) -> Option<&RunLog> {
    data.snapshot.read.get(TITLE)?.downcast_ref::<RunLog>()
}

const TITLE: &str = "Logs";

impl LogsView {
    fn lines<'a>(&self, data: &'a Data) -> Option<(i64, Vec<&'a LogRow>)> {
        let run = data.focused_run()?;
        let (id, rows) = read(data).filter(|(id, _)| *id == run)?;
        let shown = rows
            .iter()
            .filter(|r| self.least.is_none_or(|least| r.level >= least))
            .collect();
        Some((*id, shown))
    }

    fn scroll(&mut self, delta: i64, data: &Data) {
        let Some((_, lines)) = self.lines(data) else {
            return;
        };
        let last = lines.len().saturating_sub(1);
        let at = self.anchor.unwrap_or(last) as i64 + delta;
        self.anchor = (at < last as i64).then(|| at.max(0) as usize);
    }
}

impl View for LogsView {
    fn title(&self) -> &'static str {
        TITLE
    }

    fn help(&self) -> &'static str {
        "Logs: the shown run's log, following its end   l level (all, warn+, error)
      ↑↓ PgUp PgDn scroll   End/G follow the end again   Home/g its start"
    }

    fn handle_key(&mut self, key: KeyEvent, data: &Data) -> Option<Action> {
        match key.code {
            KeyCode::Char('l') => {
                self.least = match self.least {
                    None => Some(LogLevel::Warn),
                    Some(LogLevel::Warn) => Some(LogLevel::Error),
                    Some(_) => None,
                };
                self.anchor = None;
            }
            KeyCode::End | KeyCode::Char('G') => self.anchor = None,
            KeyCode::Home | KeyCode::Char('g') => self.anchor = Some(0),
            KeyCode::PageUp => self.scroll(-PAGE, data),
            KeyCode::PageDown => self.scroll(PAGE, data),
            _ => {}
        }
        None
    }

    fn move_selection(&mut self, delta: i64, data: &Data) -> Option<Action> {
        self.scroll(delta, data);
        None
    }

    fn wants(&self, data: &Data, shown: bool, wanted: &mut Wanted) {
        // Thousands of lines: read only while they are on screen.
        if let Some(run) = data.focused_run().filter(|_| shown) {
            wanted.reads.push((
                TITLE,
                Arc::new(move |reg| {
                    let log: RunLog = (run, reg.logs(run, LOG_LINES)?);
                    Ok(Arc::new(log))
                }),
            ));
        }
    }

    fn clamp(&mut self, data: &Data) {
        if let (Some(at), Some((_, lines))) = (self.anchor, self.lines(data)) {
            self.anchor = (at + 1 < lines.len()).then_some(at);
        }
    }

    fn draw(&self, f: &mut Frame, area: Rect, data: &Data) {
        let Some(run) = data.focused_run() else {
            f.render_widget(
                Paragraph::new("No run yet: start one from Experiments, or pick one in Runs.")
                    .block(Block::bordered().title("log")),
                area,
            );
            return;
        };
        let Some((_, lines)) = self.lines(data) else {
            f.render_widget(
                Paragraph::new(format!("reading run {run}'s log…"))
                    .block(Block::bordered().title("log")),
                area,
            );
            return;
        };
        let height = area.height.saturating_sub(2) as usize;
        let last = self.anchor.unwrap_or(lines.len().saturating_sub(1));
        let first = (last + 1).saturating_sub(height);
        let text: Vec<Line> = lines
            .iter()
            .skip(first)
            .take(last + 1 - first)
            .map(|r| {
                let style = match r.level {
                    LogLevel::Info => Style::new(),
                    LogLevel::Warn => Style::new().yellow(),
                    LogLevel::Error => Style::new().red(),
                };
                // Stored times are RFC 3339 in UTC: the time of day is enough on screen.
                let time = r.time.get(11..19).unwrap_or(&r.time);
                Line::from(vec![
                    Span::raw(format!("{time} ")),
                    Span::styled(format!("{:<5} ", r.level.as_ref()), style.bold()),
                    Span::styled(r.message.clone(), style),
                ])
            })
            .collect();
        let level = match self.least {
            None => "all levels".to_string(),
            Some(l) => format!("{l} and above"),
        };
        let place = match self.anchor {
            None => "following the end".to_string(),
            Some(at) => format!("lines {}-{} (End follows)", first + 1, at + 1),
        };
        let live = if data.running.contains(&run) {
            ", training"
        } else {
            ""
        };
        let total = read(data).map_or(0, |(_, rows)| rows.len());
        let cut = if total >= LOG_LINES {
            format!(" of the last {LOG_LINES}")
        } else {
            String::new()
        };
        let title = format!(
            "run {run} log: {} lines{cut}, {level}, {place}{live}",
            lines.len()
        );
        f.render_widget(Paragraph::new(text).block(Block::bordered().title(title)), area);
    }
}
