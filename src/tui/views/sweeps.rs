//! View 6: the sweeps in the registry, the ranking report of the selected one and, for a sweep
//! of several objectives, its trials plotted by the first two (the Pareto front in red, other
//! fronts in their colours, trials over budget grey), live as trials finish; `[` `]` pick a
//! trial of the front, whose values and parameters show beside the plot.

use super::{Action, View};
use crate::sweep::Front;
use crate::tui::state::{Data, Wanted};
use crate::tui::widgets::moved;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::prelude::*;
use ratatui::widgets::{
    Axis, Block, Chart, Dataset, GraphType, List, ListItem, ListState, Paragraph, Wrap,
};

const TITLE: &str = "Sweeps";

#[derive(Debug, Default)]
pub struct SweepsView {
    sel: usize,
    /// The trial of the front picked with [ and ].
    pick: usize,
}

impl SweepsView {
    fn front<'a>(&self, data: &'a Data) -> Option<&'a Front> {
        let sweep = data.snapshot.sweeps.get(self.sel)?.id;
        let (id, _, front) = data.snapshot.sweep_report.as_ref()?;
        (*id == sweep && front.objectives.len() > 1).then_some(front)
    }

    fn draw_front(&self, f: &mut Frame, area: Rect, front: &Front) {
        let [plot, side] =
            Layout::horizontal([Constraint::Min(30), Constraint::Length(44)]).areas(area);
        // Fronts 0 (red), 1, 2, later ones together, and the infeasible trials.
        let mut groups: Vec<(String, Color, Vec<(f64, f64)>)> = vec![
            ("front".into(), Color::Red, Vec::new()),
            ("2nd".into(), Color::Yellow, Vec::new()),
            ("3rd".into(), Color::Cyan, Vec::new()),
            ("later".into(), Color::Blue, Vec::new()),
            ("over budget".into(), Color::DarkGray, Vec::new()),
        ];
        for t in &front.trials {
            let g = t.rank.map_or(4, |r| r.min(3));
            groups[g].2.push((t.values[1], t.values[0]));
        }
        let all: Vec<(f64, f64)> = groups.iter().flat_map(|g| g.2.iter().copied()).collect();
        let bound = |pick: fn(&(f64, f64)) -> f64| {
            let (lo, hi) = all
                .iter()
                .map(pick)
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
            let pad = 0.05 * (hi - lo).max(1e-9);
            [lo - pad, hi + pad]
        };
        let (xb, yb) = (bound(|p| p.0), bound(|p| p.1));
        let picked = front.pareto().nth(self.pick);
        let marked: Vec<(f64, f64)> = picked.map(|t| vec![(t.values[1], t.values[0])]).unwrap_or_default();
        let mut datasets: Vec<Dataset> = groups
            .iter()
            .filter(|g| !g.2.is_empty())
            .map(|(name, color, points)| {
                Dataset::default()
                    .name(name.clone())
                    .marker(symbols::Marker::Braille)
                    .graph_type(GraphType::Scatter)
                    .style(Style::new().fg(*color))
                    .data(points)
            })
            .collect();
        datasets.push(
            Dataset::default()
                .marker(symbols::Marker::Block)
                .graph_type(GraphType::Scatter)
                .style(Style::new().fg(Color::White))
                .data(&marked),
        );
        let label = |v: f64| Span::raw(format!("{v:.3}"));
        let chart = Chart::new(datasets)
            .hidden_legend_constraints((Constraint::Ratio(2, 3), Constraint::Ratio(1, 1)))
            .block(Block::bordered().title(format!(
                "{} vs {} ({} trials)",
                front.objectives[0],
                front.objectives[1],
                front.trials.len()
            )))
            .x_axis(
                Axis::default()
                    .title(front.objectives[1].to_string())
                    .bounds(xb)
                    .labels(vec![label(xb[0]), label(xb[1])]),
            )
            .y_axis(Axis::default().bounds(yb).labels(vec![label(yb[0]), label(yb[1])]));
        f.render_widget(chart, plot);
        let text = match picked {
            Some(t) => {
                let mut lines = vec![format!(
                    "run {} ({} of {} on the front, [ ] to pick)",
                    t.run,
                    self.pick + 1,
                    front.pareto().count()
                )];
                for (o, v) in front.objectives.iter().zip(&t.values) {
                    lines.push(format!("{o:<22} {v:.4}"));
                }
                lines.push(String::new());
                lines.extend(t.parameters.iter().cloned());
                lines.join("\n")
            }
            None => "no trial measured yet".into(),
        };
        f.render_widget(
            Paragraph::new(text)
                .block(Block::bordered().title("trial"))
                .wrap(Wrap { trim: false }),
            side,
        );
    }
}

impl View for SweepsView {
    fn title(&self) -> &'static str {
        TITLE
    }

    fn help(&self) -> &'static str {
        "Sweeps: the ranking of the selected sweep and, with several objectives, its Pareto front ([ ] pick a trial; S in Experiments starts one)"
    }

    fn wants(&self, data: &Data, _shown: bool, wanted: &mut Wanted) {
        wanted.sweep = data.snapshot.sweeps.get(self.sel).map(|s| s.id);
    }

    fn handle_key(&mut self, key: KeyEvent, data: &Data) -> Option<Action> {
        let on_front = self.front(data).map_or(0, |f| f.pareto().count());
        match key.code {
            KeyCode::Char(']') => self.pick = (self.pick + 1).min(on_front.saturating_sub(1)),
            KeyCode::Char('[') => self.pick = self.pick.saturating_sub(1),
            _ => {}
        }
        None
    }

    fn move_selection(&mut self, delta: i64, data: &Data) -> Option<Action> {
        self.sel = moved(self.sel, delta, data.snapshot.sweeps.len());
        self.pick = 0;
        None
    }

    fn clamp(&mut self, data: &Data) {
        self.sel = self.sel.min(data.snapshot.sweeps.len().saturating_sub(1));
        let on_front = self.front(data).map_or(0, |f| f.pareto().count());
        self.pick = self.pick.min(on_front.saturating_sub(1));
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
        let report_area = match self.front(data) {
            Some(front) if right.height >= 24 => {
                let [top, bottom] =
                    Layout::vertical([Constraint::Min(8), Constraint::Length(16)]).areas(right);
                self.draw_front(f, bottom, front);
                top
            }
            _ => right,
        };
        let text = match data.snapshot.sweeps.get(self.sel) {
            Some(sweep) => match &data.snapshot.sweep_report {
                Some((id, report, _)) if *id == sweep.id => report.clone(),
                _ => "loading…".into(),
            },
            None => "No sweeps yet: press S on an experiment with a [sweep] section.".into(),
        };
        f.render_widget(
            Paragraph::new(text)
                .block(Block::bordered().title("ranking"))
                .wrap(Wrap { trim: false }),
            report_area,
        );
    }
}
