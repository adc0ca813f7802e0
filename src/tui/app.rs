//! Workbench state and input. Keys and mouse events change what is shown (views, selections,
//! marks, filters, dialogs) right here and return an [`Action`] for anything with effects
//! (starting, cancelling, resuming, deleting runs, evaluating checkpoints, quitting), which
//! `effects` carries out. Drawing lives in `ui`, background work in `background`.

use super::background::{ExperimentEntry, Msg, Snapshot, Wanted};
use super::layout;
pub use super::layout::{TABS, Tab};
use crate::eval::CheckpointComparison;
use crate::registry::{CheckpointRow, RunRow};
use crate::status::LogLevel;
use crate::train::RunEvent;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use ratatui::layout::Rect;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Id,
    Best,
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modal {
    Help,
    ConfirmDelete(i64),
    ConfirmQuit,
}

/// What the user asked for that reaches past the screen: `effects` carries it out.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create a run of this experiment file and train it.
    StartRun {
        path: PathBuf,
        name: String,
    },
    /// Queue the file's `[sweep]` and work it.
    StartSweep {
        path: PathBuf,
        name: String,
    },
    Cancel(i64),
    Resume(i64),
    /// Delete a run's rows and folder (the user confirmed).
    Delete(i64),
    /// Evaluate two checkpoints side by side on the first one's val split.
    CompareCheckpoints(Box<CheckpointRow>, Box<CheckpointRow>),
    /// Stop this session's training (runs stay resumable) and leave.
    Quit,
}

/// Progress of a run trained in this session, kept current by its events.
#[derive(Debug, Clone)]
pub struct Live {
    pub epoch: usize,
    pub epochs: usize,
    pub batch: usize,
    pub batches: usize,
    pub start_epoch: usize,
    pub images_per_s: f64,
    pub loss: f64,
    pub lr: f64,
    pub started: Instant,
    pub steps: Vec<(f64, f64)>,
}

impl Live {
    /// Fraction of the run done, and the estimated seconds left.
    pub fn progress(&self) -> (f64, Option<f64>) {
        let total =
            ((self.epochs + 1).saturating_sub(self.start_epoch) * self.batches.max(1)) as f64;
        let done =
            ((self.epoch.saturating_sub(self.start_epoch)) * self.batches + self.batch) as f64;
        let frac = if total > 0.0 {
            (done / total).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let eta =
            (done > 0.0).then(|| self.started.elapsed().as_secs_f64() * (total - done) / done);
        (frac, eta)
    }
}

pub struct App {
    pub experiments_dir: PathBuf,
    pub tab: Tab,
    pub experiments: Vec<ExperimentEntry>,
    pub exp_sel: usize,
    pub snapshot: Snapshot,
    pub run_sel: usize,
    pub filter: String,
    pub filter_editing: bool,
    pub sort: SortKey,
    pub detail_run: Option<i64>,
    pub marked_runs: BTreeSet<i64>,
    pub ck_sel: usize,
    pub marked_cks: Vec<i64>,
    pub comparison: Option<Result<Box<CheckpointComparison>, String>>,
    pub comparing: bool,
    pub live: HashMap<i64, Live>,
    /// Runs training in this session, and sweeps worked by it.
    pub running: BTreeSet<i64>,
    pub sweeping: BTreeSet<i64>,
    pub sweep_sel: usize,
    pub modal: Option<Modal>,
    pub status: String,
    pub quit: bool,
}

impl App {
    pub fn new(experiments_dir: PathBuf) -> Self {
        Self {
            experiments_dir,
            tab: Tab::Experiments,
            experiments: Vec::new(),
            exp_sel: 0,
            snapshot: Snapshot::default(),
            run_sel: 0,
            filter: String::new(),
            filter_editing: false,
            sort: SortKey::Id,
            detail_run: None,
            marked_runs: BTreeSet::new(),
            ck_sel: 0,
            marked_cks: Vec::new(),
            comparison: None,
            comparing: false,
            live: HashMap::new(),
            running: BTreeSet::new(),
            sweeping: BTreeSet::new(),
            sweep_sel: 0,
            modal: None,
            status: "? for help".into(),
            quit: false,
        }
    }

    /// Runs as the Runs table shows them: filtered, then sorted.
    pub fn visible_runs(&self) -> Vec<&RunRow> {
        let f = self.filter.to_lowercase();
        let mut runs: Vec<&RunRow> = self
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

    pub fn selected_run(&self) -> Option<i64> {
        self.visible_runs().get(self.run_sel).map(|r| r.id)
    }

    pub fn run(&self, id: i64) -> Option<&RunRow> {
        self.snapshot.runs.iter().find(|r| r.id == id)
    }

    /// What the refresher should read for the screen: details of the runs shown or marked, and
    /// the selected sweep's report.
    pub fn wanted(&self) -> Wanted {
        let mut ids: Vec<i64> = self.marked_runs.iter().copied().collect();
        ids.extend(self.detail_run);
        ids.extend(self.selected_run());
        ids.sort();
        ids.dedup();
        let sweep = self.snapshot.sweeps.get(self.sweep_sel).map(|s| s.id);
        Wanted { runs: ids, sweep }
    }

    /// Training in this session: single runs and sweep workers.
    pub fn busy(&self) -> bool {
        !self.running.is_empty() || !self.sweeping.is_empty()
    }

    pub fn handle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Snapshot(s) => {
                self.snapshot = *s;
                self.clamp_selections();
            }
            Msg::Experiments(list) => {
                self.experiments = list;
                self.exp_sel = self.exp_sel.min(self.experiments.len().saturating_sub(1));
            }
            Msg::Event(run, event) => self.on_event(run, event),
            Msg::JobDone(run, result) => {
                self.running.remove(&run);
                self.live.remove(&run);
                self.status = match result {
                    Ok(outcome) => format!("run {run} {outcome}"),
                    Err(e) => format!("run {run}: {e}"),
                };
            }
            Msg::SweepDone(sweep, result) => {
                self.sweeping.remove(&sweep);
                self.status = match result {
                    Ok(n) => format!("sweep {sweep}: {n} runs worked (6 ranks them)"),
                    Err(e) => format!("sweep {sweep}: {e}"),
                };
            }
            Msg::Comparison(result) => {
                self.comparing = false;
                self.status = match &result {
                    Ok(_) => "checkpoints evaluated".into(),
                    Err(e) => format!("comparison failed: {e}"),
                };
                self.comparison = Some(result);
            }
        }
    }

    fn clamp_selections(&mut self) {
        self.run_sel = self
            .run_sel
            .min(self.visible_runs().len().saturating_sub(1));
        self.ck_sel = self
            .ck_sel
            .min(self.snapshot.checkpoints.len().saturating_sub(1));
        self.sweep_sel = self
            .sweep_sel
            .min(self.snapshot.sweeps.len().saturating_sub(1));
    }

    fn on_event(&mut self, run: i64, event: RunEvent) {
        match event {
            RunEvent::Started {
                epochs,
                start_epoch,
                batches_per_epoch,
                ..
            } => {
                self.live.insert(
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
                if let Some(l) = self.live.get_mut(&run) {
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
                if let Some(l) = self.live.get_mut(&run) {
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

    /// The action for the experiment at `idx`, or a status line saying why there is none.
    fn experiment_action(&mut self, idx: usize, sweep: bool) -> Option<Action> {
        let entry = self.experiments.get(idx)?;
        if let Some(e) = &entry.error {
            self.status = format!("{} is invalid: {e}", entry.path.display());
            return None;
        }
        let (path, name) = (entry.path.clone(), entry.name.clone());
        Some(if sweep {
            Action::StartSweep { path, name }
        } else {
            Action::StartRun { path, name }
        })
    }

    fn cancel(&mut self, id: i64) -> Option<Action> {
        if self.running.contains(&id) {
            return Some(Action::Cancel(id));
        }
        self.status = format!("run {id} is not running in this session");
        None
    }

    fn resume(&mut self, id: i64) -> Option<Action> {
        if self.running.contains(&id) {
            self.status = format!("run {id} is already running");
            return None;
        }
        Some(Action::Resume(id))
    }

    fn confirm_delete(&mut self, id: i64) -> Option<Action> {
        if self.running.contains(&id) {
            self.status = format!("run {id} is running: cancel it first");
            return None;
        }
        Some(Action::Delete(id))
    }

    fn compare_checkpoints(&mut self) -> Option<Action> {
        if self.marked_cks.len() != 2 {
            self.status = "mark two checkpoints with space, then press e".into();
            return None;
        }
        let find = |id: i64| {
            self.snapshot
                .checkpoints
                .iter()
                .find(|c| c.id == id)
                .cloned()
        };
        let (Some(a), Some(b)) = (find(self.marked_cks[0]), find(self.marked_cks[1])) else {
            return None;
        };
        self.comparing = true;
        self.comparison = None;
        self.status = "evaluating both checkpoints in the background…".into();
        Some(Action::CompareCheckpoints(Box::new(a), Box::new(b)))
    }

    /// A run this session started (or resumed): follow it in the Run view.
    pub fn run_started(&mut self, id: i64, what: String) {
        self.running.insert(id);
        self.detail_run = Some(id);
        self.tab = Tab::Detail;
        self.status = what;
    }

    pub fn run_deleted(&mut self, id: i64) {
        self.snapshot.runs.retain(|r| r.id != id);
        self.marked_runs.remove(&id);
        self.clamp_selections();
        self.status = format!("deleted run {id}");
    }

    /// `area` is the terminal's size, from which the tab bar's place is computed as drawn.
    pub fn handle_mouse(&mut self, m: MouseEvent, area: Rect) -> Option<Action> {
        match m.kind {
            MouseEventKind::ScrollDown => self.move_selection(1),
            MouseEventKind::ScrollUp => self.move_selection(-1),
            MouseEventKind::Down(_) => {
                if let Some(tab) = layout::tab_at(area, m.column, m.row) {
                    self.tab = tab;
                }
            }
            _ => {}
        }
        None
    }

    fn move_selection(&mut self, delta: i64) {
        let (len, sel) = match self.tab {
            Tab::Experiments => (self.experiments.len(), &mut self.exp_sel),
            // The Runs table shows the filtered runs: the selection stays among them.
            Tab::Runs => (self.visible_runs().len(), &mut self.run_sel),
            Tab::Checkpoints => (self.snapshot.checkpoints.len(), &mut self.ck_sel),
            Tab::Sweeps => (self.snapshot.sweeps.len(), &mut self.sweep_sel),
            _ => return,
        };
        if len == 0 {
            return;
        }
        *sel = (*sel as i64 + delta).clamp(0, len as i64 - 1) as usize;
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return self.request_quit();
        }
        if let Some(modal) = self.modal.clone() {
            return match (modal, key.code) {
                (Modal::ConfirmDelete(id), KeyCode::Char('y')) => {
                    self.modal = None;
                    self.confirm_delete(id)
                }
                (Modal::ConfirmQuit, KeyCode::Char('y')) => {
                    self.modal = None;
                    Some(Action::Quit)
                }
                (
                    _,
                    KeyCode::Char('n') | KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('?'),
                ) => {
                    self.modal = None;
                    None
                }
                _ => None,
            };
        }
        if self.filter_editing {
            match key.code {
                KeyCode::Enter | KeyCode::Esc => self.filter_editing = false,
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.run_sel = 0;
            return None;
        }
        let tab_index = TABS.iter().position(|t| t.0 == self.tab).unwrap_or(0);
        match key.code {
            KeyCode::Char('q') => return self.request_quit(),
            KeyCode::Char('?') => self.modal = Some(Modal::Help),
            KeyCode::Char(c @ '1'..='6') => self.tab = TABS[(c as u8 - b'1') as usize].0,
            KeyCode::Tab => self.tab = TABS[(tab_index + 1) % TABS.len()].0,
            KeyCode::BackTab => self.tab = TABS[(tab_index + TABS.len() - 1) % TABS.len()].0,
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            _ => return self.handle_tab_key(key),
        }
        None
    }

    fn request_quit(&mut self) -> Option<Action> {
        if self.busy() {
            self.modal = Some(Modal::ConfirmQuit);
            None
        } else {
            Some(Action::Quit)
        }
    }

    fn handle_tab_key(&mut self, key: KeyEvent) -> Option<Action> {
        let selected = self.selected_run();
        match (self.tab, key.code) {
            (Tab::Experiments, KeyCode::Enter | KeyCode::Char('r')) => {
                return self.experiment_action(self.exp_sel, false);
            }
            (Tab::Experiments, KeyCode::Char('S')) => {
                return self.experiment_action(self.exp_sel, true);
            }
            (Tab::Runs, KeyCode::Enter) => {
                if let Some(id) = selected {
                    self.detail_run = Some(id);
                    self.tab = Tab::Detail;
                }
            }
            (Tab::Runs, KeyCode::Char(' ')) => {
                if let Some(id) = selected {
                    if !self.marked_runs.remove(&id) {
                        self.marked_runs.insert(id);
                    }
                    self.status =
                        format!("{} run(s) marked for compare (4)", self.marked_runs.len());
                }
            }
            (Tab::Runs, KeyCode::Char('/')) => self.filter_editing = true,
            (Tab::Runs, KeyCode::Char('s')) => {
                self.sort = match self.sort {
                    SortKey::Id => SortKey::Best,
                    SortKey::Best => SortKey::Status,
                    SortKey::Status => SortKey::Id,
                }
            }
            (Tab::Runs, KeyCode::Char('d')) => {
                if let Some(id) = selected {
                    self.modal = Some(Modal::ConfirmDelete(id));
                }
            }
            (Tab::Runs, KeyCode::Char('c')) => return selected.and_then(|id| self.cancel(id)),
            (Tab::Runs, KeyCode::Char('R')) => return selected.and_then(|id| self.resume(id)),
            (Tab::Detail, KeyCode::Char('c')) => {
                return self.detail_run.and_then(|id| self.cancel(id));
            }
            (Tab::Detail, KeyCode::Char('R')) => {
                return self.detail_run.and_then(|id| self.resume(id));
            }
            (Tab::Checkpoints, KeyCode::Char(' ')) => {
                if let Some(ck) = self.snapshot.checkpoints.get(self.ck_sel) {
                    if let Some(pos) = self.marked_cks.iter().position(|c| *c == ck.id) {
                        self.marked_cks.remove(pos);
                    } else {
                        self.marked_cks.push(ck.id);
                        if self.marked_cks.len() > 2 {
                            self.marked_cks.remove(0);
                        }
                    }
                }
            }
            (Tab::Checkpoints, KeyCode::Char('e') | KeyCode::Enter) => {
                return self.compare_checkpoints();
            }
            _ => {}
        }
        None
    }
}
