//! View 3: one run: its progress (live for runs of this session), loss and accuracy curves,
//! and the end of its log.

use super::{Action, View};
use crate::fmt::{duration as fmt_duration, metric};
use crate::status::{LogLevel, RunStatus};
use crate::tui::state::{Command, Data, RunDetail, Wanted};
use crate::tui::widgets::{band, chart, chart_with_bands, status_style};
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::prelude::*;
use ratatui::widgets::{Block, Gauge, Paragraph, Wrap};

/// Shows the run in focus.
#[derive(Debug, Default)]
pub struct RunView;

impl View for RunView {
    fn title(&self) -> &'static str {
        "Run"
    }

    fn help(&self) -> &'static str {
        "Run:   c cancel   R resume   d delete"
    }

    fn handle_key(&mut self, key: KeyEvent, data: &Data) -> Option<Action> {
        let id = data.focused_run()?;
        match key.code {
            KeyCode::Char('c') => Some(Action::Do(Command::Cancel(id))),
            KeyCode::Char('R') => Some(Action::Do(Command::Resume(id))),
            KeyCode::Char('d') => Some(Action::AskDelete(id)),
            _ => None,
        }
    }

    /// The run's details, and those of its seed group for the band.
    fn wants(&self, data: &Data, _shown: bool, wanted: &mut Wanted) {
        if let Some(id) = data.focused_run() {
            wanted.runs.push(id);
            if let Some((_, members)) = data.seed_group(id) {
                wanted.runs.extend(members);
            }
        }
    }

    fn draw(&self, f: &mut Frame, area: Rect, data: &Data) {
        let Some(id) = data.focused_run() else {
            f.render_widget(
                Paragraph::new("No run selected: start one from Experiments, or pick one in Runs.")
                    .block(Block::bordered()),
                area,
            );
            return;
        };
        let empty = RunDetail::default();
        let d = data.snapshot.details.get(&id).unwrap_or(&empty);
        let row = data.run(id);
        let [head, gauge, charts, logs] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(3),
            Constraint::Min(8),
            Constraint::Length(6),
        ])
        .areas(area);
        let status = row.map(|r| r.display_status());
        let status_text = status.map(|s| s.to_string()).unwrap_or_else(|| "?".into());
        // Who holds a running run, and when it last said so (any machine sharing the registry).
        let holder = row
            .filter(|r| r.status == RunStatus::Running)
            .map(|r| {
                format!(
                    " | {} {}",
                    r.worker.as_deref().unwrap_or("-"),
                    r.beat_age_s.map(crate::fmt::ago).unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let header = format!(
            "run {id} {} [{status_text}] {} best {} {}{holder}",
            row.map(|r| r.name.as_str()).unwrap_or(""),
            row.and_then(|r| r.device.clone()).unwrap_or_default(),
            row.map(|r| r.monitor.as_ref()).unwrap_or(""),
            metric(row.and_then(|r| r.best_metric))
        );
        let style = status.map(status_style).unwrap_or_default();
        f.render_widget(Paragraph::new(header).style(style), head);
        let (ratio, label) = match (data.live.get(&id), row) {
            // A GPU autotuning before this run's first step: say so, it takes a while.
            (Some(l), _) if l.batch == 0 && data.snapshot.tuning.is_some() => {
                (0.0, data.snapshot.tuning.clone().unwrap_or_default())
            }
            (Some(l), _) => {
                let (frac, eta) = l.progress();
                let eta = eta.map(fmt_duration).unwrap_or("…".into());
                (
                    frac,
                    format!(
                        "epoch {}/{} batch {}/{} | {:.1} img/s | loss {:.4} | lr {:.2e} | ETA {eta}",
                        l.epoch.min(l.epochs),
                        l.epochs,
                        l.batch,
                        l.batches,
                        l.images_per_s,
                        l.loss,
                        l.lr
                    ),
                )
            }
            (None, Some(r)) => (
                r.epochs_done as f64 / r.epochs_total.max(1) as f64,
                format!("epoch {}/{}", r.epochs_done, r.epochs_total),
            ),
            _ => (0.0, String::new()),
        };
        f.render_widget(
            Gauge::default()
                .block(Block::bordered().title("progress"))
                .ratio(ratio.clamp(0.0, 1.0))
                .label(label)
                .gauge_style(Style::new().cyan()),
            gauge,
        );
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(charts);
        // Step losses come live from events for runs of this session, else from the registry.
        let live_steps = data
            .live
            .get(&id)
            .map(|l| l.steps.as_slice())
            .filter(|s| !s.is_empty());
        if d.train_loss.len() < 2 {
            let steps = live_steps.unwrap_or(&d.step_loss);
            f.render_widget(
                chart(
                    "loss per step",
                    "step",
                    vec![("train".into(), steps, Color::Cyan)],
                ),
                left,
            );
        } else {
            f.render_widget(
                chart(
                    "loss",
                    "epoch",
                    vec![
                        ("train".into(), &d.train_loss, Color::Cyan),
                        ("val".into(), &d.val_loss, Color::Yellow),
                    ],
                ),
                left,
            );
        }
        // A run of a seed group is drawn against its group: the mean val accuracy of the
        // group's runs with a ±1 std band.
        let group = data.seed_group(id).map(|(g, members)| {
            let curves: Vec<&[(f64, f64)]> = members
                .iter()
                .filter_map(|m| data.snapshot.details.get(m))
                .map(|d| d.val_acc.as_slice())
                .collect();
            (g, band(&curves))
        });
        let mut series = vec![
            ("train".into(), d.train_acc.as_slice(), Color::Cyan),
            ("val".into(), d.val_acc.as_slice(), Color::Yellow),
        ];
        let mut shading = Vec::new();
        if let Some((g, b)) = group.as_ref().filter(|(_, b)| !b.mean.is_empty()) {
            series.push((format!("g{g} val±std"), b.mean.as_slice(), Color::Gray));
            shading.push((b.fill.as_slice(), Color::Gray));
        }
        f.render_widget(
            chart_with_bands("accuracy", "epoch", series, shading),
            right,
        );
        let lines: Vec<Line> = d
            .logs
            .iter()
            .rev()
            .take(4)
            .rev()
            .map(|l| {
                let style = if l.level == LogLevel::Info {
                    Style::new()
                } else {
                    Style::new().yellow()
                };
                Line::styled(
                    format!("{} {}", l.time.get(11..19).unwrap_or(""), l.message),
                    style,
                )
            })
            .collect();
        let mut lines = lines;
        if let Some(e) = row.and_then(|r| r.error.clone()) {
            lines.push(Line::styled(format!("error: {e}"), Style::new().red()));
        }
        f.render_widget(
            Paragraph::new(lines)
                .block(Block::bordered().title("log"))
                .wrap(Wrap { trim: true }),
            logs,
        );
    }
}
