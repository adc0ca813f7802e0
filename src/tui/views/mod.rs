//! The workbench's views, one module each: its state, its keys (turned into actions), its
//! drawing and its help line. This file routes to the view of a [`Tab`]; a new view is a module
//! here, a field of [`Views`] with its arms below, and its [`Tab`] in `layout`.

pub mod checkpoints;
pub mod compare;
pub mod experiments;
pub mod run;
pub mod runs;
pub mod samples;
pub mod sweeps;

use super::layout::Tab;
use super::state::{Action, Data};
use crossterm::event::KeyEvent;
use ratatui::prelude::*;

#[derive(Debug, Default)]
pub struct Views {
    pub experiments: experiments::ExperimentsView,
    pub runs: runs::RunsView,
    pub run: run::RunView,
    pub checkpoints: checkpoints::CheckpointsView,
    pub sweeps: sweeps::SweepsView,
    pub samples: samples::SamplesView,
}

/// Every view's help line, in tab order.
pub const HELP: [&str; 7] = [
    experiments::HELP,
    runs::HELP,
    run::HELP,
    compare::HELP,
    checkpoints::HELP,
    sweeps::HELP,
    samples::HELP,
];

impl Views {
    pub fn handle_key(&mut self, tab: Tab, key: KeyEvent, data: &Data) -> Option<Action> {
        match tab {
            Tab::Experiments => self.experiments.handle_key(key, data),
            Tab::Runs => self.runs.handle_key(key, data),
            Tab::Run => self.run.handle_key(key),
            Tab::Compare => None,
            Tab::Checkpoints => self.checkpoints.handle_key(key, data),
            Tab::Sweeps => None,
            Tab::Samples => self.samples.handle_key(key, data),
        }
    }

    /// Whether the view takes every key for now (a filter being typed).
    pub fn captures_input(&self, tab: Tab) -> bool {
        tab == Tab::Runs && self.runs.filter_editing
    }

    pub fn move_selection(&mut self, tab: Tab, delta: i64, data: &Data) {
        match tab {
            Tab::Experiments => self.experiments.move_selection(delta, data),
            Tab::Runs => self.runs.move_selection(delta, data),
            Tab::Checkpoints => self.checkpoints.move_selection(delta, data),
            Tab::Sweeps => self.sweeps.move_selection(delta, data),
            Tab::Samples => self.samples.move_selection(delta),
            Tab::Run | Tab::Compare => {}
        }
    }

    /// Keeps selections inside lists that changed.
    pub fn clamp(&mut self, data: &Data) {
        self.experiments.clamp(data);
        self.runs.clamp(data);
        self.checkpoints.clamp(data);
        self.sweeps.clamp(data);
    }

    /// What the status line says instead of the usual, while a view edits something.
    pub fn editing_line(&self, tab: Tab) -> Option<String> {
        (tab == Tab::Runs)
            .then(|| self.runs.editing_line())
            .flatten()
    }

    pub fn draw(&self, tab: Tab, f: &mut Frame, area: Rect, data: &Data) {
        match tab {
            Tab::Experiments => self.experiments.draw(f, area, data),
            Tab::Runs => self.runs.draw(f, area, data),
            Tab::Run => self.run.draw(f, area, data, self.runs.selected(data)),
            Tab::Compare => compare::draw(f, area, data),
            Tab::Checkpoints => self.checkpoints.draw(f, area, data),
            Tab::Sweeps => self.sweeps.draw(f, area, data),
            Tab::Samples => self.samples.draw(f, area),
        }
    }
}
