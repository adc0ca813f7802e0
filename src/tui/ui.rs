//! Drawing: every view is a function of the [`App`] state alone.

use super::app::{App, Modal, SortKey, TABS, Tab};
use super::background::RunDetail;
use super::layout;
use crate::fmt::{duration as fmt_duration, metric};
use crate::status::{LogLevel, RunStatus};
use ratatui::prelude::*;
use ratatui::symbols::Marker;
use ratatui::widgets::{
    Axis, Block, Cell, Chart, Clear, Dataset, Gauge, GraphType, List, ListItem, ListState,
    Paragraph, Row, Table, TableState, Tabs, Wrap,
};

const PALETTE: [Color; 6] = [
    Color::Cyan,
    Color::Yellow,
    Color::Magenta,
    Color::Green,
    Color::Red,
    Color::Blue,
];

pub fn draw(f: &mut Frame, app: &App) {
    let [top, body, bottom] = layout::screen(f.area());
    let selected = TABS.iter().position(|t| t.0 == app.tab).unwrap_or(0);
    let running = app.running.len() + app.sweeping.len();
    let tabs = Tabs::new(TABS.iter().map(|t| t.1))
        .select(selected)
        .padding(layout::TAB_PADDING, layout::TAB_PADDING)
        .divider(layout::TAB_DIVIDER)
        .highlight_style(Style::new().reversed());
    f.render_widget(tabs, top);
    match app.tab {
        Tab::Experiments => experiments(f, body, app),
        Tab::Runs => runs(f, body, app),
        Tab::Detail => detail(f, body, app),
        Tab::Compare => compare(f, body, app),
        Tab::Checkpoints => checkpoints(f, body, app),
        Tab::Sweeps => sweeps(f, body, app),
    }
    let status = if app.filter_editing {
        format!("filter: {}▏ (Enter to apply)", app.filter)
    } else {
        format!(
            "{}{}",
            if running > 0 {
                format!("[{running} training] ")
            } else {
                String::new()
            },
            app.status
        )
    };
    f.render_widget(Paragraph::new(status).style(Style::new().dim()), bottom);
    if let Some(m) = &app.modal {
        modal(f, m);
    }
}

fn modal(f: &mut Frame, m: &Modal) {
    let (title, text) = match m {
        Modal::Help => ("help", HELP.to_string()),
        Modal::ConfirmDelete(id) => ("delete", format!("Delete run {id}, its metrics and checkpoint files?\n\n  y: delete   n: keep")),
        Modal::ConfirmQuit => ("quit", "Runs are training. Quit anyway?\nThey stop after their current step: single runs are\nmarked cancelled (R resumes them), sweep runs go back\nto the queue for any worker.\n\n  y: quit   n: stay".to_string()),
    };
    let area = centered(f.area(), 64, (text.lines().count() + 2) as u16);
    f.render_widget(Clear, area);
    f.render_widget(
        Paragraph::new(text)
            .block(Block::bordered().title(title))
            .wrap(Wrap { trim: false }),
        area,
    );
}

const HELP: &str = "1-6 / Tab   switch view          q        quit
↑↓ / j k    move                 ?        this help
Experiments: Enter/r start a run, S queue and work its [sweep]
Runs:  Enter details   space mark for compare   / filter
       s sort   c cancel   R resume   d delete
Run:   c cancel   R resume
Checkpoints: space mark two, e evaluate both side by side
Experiment files in experiments/ are watched live.";

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn experiments(f: &mut Frame, area: Rect, app: &App) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(35), Constraint::Percentage(65)]).areas(area);
    let items: Vec<ListItem> = app
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
    let title = "experiments".to_string();
    let list = List::new(items)
        .block(Block::bordered().title(title))
        .highlight_style(Style::new().reversed());
    let mut state =
        ListState::default().with_selected((!app.experiments.is_empty()).then_some(app.exp_sel));
    f.render_stateful_widget(list, left, &mut state);
    let preview_title = match app.experiments.get(app.exp_sel) {
        Some(e) => format!(
            "{} (Enter: run, S: sweep)",
            e.path.file_name().unwrap_or_default().to_string_lossy()
        ),
        None => format!("{}", app.experiments_dir.display()),
    };
    let preview = match app.experiments.get(app.exp_sel) {
        None => {
            Paragraph::new("No experiment files yet: add a TOML file to the experiments folder.")
        }
        Some(e) => match &e.error {
            Some(err) => {
                Paragraph::new(format!("invalid:\n{err}\n\n{}", e.text)).style(Style::new().red())
            }
            None => Paragraph::new(e.text.clone()),
        },
    };
    f.render_widget(
        preview
            .block(Block::bordered().title(preview_title))
            .wrap(Wrap { trim: false }),
        right,
    );
}

fn status_style(s: RunStatus) -> Style {
    match s {
        RunStatus::Running => Style::new().cyan(),
        RunStatus::Completed => Style::new().green(),
        RunStatus::Failed | RunStatus::Interrupted => Style::new().red(),
        RunStatus::Cancelled | RunStatus::Pruned => Style::new().yellow(),
        RunStatus::Queued => Style::new(),
    }
}

fn runs(f: &mut Frame, area: Rect, app: &App) {
    let visible = app.visible_runs();
    let rows: Vec<Row> = visible
        .iter()
        .map(|r| {
            let mark = if app.marked_runs.contains(&r.id) {
                "*"
            } else {
                " "
            };
            let progress = match app.live.get(&r.id) {
                Some(l) => format!(
                    "{}/{} {:.0}%",
                    l.epoch.min(l.epochs),
                    l.epochs,
                    l.progress().0 * 100.0
                ),
                None => format!("{}/{}", r.epochs_done, r.epochs_total),
            };
            Row::new(vec![
                Cell::from(format!("{mark}{}", r.id)),
                Cell::from(r.name.clone()),
                Cell::from(r.display_status().to_string()).style(status_style(r.display_status())),
                Cell::from(progress),
                Cell::from(
                    r.best_metric
                        .map(|b| format!("{b:.4}"))
                        .unwrap_or("-".into()),
                ),
                Cell::from(r.duration_s().map(fmt_duration).unwrap_or("-".into())),
                Cell::from(r.device.clone().unwrap_or("-".into())),
            ])
        })
        .collect();
    let sort = match app.sort {
        SortKey::Id => "newest",
        SortKey::Best => "best",
        SortKey::Status => "status",
    };
    let title = format!(
        "runs ({} shown, sorted by {sort}{})",
        visible.len(),
        if app.filter.is_empty() {
            String::new()
        } else {
            format!(", filter \"{}\"", app.filter)
        }
    );
    let table = Table::new(
        rows,
        [
            Constraint::Length(5),
            Constraint::Min(10),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new([
            "id",
            "experiment",
            "status",
            "epoch",
            "best",
            "time",
            "device",
        ])
        .style(Style::new().bold()),
    )
    .block(Block::bordered().title(title))
    .row_highlight_style(Style::new().reversed());
    let mut state =
        TableState::default().with_selected((!visible.is_empty()).then_some(app.run_sel));
    f.render_stateful_widget(table, area, &mut state);
}

fn bounds(series: &[&[(f64, f64)]]) -> ([f64; 2], [f64; 2]) {
    let pts = series.iter().flat_map(|s| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return ([0.0, 1.0], [0.0, 1.0]);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    ([x0, x1], [y0 - pad, y1 + pad])
}

fn chart<'a>(
    title: &'a str,
    x_name: &'a str,
    series: Vec<(String, &'a [(f64, f64)], Color)>,
) -> Chart<'a> {
    let refs: Vec<&[(f64, f64)]> = series.iter().map(|s| s.1).collect();
    let (xb, yb) = bounds(&refs);
    let datasets = series
        .into_iter()
        .map(|(name, data, color)| {
            let g = if data.len() == 1 {
                GraphType::Scatter
            } else {
                GraphType::Line
            };
            Dataset::default()
                .name(name)
                .marker(Marker::Braille)
                .graph_type(g)
                .style(Style::new().fg(color))
                .data(data)
        })
        .collect();
    let label = |v: f64| Span::raw(format!("{v:.3}"));
    Chart::new(datasets)
        .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)))
        .block(Block::bordered().title(title))
        .x_axis(Axis::default().title(x_name).bounds(xb).labels(vec![
            Span::raw(format!("{:.0}", xb[0])),
            Span::raw(format!("{:.0}", xb[1])),
        ]))
        .y_axis(
            Axis::default()
                .bounds(yb)
                .labels(vec![label(yb[0]), label(yb[1])]),
        )
}

fn detail(f: &mut Frame, area: Rect, app: &App) {
    let Some(id) = app.detail_run.or_else(|| app.selected_run()) else {
        f.render_widget(
            Paragraph::new("No run selected: start one from Experiments, or pick one in Runs.")
                .block(Block::bordered()),
            area,
        );
        return;
    };
    let empty = RunDetail::default();
    let d = app.snapshot.details.get(&id).unwrap_or(&empty);
    let row = app.run(id);
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
    let (ratio, label) = match (app.live.get(&id), row) {
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
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(charts);
    // Step losses come live from events for runs of this session, else from the registry.
    let live_steps = app
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
    f.render_widget(
        chart(
            "accuracy",
            "epoch",
            vec![
                ("train".into(), &d.train_acc, Color::Cyan),
                ("val".into(), &d.val_acc, Color::Yellow),
            ],
        ),
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

/// Flattens a TOML config into dotted keys, for the table of differing hyperparameters.
fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

pub fn differing_params(configs: &[&str]) -> Vec<(String, Vec<String>)> {
    let flat: Vec<std::collections::BTreeMap<String, String>> = configs
        .iter()
        .map(|c| {
            let mut out = Vec::new();
            if let Ok(v) = c.parse::<toml::Table>() {
                flatten("", &toml::Value::Table(v), &mut out);
            }
            out.into_iter().collect()
        })
        .collect();
    let keys: std::collections::BTreeSet<&String> = flat.iter().flat_map(|m| m.keys()).collect();
    keys.into_iter()
        .filter(|k| *k != "name" && *k != "description")
        .filter_map(|k| {
            let vals: Vec<String> = flat
                .iter()
                .map(|m| m.get(k).cloned().unwrap_or_else(|| "-".into()))
                .collect();
            (vals.iter().any(|v| v != &vals[0])).then(|| (k.clone(), vals))
        })
        .collect()
}

fn compare(f: &mut Frame, area: Rect, app: &App) {
    let ids: Vec<i64> = app.marked_runs.iter().copied().collect();
    if ids.len() < 2 {
        f.render_widget(
            Paragraph::new("Mark two or more runs with space in the Runs view.")
                .block(Block::bordered().title("compare")),
            area,
        );
        return;
    }
    let [charts, table] =
        Layout::vertical([Constraint::Min(8), Constraint::Length(ids.len() as u16 + 8)])
            .areas(area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(charts);
    let empty: Vec<(f64, f64)> = Vec::new();
    let series = |pick: fn(&RunDetail) -> &Vec<(f64, f64)>| -> Vec<(String, &[(f64, f64)], Color)> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                (
                    format!("run {id}"),
                    app.snapshot
                        .details
                        .get(id)
                        .map(|d| pick(d).as_slice())
                        .unwrap_or(&empty),
                    PALETTE[i % PALETTE.len()],
                )
            })
            .collect()
    };
    f.render_widget(chart("val accuracy", "epoch", series(|d| &d.val_acc)), left);
    f.render_widget(chart("val loss", "epoch", series(|d| &d.val_loss)), right);
    let runs: Vec<_> = ids.iter().filter_map(|id| app.run(*id)).collect();
    let configs: Vec<&str> = runs.iter().map(|r| r.config.as_str()).collect();
    let mut rows = vec![
        Row::new(
            std::iter::once("best".to_string()).chain(runs.iter().map(|r| {
                r.best_metric
                    .map(|b| format!("{b:.4}"))
                    .unwrap_or("-".into())
            })),
        )
        .style(Style::new().bold()),
        Row::new(
            std::iter::once("status".to_string())
                .chain(runs.iter().map(|r| r.display_status().to_string())),
        ),
        Row::new(
            std::iter::once("epochs".to_string()).chain(
                runs.iter()
                    .map(|r| format!("{}/{}", r.epochs_done, r.epochs_total)),
            ),
        ),
    ];
    for (k, vals) in differing_params(&configs) {
        rows.push(Row::new(std::iter::once(k).chain(vals)));
    }
    let mut widths = vec![Constraint::Length(22)];
    widths.extend(runs.iter().map(|_| Constraint::Min(10)));
    let header = Row::new(
        std::iter::once(String::new())
            .chain(runs.iter().map(|r| format!("run {} {}", r.id, r.name))),
    )
    .style(Style::new().bold());
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title("best metrics and differing hyperparameters")),
        table,
    );
}

fn checkpoints(f: &mut Frame, area: Rect, app: &App) {
    let [list, result] =
        Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(area);
    let rows: Vec<Row> = app
        .snapshot
        .checkpoints
        .iter()
        .map(|c| {
            let mark = if app.marked_cks.contains(&c.id) {
                "*"
            } else {
                " "
            };
            let acc = serde_json::from_str::<serde_json::Value>(&c.metrics)
                .ok()
                .and_then(|m| m["val_accuracy"].as_f64());
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
        .with_selected((!app.snapshot.checkpoints.is_empty()).then_some(app.ck_sel));
    f.render_stateful_widget(table, list, &mut state);
    let block = Block::bordered().title("comparison");
    match (&app.comparison, app.comparing) {
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
                let conf = |e: &crate::eval::Evaluation| {
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

fn sweeps(f: &mut Frame, area: Rect, app: &App) {
    let [left, right] =
        Layout::horizontal([Constraint::Length(20), Constraint::Min(20)]).areas(area);
    let items: Vec<ListItem> = app
        .snapshot
        .sweeps
        .iter()
        .map(|s| {
            let active = if app.sweeping.contains(&s.id) {
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
        .with_selected((!app.snapshot.sweeps.is_empty()).then_some(app.sweep_sel));
    f.render_stateful_widget(list, left, &mut state);
    let text = match app.snapshot.sweeps.get(app.sweep_sel) {
        Some(sweep) => match &app.snapshot.sweep_report {
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
