//! View 5: every checkpoint in the registry; two marked ones are evaluated side by side on the
//! first one's val split.

use crate::eval::Evaluation;
use crate::tui::state::{Action, Command, ComparisonResult, Data};
use crate::tui::widgets::moved;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::prelude::*;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};

pub const HELP: &str = "Checkpoints: space mark two, e evaluate both side by side";

#[derive(Debug, Default)]
pub struct CheckpointsView {
    sel: usize,
    /// Checkpoint ids marked for evaluation, at most two, oldest mark first.
    pub marked: Vec<i64>,
    pub comparison: Option<ComparisonResult>,
    pub comparing: bool,
}

impl CheckpointsView {
    pub fn handle_key(&mut self, key: KeyEvent, data: &Data) -> Option<Action> {
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
            _ => None,
        }
    }

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

    pub fn comparison_started(&mut self) {
        self.comparing = true;
        self.comparison = None;
    }

    pub fn comparison_done(&mut self, result: ComparisonResult) {
        self.comparing = false;
        self.comparison = Some(result);
    }

    pub fn move_selection(&mut self, delta: i64, data: &Data) {
        self.sel = moved(self.sel, delta, data.snapshot.checkpoints.len());
    }

    pub fn clamp(&mut self, data: &Data) {
        self.sel = self
            .sel
            .min(data.snapshot.checkpoints.len().saturating_sub(1));
    }

    pub fn draw(&self, f: &mut Frame, area: Rect, data: &Data) {
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
        .block(Block::bordered().title("checkpoints (space: mark two, e: evaluate side by side)"))
        .row_highlight_style(Style::new().reversed());
        let mut state = TableState::default()
            .with_selected((!data.snapshot.checkpoints.is_empty()).then_some(self.sel));
        f.render_stateful_widget(table, list, &mut state);
        let block = Block::bordered().title("comparison");
        match (&self.comparison, self.comparing) {
            (_, true) => f.render_widget(Paragraph::new("evaluating…").block(block), result),
            (None, _) => f.render_widget(Paragraph::new("").block(block), result),
            (Some(Err(e)), _) => f.render_widget(
                Paragraph::new(e.clone())
                    .style(Style::new().red())
                    .block(block),
                result,
            ),
            (Some(Ok(c)), _) => {
                let mut lines = vec![
                    Line::from(format!("A = {}   B = {}", c.labels[0], c.labels[1])),
                    Line::from(format!(
                        "accuracy A {:.2}%  B {:.2}% on {} images; they disagree on {}",
                        c.evals[0].accuracy * 100.0,
                        c.evals[1].accuracy * 100.0,
                        c.evals[0].images,
                        c.disagreements
                    ))
                    .bold(),
                ];
                let (p0, p1) = (
                    c.evals[0].per_class_accuracy(),
                    c.evals[1].per_class_accuracy(),
                );
                for (i, class) in c.classes.iter().enumerate() {
                    let fmt = |a: Option<f64>| {
                        a.map(|a| format!("{:>6.1}%", a * 100.0))
                            .unwrap_or("     -".into())
                    };
                    let conf = |e: &Evaluation| {
                        e.confusion[i]
                            .iter()
                            .map(|v| format!("{v:>3}"))
                            .collect::<String>()
                    };
                    lines.push(Line::from(format!(
                        "{:<12} {} {} │{} │{}",
                        class.chars().take(12).collect::<String>(),
                        fmt(p0[i]),
                        fmt(p1[i]),
                        conf(&c.evals[0]),
                        conf(&c.evals[1])
                    )));
                }
                f.render_widget(
                    Paragraph::new(lines)
                        .block(block.title("class, accuracy A B │ confusion A │ confusion B")),
                    result,
                );
            }
        }
    }
}
