//! View 5: every checkpoint in the registry; two marked ones are compared on the first one's
//! val split with the paired test of `mvlab compare`: accuracies with intervals, the paired
//! difference, McNemar's p, per-class changes, and the flipped images, drawn in the terminal.

use super::{Action, View};
use crate::compare::{FlipDirection, Test};
use crate::tui::state::{Command, Data, Pending};
use crate::tui::widgets::{ImagePanel, moved};
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::prelude::*;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};

#[derive(Debug, Default)]
pub struct CheckpointsView {
    sel: usize,
    /// Checkpoint ids marked for evaluation, at most two, oldest mark first.
    pub marked: Vec<i64>,
    /// The flipped image shown (of the comparison in `Data::comparison`).
    pub flip: usize,
    image: ImagePanel,
}

impl View for CheckpointsView {
    fn title(&self) -> &'static str {
        "Ckpts"
    }

    fn help(&self) -> &'static str {
        "Checkpoints: space mark two, e compare them (paired test on A's val images)
             [ and ] step through the flipped images, drawn on the right"
    }

    fn handle_key(&mut self, key: KeyEvent, data: &Data) -> Option<Action> {
        match key.code {
            KeyCode::Char(' ') => {
                let ck = data.snapshot.checkpoints.get(self.sel)?;
                if let Some(pos) = self.marked.iter().position(|c| *c == ck.id) {
                    self.marked.remove(pos);
                } else {
                    self.marked.push(ck.id);
                    if self.marked.len() > 2 {
                        self.marked.remove(0);
                    }
                }
                None
            }
            KeyCode::Char('e') | KeyCode::Enter => self.compare(data),
            KeyCode::Char(']') => {
                self.flip = moved(self.flip, 1, flips(data));
                None
            }
            KeyCode::Char('[') => {
                self.flip = moved(self.flip, -1, flips(data));
                None
            }
            _ => None,
        }
    }

    fn move_selection(&mut self, delta: i64, data: &Data) -> Option<Action> {
        self.sel = moved(self.sel, delta, data.snapshot.checkpoints.len());
        None
    }

    fn clamp(&mut self, data: &Data) {
        self.sel = self
            .sel
            .min(data.snapshot.checkpoints.len().saturating_sub(1));
        self.flip = self.flip.min(flips(data).saturating_sub(1));
    }

    fn draw(&self, f: &mut Frame, area: Rect, data: &Data) {
        self.draw_list(f, area, data)
    }
}

/// How many images changed their answer in the comparison shown.
fn flips(data: &Data) -> usize {
    match &data.comparison {
        Pending::Done(Ok(c)) => match &c.test {
            Test::Paired(p) => p.flips.len(),
            _ => 0,
        },
        _ => 0,
    }
}

impl CheckpointsView {
    fn compare(&self, data: &Data) -> Option<Action> {
        if self.marked.len() != 2 {
            return Some(Action::Say(
                "mark two checkpoints with space, then press e".into(),
            ));
        }
        let find = |id: i64| {
            data.snapshot
                .checkpoints
                .iter()
                .find(|c| c.id == id)
                .cloned()
        };
        let (a, b) = (find(self.marked[0])?, find(self.marked[1])?);
        Some(Action::Do(Command::CompareCheckpoints(
            Box::new(a),
            Box::new(b),
        )))
    }

    fn draw_list(&self, f: &mut Frame, area: Rect, data: &Data) {
        let [list, result] =
            Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(area);
        let rows: Vec<Row> = data
            .snapshot
            .checkpoints
            .iter()
            .map(|c| {
                let mark = if self.marked.contains(&c.id) {
                    "*"
                } else {
                    " "
                };
                let acc = c.saved_metrics().ok().map(|m| m.val_accuracy);
                Row::new(vec![
                    format!("{mark}{}", c.run_id),
                    c.kind.to_string(),
                    c.epoch.to_string(),
                    acc.map(|a| format!("{:.2}%", a * 100.0))
                        .unwrap_or("-".into()),
                    c.sha256.chars().take(12).collect(),
                ])
            })
            .collect();
        let table = Table::new(
            rows,
            [
                Constraint::Length(6),
                Constraint::Length(5),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Min(12),
            ],
        )
        .header(Row::new(["run", "kind", "epoch", "val acc", "sha256"]).style(Style::new().bold()))
        .block(Block::bordered().title("checkpoints (space: mark two, e: compare them)"))
        .row_highlight_style(Style::new().reversed());
        let mut state = TableState::default()
            .with_selected((!data.snapshot.checkpoints.is_empty()).then_some(self.sel));
        f.render_stateful_widget(table, list, &mut state);
        let block = Block::bordered().title("comparison");
        match &data.comparison {
            Pending::Running => {
                f.render_widget(Paragraph::new("evaluating…").block(block), result)
            }
            Pending::None => f.render_widget(Paragraph::new("").block(block), result),
            Pending::Done(Err(e)) => f.render_widget(
                Paragraph::new(e.clone())
                    .style(Style::new().red())
                    .block(block),
                result,
            ),
            Pending::Done(Ok(c)) => self.draw_comparison(f, result, c),
        }
    }

    fn draw_comparison(&self, f: &mut Frame, area: Rect, c: &crate::compare::Comparison) {
        let Test::Paired(p) = &c.test else {
            f.render_widget(
                Paragraph::new(c.summary.clone()).block(Block::bordered().title("comparison")),
                area,
            );
            return;
        };
        let [text, image] =
            Layout::horizontal([Constraint::Min(40), Constraint::Length(30)]).areas(area);
        let verdict_style = match c.verdict {
            crate::compare::Verdict::BBetter => Style::new().green().bold(),
            crate::compare::Verdict::BWorse => Style::new().red().bold(),
            crate::compare::Verdict::NoEvidence => Style::new().bold(),
        };
        let mut lines = vec![
            Line::from(format!("A = {}   B = {}", c.a, c.b)),
            Line::from(c.summary.clone()).style(verdict_style),
            Line::from(format!(
                "A {} [{}..{}]  B {} [{}..{}] on {} images",
                pct(p.a.accuracy.estimate),
                pct(p.a.accuracy.low),
                pct(p.a.accuracy.high),
                pct(p.b.accuracy.estimate),
                pct(p.b.accuracy.low),
                pct(p.b.accuracy.high),
                p.images,
            )),
            Line::from(format!(
                "only A right {}, only B right {}; McNemar p = {:.3}",
                p.only_a_right, p.only_b_right, p.p_value
            )),
        ];
        for w in &c.warnings {
            lines.push(Line::from(format!("warning: {w}")).yellow());
        }
        lines.push(Line::from("class          A       B     B-A (95% CI)          p").bold());
        for k in &p.per_class {
            let line = Line::from(format!(
                "{:<12} {:>6} {:>6} {:>+6.1} [{:+.1}..{:+.1}] {:>9.3}{}",
                k.class.chars().take(12).collect::<String>(),
                pct(k.a),
                pct(k.b),
                100.0 * k.difference.estimate,
                100.0 * k.difference.low,
                100.0 * k.difference.high,
                k.p_value,
                if k.worse { "  worse" } else { "" }
            ));
            lines.push(if k.worse { line.red() } else { line });
        }
        lines.push(
            Line::from(format!(
                "{} flipped images ([ and ] to step through)",
                p.flips.len()
            ))
            .bold(),
        );
        for (i, flip) in p
            .flips
            .iter()
            .enumerate()
            .skip(self.flip.saturating_sub(2))
            .take(6)
        {
            let arrow = match flip.direction {
                FlipDirection::Broke => "right→wrong",
                FlipDirection::Fixed => "wrong→right",
            };
            let line = Line::from(format!(
                "{} {arrow} {}: A {} B {}  {}",
                if i == self.flip { ">" } else { " " },
                flip.truth,
                flip.a,
                flip.b,
                flip.image
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ));
            lines.push(if i == self.flip {
                line.reversed()
            } else {
                line
            });
        }
        f.render_widget(
            Paragraph::new(lines).block(Block::bordered().title("comparison")),
            text,
        );
        match p.flips.get(self.flip) {
            Some(flip) => self.image.draw(
                f,
                image,
                &flip.image,
                format!("{}: A {} B {}", flip.truth, flip.a, flip.b),
            ),
            None => f.render_widget(
                Paragraph::new("no image changed its answer").block(Block::bordered()),
                image,
            ),
        }
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}
