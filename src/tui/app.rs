//! Workbench state and its one place of change. A key goes to the current view, which turns it
//! into an [`Action`] (changing only its own selection or filter on the way); [`App::update`]
//! applies the action to the app and returns a [`Command`] when it needs work done beyond the
//! screen, which `effects` carries out; what that work reports comes back as a [`Msg`] through
//! [`App::handle_msg`]. Drawing (`ui`, `views`) reads the app and changes nothing.

use super::background::Msg;
use super::layout;
pub use super::state::{Command, Data, Live, Pending, Wanted};
pub use super::views::{Action, Tab, Views};
use crate::status::{LogLevel, RunStatus};
use crate::train::RunEvent;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use ratatui::layout::Rect;
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
    /// How images are drawn and why, for the help dialog.
    pub images: String,
}

impl App {
    pub fn new(experiments_dir: PathBuf) -> Self {
        Self {
            data: Data::new(experiments_dir),
            views: Views::default(),
            tab: Tab::Experiments,
            modal: None,
            status: "? for help".into(),
            quit: false,
            images: "images: halfblocks".into(),
        }
    }

    /// What the refresher should read for the views.
    pub fn wanted(&self) -> Wanted {
        self.views.wanted(&self.data, self.tab)
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Option<Command> {
        // No key is bound with Alt: Alt+x is an Escape with x right behind it, typed fast or
        // held back by a multiplexer (GNU screen passes a lone Escape on with the next key).
        if let (KeyModifiers::ALT, KeyCode::Char(c)) = (key.modifiers, key.code) {
            let esc = self.handle_key(KeyEvent::from(KeyCode::Esc));
            return self.handle_key(KeyEvent::from(KeyCode::Char(c))).or(esc);
        }
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
        let view = self.views.get_mut(self.tab);
        if view.editing().is_some() {
            return view.handle_key(key, &self.data);
        }
        let (index, count) = (self.tab.index(), Tab::ALL.len());
        match key.code {
            KeyCode::Char('q') => Some(Action::AskQuit),
            KeyCode::Char('?') => Some(Action::Help),
            KeyCode::Char(c @ '1'..='9') => Tab::at((c as u8 - b'1') as usize).map(Action::Show),
            KeyCode::Tab => Tab::at((index + 1) % count).map(Action::Show),
            KeyCode::BackTab => Tab::at((index + count - 1) % count).map(Action::Show),
            KeyCode::Down | KeyCode::Char('j') => view.move_selection(1, &self.data),
            KeyCode::Up | KeyCode::Char('k') => view.move_selection(-1, &self.data),
            _ => view.handle_key(key, &self.data),
        }
    }

    /// `area` is the terminal's size, from which the tab bar's place is computed as drawn.
    pub fn handle_mouse(&mut self, m: MouseEvent, area: Rect) -> Option<Command> {
        let view = self.views.get_mut(self.tab);
        let action = match m.kind {
            MouseEventKind::ScrollDown => view.move_selection(1, &self.data),
            MouseEventKind::ScrollUp => view.move_selection(-1, &self.data),
            MouseEventKind::Down(_) => layout::tab_at(area, &self.views.labels(), m.column, m.row)
                .and_then(Tab::at)
                .map(Action::Show),
            _ => None,
        };
        self.update(action?)
    }

    /// Applies an action; returns the work it asks for.
    pub fn update(&mut self, action: Action) -> Option<Command> {
        match action {
            Action::Show(tab) => {
                self.tab = tab;
                let next = self.views.get_mut(tab).on_show(&self.data);
                return next.and_then(|a| self.update(a));
            }
            Action::Focus(id) => self.data.focus = Some(id),
            Action::OpenRun(id) => {
                self.data.focus = Some(id);
                return self.update(Action::Show(Tab::Run));
            }
            Action::ToggleCompareAll(ids) => {
                let unmark = ids.iter().all(|id| self.data.marked_runs.contains(id));
                let list = ids.iter().map(|id| id.to_string()).collect::<Vec<_>>();
                let group = ids
                    .first()
                    .and_then(|id| self.data.seed_group(*id))
                    .map(|(g, _)| format!("seed group g{g}"))
                    .unwrap_or_else(|| "runs".into());
                if unmark {
                    for id in &ids {
                        self.data.marked_runs.remove(id);
                    }
                } else {
                    self.data.marked_runs.extend(ids);
                }
                self.status = format!(
                    "{group} (runs {}) {}; {} run(s) marked for compare (4)",
                    list.join(", "),
                    if unmark { "unmarked" } else { "marked" },
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
        // A run another worker holds (a `mvlab worker`, a Slurm task) is cancelled through it.
        let held_elsewhere = |id: &i64| {
            self.data
                .snapshot
                .runs
                .iter()
                .any(|r| r.id == *id && r.display_status() == RunStatus::Running)
        };
        let refusal = match &command {
            Command::Cancel(id) if !running(id) && !held_elsewhere(id) => {
                Some(format!("run {id} is not running"))
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
            Command::Cancel(id) if !running(id) => {
                format!("asking run {id}'s worker to cancel it…")
            }
            Command::Cancel(id) => format!("cancelling run {id} after its current step…"),
            Command::Resume(id) => format!("resuming run {id}…"),
            Command::Delete(id) => format!("deleting run {id}…"),
            Command::CompareCheckpoints(..) => {
                self.data.comparison = Pending::Running;
                "evaluating both checkpoints in the background…".into()
            }
            Command::LoadSamples(id) => {
                self.data.samples = Some((*id, Pending::Running));
                format!("reading run {id}'s per-image dynamics…")
            }
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
                self.data.focus = Some(id);
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
                        if self.data.focus == Some(id) {
                            self.data.focus = None;
                        }
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
                self.data.comparison = Pending::Done(result);
                self.views.clamp(&self.data);
            }
            Msg::Samples(run, result) => {
                self.status = match &result {
                    Ok(s) => format!(
                        "run {run}: {} training images over {} epochs",
                        s.images, s.epochs
                    ),
                    Err(e) => format!("samples of run {run}: {e}"),
                };
                // Only the samples last asked for are kept.
                if matches!(self.data.samples, Some((r, _)) if r == run) {
                    self.data.samples = Some((run, Pending::Done(result)));
                }
                self.views.clamp(&self.data);
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
