//! Workbench state and its one place of change. A key goes to the current view, which turns it
//! into an [`Action`] (changing only its own selection or filter on the way); [`App::update`]
//! applies the action to the app and returns a [`Command`] when it needs work done beyond the
//! screen, which `effects` carries out; what that work reports comes back as a [`Msg`] through
//! [`App::handle_msg`]. Drawing (`ui`, `views`) reads the app and changes nothing.

use super::background::{Msg, Snapshot, Wanted};
use super::layout::{self, TABS, Tab};
pub use super::state::{Action, Command, Data, Live};
use super::views::Views;
use crate::status::LogLevel;
use crate::train::RunEvent;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use ratatui::layout::Rect;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modal {
    Help,
    ConfirmDelete(i64),
    ConfirmQuit,
}

pub struct App {
    pub data: Data,
    pub views: Views,
    pub tab: Tab,
    pub modal: Option<Modal>,
    pub status: String,
    pub quit: bool,
}

impl App {
    pub fn new(experiments_dir: PathBuf) -> Self {
        Self {
            data: Data {
                experiments_dir,
                experiments: Vec::new(),
                snapshot: Snapshot::default(),
                live: HashMap::new(),
                running: BTreeSet::new(),
                sweeping: BTreeSet::new(),
                marked_runs: BTreeSet::new(),
            },
            views: Views::default(),
            tab: Tab::Experiments,
            modal: None,
            status: "? for help".into(),
            quit: false,
        }
    }

    /// The run the Runs view has selected (among the runs it shows).
    pub fn selected_run(&self) -> Option<i64> {
        self.views.runs.selected(&self.data)
    }

    /// What the refresher should read for the screen: details of the runs shown or marked, and
    /// the selected sweep's report.
    pub fn wanted(&self) -> Wanted {
        let mut ids: Vec<i64> = self.data.marked_runs.iter().copied().collect();
        if let Some(shown) = self.views.run.shown(self.selected_run()) {
            ids.push(shown);
            // The Run view draws the band of the shown run's seed group.
            if let Some((_, members)) = self.data.seed_group(shown) {
                ids.extend(members);
            }
        }
        ids.sort();
        ids.dedup();
        Wanted {
            runs: ids,
            sweep: self.views.sweeps.selected(&self.data),
        }
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Option<Command> {
        let action = self.key_action(key)?;
        self.update(action)
    }

    fn key_action(&mut self, key: KeyEvent) -> Option<Action> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(Action::AskQuit);
        }
        if self.modal.is_some() {
            return match key.code {
                KeyCode::Char('y') => Some(Action::Confirm(true)),
                KeyCode::Char('n' | 'q' | '?') | KeyCode::Esc => Some(Action::Confirm(false)),
                _ => None,
            };
        }
        if self.views.captures_input(self.tab) {
            return self.views.handle_key(self.tab, key, &self.data);
        }
        let index = TABS.iter().position(|t| t.0 == self.tab).unwrap_or(0);
        match key.code {
            KeyCode::Char('q') => Some(Action::AskQuit),
            KeyCode::Char('?') => Some(Action::Help),
            KeyCode::Char(c @ '1'..='9') => TABS
                .get((c as u8 - b'1') as usize)
                .map(|t| Action::Show(t.0)),
            KeyCode::Tab => Some(Action::Show(TABS[(index + 1) % TABS.len()].0)),
            KeyCode::BackTab => Some(Action::Show(TABS[(index + TABS.len() - 1) % TABS.len()].0)),
            KeyCode::Down | KeyCode::Char('j') => {
                self.views.move_selection(self.tab, 1, &self.data);
                None
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.views.move_selection(self.tab, -1, &self.data);
                None
            }
            _ => self.views.handle_key(self.tab, key, &self.data),
        }
    }

    /// `area` is the terminal's size, from which the tab bar's place is computed as drawn.
    pub fn handle_mouse(&mut self, m: MouseEvent, area: Rect) -> Option<Command> {
        match m.kind {
            MouseEventKind::ScrollDown => self.views.move_selection(self.tab, 1, &self.data),
            MouseEventKind::ScrollUp => self.views.move_selection(self.tab, -1, &self.data),
            MouseEventKind::Down(_) => {
                if let Some(tab) = layout::tab_at(area, m.column, m.row) {
                    return self.update(Action::Show(tab));
                }
            }
            _ => {}
        }
        None
    }

    /// Applies an action; returns the work it asks for.
    pub fn update(&mut self, action: Action) -> Option<Command> {
        match action {
            Action::Show(tab) => {
                self.tab = tab;
                if tab == Tab::Samples {
                    let run = self.views.run.shown(self.selected_run());
                    let load = self.views.samples.want(run);
                    return load.and_then(|c| self.update(Action::Do(c)));
                }
            }
            Action::OpenRun(id) => {
                self.views.run.open(id);
                self.tab = Tab::Run;
            }
            Action::ToggleCompareAll(ids) => {
                if ids.iter().all(|id| self.data.marked_runs.contains(id)) {
                    for id in &ids {
                        self.data.marked_runs.remove(id);
                    }
                } else {
                    self.data.marked_runs.extend(ids);
                }
                self.status = format!(
                    "{} run(s) marked for compare (4)",
                    self.data.marked_runs.len()
                );
            }
            Action::ToggleCompare(id) => {
                if !self.data.marked_runs.remove(&id) {
                    self.data.marked_runs.insert(id);
                }
                self.status = format!(
                    "{} run(s) marked for compare (4)",
                    self.data.marked_runs.len()
                );
            }
            Action::AskDelete(id) => self.modal = Some(Modal::ConfirmDelete(id)),
            Action::Help => self.modal = Some(Modal::Help),
            Action::AskQuit if self.data.busy() => self.modal = Some(Modal::ConfirmQuit),
            Action::AskQuit => return self.quit(),
            Action::Confirm(yes) => {
                let modal = self.modal.take();
                return match modal {
                    Some(Modal::ConfirmDelete(id)) if yes => self.command(Command::Delete(id)),
                    Some(Modal::ConfirmQuit) if yes => self.quit(),
                    _ => None,
                };
            }
            Action::Say(text) => self.status = text,
            Action::Do(command) => return self.command(command),
        }
        None
    }

    fn quit(&mut self) -> Option<Command> {
        self.quit = true;
        Some(Command::StopAll)
    }

    /// A command about to be carried out: refused with a word when the session's state says it
    /// cannot be, else what the screen shows while it is under way.
    fn command(&mut self, command: Command) -> Option<Command> {
        let running = |id: &i64| self.data.running.contains(id);
        let refusal = match &command {
            Command::Cancel(id) if !running(id) => {
                Some(format!("run {id} is not running in this session"))
            }
            Command::Resume(id) if running(id) => Some(format!("run {id} is already running")),
            Command::Delete(id) if running(id) => {
                Some(format!("run {id} is running: cancel it first"))
            }
            _ => None,
        };
        if let Some(text) = refusal {
            self.status = text;
            return None;
        }
        self.status = match &command {
            Command::StartRun { name, .. } => format!("starting a run of {name}…"),
            Command::StartSweep { name, .. } => format!("queueing the sweep of {name}…"),
            Command::Cancel(id) => format!("cancelling run {id} after its current step…"),
            Command::Resume(id) => format!("resuming run {id}…"),
            Command::Delete(id) => format!("deleting run {id}…"),
            Command::CompareCheckpoints(..) => {
                self.views.checkpoints.comparison_started();
                "evaluating both checkpoints in the background…".into()
            }
            Command::LoadSamples(id) => format!("reading run {id}'s per-image dynamics…"),
            Command::StopAll => self.status.clone(),
        };
        Some(command)
    }

    pub fn handle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Snapshot(s) => {
                self.data.snapshot = *s;
                self.views.clamp(&self.data);
            }
            Msg::Experiments(list) => {
                self.data.experiments = list;
                self.views.clamp(&self.data);
            }
            Msg::Event(run, event) => self.on_event(run, event),
            Msg::RunStarted(id, what) => {
                self.data.running.insert(id);
                self.views.run.open(id);
                self.tab = Tab::Run;
                self.status = what;
            }
            Msg::SweepStarted(id, what) => {
                self.data.sweeping.insert(id);
                self.tab = Tab::Sweeps;
                self.status = what;
            }
            Msg::JobDone(run, result) => {
                if let Some(run) = run {
                    self.data.running.remove(&run);
                    self.data.live.remove(&run);
                }
                self.status = match (run, result) {
                    (Some(run), Ok(outcome)) => format!("run {run} {outcome}"),
                    (Some(run), Err(e)) => format!("run {run}: {e}"),
                    (None, Ok(outcome)) => outcome.to_string(),
                    (None, Err(e)) => e,
                };
            }
            Msg::SweepDone(sweep, result) => {
                self.data.sweeping.remove(&sweep);
                self.status = match result {
                    Ok(n) => format!("sweep {sweep}: {n} runs worked (6 ranks them)"),
                    Err(e) => format!("sweep {sweep}: {e}"),
                };
            }
            Msg::Deleted(id, result) => {
                self.status = match result {
                    Ok(()) => {
                        self.data.snapshot.runs.retain(|r| r.id != id);
                        self.data.marked_runs.remove(&id);
                        self.views.clamp(&self.data);
                        format!("deleted run {id}")
                    }
                    Err(e) => format!("cannot delete run {id}: {e}"),
                }
            }
            Msg::Comparison(result) => {
                self.status = match &result {
                    Ok(c) => c.summary.clone(),
                    Err(e) => format!("comparison failed: {e}"),
                };
                self.views.checkpoints.comparison_done(result);
            }
            Msg::Samples(run, result) => {
                self.status = match &result {
                    Ok(s) => format!(
                        "run {run}: {} training images over {} epochs",
                        s.images, s.epochs
                    ),
                    Err(e) => format!("samples of run {run}: {e}"),
                };
                self.views.samples.loaded(run, result);
            }
            Msg::Status(text) => self.status = text,
        }
    }

    fn on_event(&mut self, run: i64, event: RunEvent) {
        match event {
            RunEvent::Started {
                epochs,
                start_epoch,
                batches_per_epoch,
                ..
            } => {
                self.data.live.insert(
                    run,
                    Live {
                        epoch: start_epoch,
                        epochs,
                        batch: 0,
                        batches: batches_per_epoch,
                        start_epoch,
                        images_per_s: 0.0,
                        loss: f64::NAN,
                        lr: f64::NAN,
                        started: Instant::now(),
                        steps: Vec::new(),
                    },
                );
            }
            RunEvent::Step {
                epoch,
                step,
                batch,
                batches,
                loss,
                lr,
                images_per_s,
                ..
            } => {
                if let Some(l) = self.data.live.get_mut(&run) {
                    l.epoch = epoch;
                    l.batch = batch;
                    l.batches = batches;
                    l.loss = loss;
                    l.lr = lr;
                    l.images_per_s = if l.images_per_s == 0.0 {
                        images_per_s
                    } else {
                        0.8 * l.images_per_s + 0.2 * images_per_s
                    };
                    l.steps.push((step as f64, loss));
                }
            }
            RunEvent::Epoch(s) => {
                if let Some(l) = self.data.live.get_mut(&run) {
                    l.epoch = s.epoch + 1;
                    l.batch = 0;
                }
            }
            RunEvent::Log { level, message } if level != LogLevel::Info => {
                self.status = format!("run {run}: {message}")
            }
            _ => {}
        }
    }
}
