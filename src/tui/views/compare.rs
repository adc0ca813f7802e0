//! View 4: the runs marked in Runs side by side: val curves and the hyperparameters that
//! differ between them.

use super::View;
use crate::tui::state::{Data, RunDetail, Wanted};
use crate::tui::widgets::{Band, PALETTE, band, chart_with_bands};
use ratatui::prelude::*;
use ratatui::widgets::{Block, Paragraph, Row, Table};

/// The runs marked in Runs, side by side.
#[derive(Debug, Default)]
pub struct CompareView;

impl View for CompareView {
    fn title(&self) -> &'static str {
        "Compare"
    }

    fn help(&self) -> &'static str {
        "Compare: the runs marked with space in Runs (g there marks a seed group);
         two or more runs of one seed group are drawn as their mean with a ±1 std band"
    }

    fn wants(&self, data: &Data, _shown: bool, wanted: &mut Wanted) {
        wanted.runs.extend(data.marked_runs.iter().copied());
    }

    fn draw(&self, f: &mut Frame, area: Rect, data: &Data) {
        draw(f, area, data)
    }
}

/// The seed groups with at least two marked runs, and those runs; every other marked run is
/// drawn on its own.
pub fn marked_groups(data: &Data, ids: &[i64]) -> (Vec<(i64, Vec<i64>)>, Vec<i64>) {
    let mut groups: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for &id in ids {
        if let Some((g, _)) = data.seed_group(id) {
            groups.entry(g).or_default().push(id);
        }
    }
    groups.retain(|_, members| members.len() >= 2);
    let singles = ids
        .iter()
        .copied()
        .filter(|id| !groups.values().any(|m| m.contains(id)))
        .collect();
    (groups.into_iter().collect(), singles)
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

type Pick = fn(&RunDetail) -> &Vec<(f64, f64)>;

fn curve(data: &Data, id: i64, pick: Pick) -> &[(f64, f64)] {
    data.snapshot
        .details
        .get(&id)
        .map(|d| pick(d).as_slice())
        .unwrap_or(&[])
}

fn colour(i: usize) -> Color {
    PALETTE[i % PALETTE.len()]
}

fn group_bands(data: &Data, groups: &[(i64, Vec<i64>)], pick: Pick) -> Vec<Band> {
    groups
        .iter()
        .map(|(_, members)| {
            band(
                &members
                    .iter()
                    .map(|&id| curve(data, id, pick))
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

/// The lines: each single run, then each group's mean.
fn series<'a>(
    data: &'a Data,
    singles: &[i64],
    groups: &[(i64, Vec<i64>)],
    bands: &'a [Band],
    pick: Pick,
) -> Vec<(String, &'a [(f64, f64)], Color)> {
    let mut out: Vec<(String, &'a [(f64, f64)], Color)> = singles
        .iter()
        .enumerate()
        .map(|(i, &id)| (format!("run {id}"), curve(data, id, pick), colour(i)))
        .collect();
    for (j, ((g, _), b)) in groups.iter().zip(bands).enumerate() {
        out.push((
            format!("g{g} mean±std"),
            b.mean.as_slice(),
            colour(singles.len() + j),
        ));
    }
    out
}

/// The groups' ±1 std bands, in their lines' colours.
fn shading(bands: &[Band], singles: usize) -> Vec<(&[(f64, f64)], Color)> {
    bands
        .iter()
        .enumerate()
        .map(|(j, b)| (b.fill.as_slice(), colour(singles + j)))
        .collect()
}

fn draw(f: &mut Frame, area: Rect, data: &Data) {
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
    let (groups, singles) = marked_groups(data, &ids);
    let charts: [(Rect, &str, Pick); 2] = [
        (left, "val accuracy", |d| &d.val_acc),
        (right, "val loss", |d| &d.val_loss),
    ];
    for (area, name, pick) in charts {
        let bands = group_bands(data, &groups, pick);
        let title = if groups.is_empty() {
            name.to_string()
        } else {
            format!("{name} (groups: mean, ±1 std band)")
        };
        f.render_widget(
            chart_with_bands(
                &title,
                "epoch",
                series(data, &singles, &groups, &bands, pick),
                shading(&bands, singles.len()),
            ),
            area,
        );
    }
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
