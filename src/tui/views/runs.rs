//! View 2: every run in the registry, filtered and sorted; runs are opened, marked for
//! Compare, cancelled, resumed and deleted from here.

use super::{Action, View};
use crate::fmt::{duration as fmt_duration, metric};
use crate::registry::RunRow;
use crate::tui::state::{Command, Data};
use crate::tui::widgets::{moved, status_style};
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::prelude::*;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Id,
    Best,
    Status,
}

/// The row in focus follows the run in focus (`Data::focus`), not a position, so that runs
/// added above it do not move it.
#[derive(Debug, Default)]
pub struct RunsView {
    pub filter: String,
    /// Keys go to the filter until Enter or Esc.
    pub filter_editing: bool,
    pub sort: SortKey,
}

impl RunsView {
    /// Runs as the table shows them: filtered, then sorted.
    pub fn visible<'a>(&self, data: &'a Data) -> Vec<&'a RunRow> {
        let f = self.filter.to_lowercase();
        let mut runs: Vec<&RunRow> = data
            .snapshot
            .runs
            .iter()
            .filter(|r| {
                f.is_empty()
                    || r.name.to_lowercase().contains(&f)
                    || r.display_status().as_ref().contains(&f)
            })
            .collect();
        match self.sort {
            SortKey::Id => runs.sort_by(|a, b| b.id.cmp(&a.id)),
            SortKey::Best => runs.sort_by(|a, b| {
                b.best_metric
                    .unwrap_or(f64::MIN)
                    .total_cmp(&a.best_metric.unwrap_or(f64::MIN))
            }),
            SortKey::Status => runs.sort_by(|a, b| {
                a.display_status()
                    .cmp(&b.display_status())
                    .then(b.id.cmp(&a.id))
            }),
        }
        runs
    }

    /// The row of the run in focus among the visible runs (the first row when it is not shown).
    fn row(&self, visible: &[&RunRow], data: &Data) -> usize {
        let focus = data.focused_run();
        visible
            .iter()
            .position(|r| Some(r.id) == focus)
            .unwrap_or(0)
    }

    pub fn selected(&self, data: &Data) -> Option<i64> {
        let visible = self.visible(data);
        visible.get(self.row(&visible, data)).map(|r| r.id)
    }
}

impl View for RunsView {
    fn title(&self) -> &'static str {
        "Runs"
    }

    fn help(&self) -> &'static str {
        "Runs:  Enter details   space mark for compare   g mark its seed group
       / filter   s sort   c cancel   R resume   d delete
       group, seed: runs of one `run --seeds N`; below, each group's mean ± std"
    }

    fn handle_key(&mut self, key: KeyEvent, data: &Data) -> Option<Action> {
        if self.filter_editing {
            match key.code {
                KeyCode::Enter | KeyCode::Esc => self.filter_editing = false,
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            // The focus stays on a run the filter shows.
            let visible = self.visible(data);
            let focus = data.focused_run();
            return match visible.first() {
                Some(first) if !visible.iter().any(|r| Some(r.id) == focus) => {
                    Some(Action::Focus(first.id))
                }
                _ => None,
            };
        }
        let selected = self.selected(data);
        match key.code {
            KeyCode::Char('/') => {
                self.filter_editing = true;
                None
            }
            KeyCode::Char('s') => {
                self.sort = match self.sort {
                    SortKey::Id => SortKey::Best,
                    SortKey::Best => SortKey::Status,
                    SortKey::Status => SortKey::Id,
                };
                None
            }
            KeyCode::Enter => selected.map(Action::OpenRun),
            KeyCode::Char(' ') => selected.map(Action::ToggleCompare),
            KeyCode::Char('g') => {
                let id = selected?;
                match data.seed_group(id) {
                    Some((_, members)) => Some(Action::ToggleCompareAll(members)),
                    None => Some(Action::Say(format!("run {id} is not in a seed group"))),
                }
            }
            KeyCode::Char('d') => selected.map(Action::AskDelete),
            KeyCode::Char('c') => selected.map(|id| Action::Do(Command::Cancel(id))),
            KeyCode::Char('R') => selected.map(|id| Action::Do(Command::Resume(id))),
            _ => None,
        }
    }

    /// What the status line says while the filter is being typed.
    fn editing(&self) -> Option<String> {
        self.filter_editing
            .then(|| format!("filter: {}▏ (Enter to apply)", self.filter))
    }

    /// The table shows the filtered runs: the selection stays among them.
    fn move_selection(&mut self, delta: i64, data: &Data) -> Option<Action> {
        let visible = self.visible(data);
        let row = moved(self.row(&visible, data), delta, visible.len());
        visible.get(row).map(|r| Action::Focus(r.id))
    }

    fn draw(&self, f: &mut Frame, area: Rect, data: &Data) {
        let visible = self.visible(data);
        // A group's cell is highlighted when all its runs are marked for Compare (g marks them).
        let group_cell = |r: &RunRow| match data.seed_group(r.id) {
            Some((g, members)) => {
                let marked = members.iter().all(|m| data.marked_runs.contains(m));
                let style = if marked {
                    Style::new().magenta().bold()
                } else {
                    Style::new()
                };
                Cell::from(format!("g{g}{}", if marked { "*" } else { "" })).style(style)
            }
            None => Cell::from("-"),
        };
        // Runs worked by Slurm array tasks get a column: the task and Slurm's state of it.
        let on_slurm = visible.iter().any(|r| r.slurm_job.is_some());
        let slurm_cell = |r: &RunRow| match &r.slurm_job {
            Some(job) => match data.snapshot.slurm.get(job) {
                Some(state) if r.status.is_pending() => format!("{job} {state}"),
                _ => job.clone(),
            },
            None => "-".into(),
        };
        let rows: Vec<Row> = visible
            .iter()
            .map(|r| {
                let mark = if data.marked_runs.contains(&r.id) {
                    "*"
                } else {
                    " "
                };
                let progress = match data.live.get(&r.id) {
                    Some(l) => format!(
                        "{}/{} {:.0}%",
                        l.epoch.min(l.epochs),
                        l.epochs,
                        l.progress().0 * 100.0
                    ),
                    None => format!("{}/{}", r.epochs_done, r.epochs_total),
                };
                let mut cells = vec![
                    Cell::from(format!("{mark}{}", r.id)),
                    Cell::from(r.name.clone()),
                    group_cell(r),
                    Cell::from(
                        data.snapshot
                            .seeds
                            .get(&r.id)
                            .map(|s| s.to_string())
                            .unwrap_or("-".into()),
                    ),
                    Cell::from(r.display_status().to_string())
                        .style(status_style(r.display_status())),
                    Cell::from(progress),
                    Cell::from(metric(r.best_metric)),
                    Cell::from(r.duration_s().map(fmt_duration).unwrap_or("-".into())),
                    Cell::from(r.device.clone().unwrap_or("-".into())),
                ];
                if on_slurm {
                    cells.push(Cell::from(slurm_cell(r)));
                }
                Row::new(cells)
            })
            .collect();
        let sort = match self.sort {
            SortKey::Id => "newest",
            SortKey::Best => "best",
            SortKey::Status => "status",
        };
        let title = format!(
            "runs ({} shown, sorted by {sort}{})",
            visible.len(),
            if self.filter.is_empty() {
                String::new()
            } else {
                format!(", filter \"{}\"", self.filter)
            }
        );
        let mut widths = vec![
                Constraint::Length(5),
                Constraint::Min(10),
                Constraint::Length(5),
                Constraint::Length(6),
                Constraint::Length(11),
                Constraint::Length(11),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(8),
        ];
        let mut header = vec![
            "id",
            "experiment",
            "group",
            "seed",
            "status",
            "epoch",
            "best",
            "time",
            "device",
        ];
        if on_slurm {
            widths.push(Constraint::Length(18));
            header.push("slurm");
        }
        let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().bold()))
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().reversed());
        let groups = &data.snapshot.groups;
        let [list, summary] = Layout::vertical([
            Constraint::Min(4),
            Constraint::Length(if groups.is_empty() {
                0
            } else {
                groups.len().min(6) as u16 + 2
            }),
        ])
        .areas(area);
        let mut state = TableState::default()
            .with_selected((!visible.is_empty()).then(|| self.row(&visible, data)));
        f.render_stateful_widget(table, list, &mut state);
        if !groups.is_empty() {
            let lines: Vec<Line> = groups
                .iter()
                .take(6)
                .map(|g| Line::from(g.line()))
                .collect();
            f.render_widget(
                Paragraph::new(lines)
                    .block(Block::bordered().title("seed groups (mean ± std over completed runs)")),
                summary,
            );
        }
    }
}
