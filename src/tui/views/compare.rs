//! View 4: the runs marked in Runs side by side: val curves and the hyperparameters that
//! differ between them.

use crate::tui::background::RunDetail;
use crate::tui::state::Data;
use crate::tui::widgets::{PALETTE, chart};
use ratatui::prelude::*;
use ratatui::widgets::{Block, Paragraph, Row, Table};

pub const HELP: &str = "Compare: the runs marked with space in Runs";

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

pub fn draw(f: &mut Frame, area: Rect, data: &Data) {
    let ids: Vec<i64> = data.marked_runs.iter().copied().collect();
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
                    data.snapshot
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
    let runs: Vec<_> = ids.iter().filter_map(|id| data.run(*id)).collect();
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
