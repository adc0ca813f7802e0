//! Workbench state and key handling. Drawing lives in `ui.rs`; background work in `background.rs`.

use super::background::{self, CheckpointComparison, ExperimentEntry, Interest, Msg, Snapshot};
use crate::config;
use crate::jobs;
use crate::registry::{Registry, RunRow};
use crate::train::{Control, Outcome, RunEvent};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Experiments,
    Runs,
    Detail,
    Compare,
    Checkpoints,
    Sweeps,
}

pub const TABS: [(Tab, &str); 6] = [
    (Tab::Experiments, "1 Experiments"),
    (Tab::Runs, "2 Runs"),
    (Tab::Detail, "3 Run"),
    (Tab::Compare, "4 Compare"),
    (Tab::Checkpoints, "5 Checkpoints"),
    (Tab::Sweeps, "6 Sweeps"),
];

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
    pub reg: Registry,
    pub tx: Sender<Msg>,
    pub interest: Interest,
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
    pub jobs: HashMap<i64, (Control, std::thread::JoinHandle<()>)>,
    /// Sweeps worked by this session, and the flag that stops their worker.
    pub sweep_workers: HashMap<
        i64,
        (
            std::sync::Arc<std::sync::atomic::AtomicBool>,
            std::thread::JoinHandle<()>,
        ),
    >,
    pub sweep_sel: usize,
    pub modal: Option<Modal>,
    pub status: String,
    pub quit: bool,
}

impl App {
    pub fn new(
        reg: Registry,
        tx: Sender<Msg>,
        interest: Interest,
        experiments_dir: PathBuf,
    ) -> Self {
        Self {
            reg,
            tx,
            interest,
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
            jobs: HashMap::new(),
            sweep_workers: HashMap::new(),
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
                    || r.display_status().contains(&f)
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
                    .cmp(b.display_status())
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

    fn update_interest(&self) {
        let mut ids: Vec<i64> = self.marked_runs.iter().copied().collect();
        ids.extend(self.detail_run);
        ids.extend(self.selected_run());
        ids.sort();
        ids.dedup();
        let sweep = self.snapshot.sweeps.get(self.sweep_sel).map(|s| s.id);
        *self.interest.lock().unwrap() = background::Wanted { runs: ids, sweep };
    }

    pub fn handle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Snapshot(s) => {
                self.snapshot = *s;
                self.run_sel = self
                    .run_sel
                    .min(self.visible_runs().len().saturating_sub(1));
                self.ck_sel = self
                    .ck_sel
                    .min(self.snapshot.checkpoints.len().saturating_sub(1));
                self.sweep_sel = self
                    .sweep_sel
                    .min(self.snapshot.sweeps.len().saturating_sub(1));
                self.update_interest();
            }
            Msg::Experiments(list) => {
                self.experiments = list;
                self.exp_sel = self.exp_sel.min(self.experiments.len().saturating_sub(1));
            }
            Msg::Event(run, event) => self.on_event(run, event),
            Msg::JobDone(run, result) => {
                if let Some((_, handle)) = self.jobs.remove(&run) {
                    let _ = handle.join();
                }
                self.status = match result {
                    Ok(Outcome::Completed {
                        final_val_accuracy, ..
                    }) => format!(
                        "run {run} completed: val accuracy {:.2}%",
                        final_val_accuracy * 100.0
                    ),
                    Ok(Outcome::Failed(e)) => format!("run {run} failed: {e}"),
                    Ok(Outcome::Cancelled { epochs_done }) => {
                        format!("run {run} cancelled after epoch {epochs_done} (R resumes)")
                    }
                    Ok(Outcome::Pruned { .. }) => format!("run {run} pruned"),
                    Err(e) => format!("run {run}: {e}"),
                };
                self.live.remove(&run);
            }
            Msg::SweepDone(sweep, result) => {
                if let Some((_, handle)) = self.sweep_workers.remove(&sweep) {
                    let _ = handle.join();
                }
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
                images_per_s,
                ..
            } => {
                if let Some(l) = self.live.get_mut(&run) {
                    l.epoch = epoch;
                    l.batch = batch;
                    l.batches = batches;
                    l.loss = loss;
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
            RunEvent::Log { level, message } if level != "info" => {
                self.status = format!("run {run}: {message}")
            }
            _ => {}
        }
    }

    pub fn start_experiment(&mut self, idx: usize) {
        let Some(entry) = self.experiments.get(idx).cloned() else {
            return;
        };
        if let Some(e) = &entry.error {
            self.status = format!("{} is invalid: {e}", entry.path.display());
            return;
        }
        let result = config::load(&entry.path, &[])
            .and_then(|loaded| jobs::create_run(&self.reg, &loaded, "running", None));
        match result {
            Ok(id) => {
                self.spawn(id, false);
                self.detail_run = Some(id);
                self.tab = Tab::Detail;
                self.status = format!("started run {id} ({})", entry.name);
            }
            Err(e) => self.status = format!("cannot start {}: {e:#}", entry.path.display()),
        }
        self.update_interest();
    }

    pub fn start_sweep(&mut self, idx: usize) {
        let Some(entry) = self.experiments.get(idx).cloned() else {
            return;
        };
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        match background::spawn_sweep(
            self.reg.clone(),
            entry.path.clone(),
            cancel.clone(),
            self.tx.clone(),
        ) {
            Ok((id, handle)) => {
                self.sweep_workers.insert(id, (cancel, handle));
                self.tab = Tab::Sweeps;
                self.status = format!("sweep {id} queued and training ({})", entry.name);
            }
            Err(e) => self.status = format!("cannot sweep {}: {e:#}", entry.path.display()),
        }
    }

    fn spawn(&mut self, id: i64, resume: bool) {
        let control = Control::default();
        let handle = background::spawn_job(
            self.reg.clone(),
            id,
            resume,
            control.clone(),
            self.tx.clone(),
        );
        self.jobs.insert(id, (control, handle));
    }

    pub fn cancel(&mut self, id: i64) {
        match self.jobs.get(&id) {
            Some((control, _)) => {
                control.cancel.store(true, Ordering::SeqCst);
                self.status = format!("cancelling run {id} after its current step…");
            }
            None => self.status = format!("run {id} is not running in this session"),
        }
    }

    pub fn resume(&mut self, id: i64) {
        if self.jobs.contains_key(&id) {
            self.status = format!("run {id} is already running");
            return;
        }
        match jobs::check_resumable(&self.reg, id) {
            Ok(()) => {
                self.spawn(id, true);
                self.status = format!("resuming run {id}");
            }
            Err(e) => self.status = e.to_string(),
        }
    }

    fn delete(&mut self, id: i64) {
        if self.jobs.contains_key(&id) {
            self.status = format!("run {id} is running: cancel it first");
            return;
        }
        match self.reg.delete_run(id) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(jobs::run_dir(&self.reg, id));
                self.snapshot.runs.retain(|r| r.id != id);
                self.marked_runs.remove(&id);
                self.status = format!("deleted run {id}");
            }
            Err(e) => self.status = format!("cannot delete run {id}: {e}"),
        }
    }

    /// Stops every job of this session; they finish their step, are marked cancelled, stay resumable.
    pub fn stop_all_jobs(&mut self) {
        for (cancel, _) in self.sweep_workers.values() {
            cancel.store(true, Ordering::SeqCst);
        }
        for (control, _) in self.jobs.values() {
            control.cancel.store(true, Ordering::SeqCst);
        }
        for (_, (_, handle)) in self.jobs.drain() {
            let _ = handle.join();
        }
        for (_, (_, handle)) in self.sweep_workers.drain() {
            let _ = handle.join();
        }
    }

    fn compare_checkpoints(&mut self) {
        if self.marked_cks.len() != 2 {
            self.status = "mark two checkpoints with space, then press e".into();
            return;
        }
        let find = |id: i64| {
            self.snapshot
                .checkpoints
                .iter()
                .find(|c| c.id == id)
                .cloned()
        };
        let (Some(a), Some(b)) = (find(self.marked_cks[0]), find(self.marked_cks[1])) else {
            return;
        };
        self.comparing = true;
        self.comparison = None;
        let (reg, tx) = (self.reg.clone(), self.tx.clone());
        std::thread::spawn(move || {
            let r = background::compare_checkpoints(&reg, &a, &b)
                .map(Box::new)
                .map_err(|e| format!("{e:#}"));
            let _ = tx.send(Msg::Comparison(r));
        });
        self.status = "evaluating both checkpoints in the background…".into();
    }

    pub fn handle_mouse(&mut self, m: MouseEvent) {
        match m.kind {
            MouseEventKind::ScrollDown => self.move_selection(1),
            MouseEventKind::ScrollUp => self.move_selection(-1),
            MouseEventKind::Down(_) if m.row == 0 => {
                // The tab bar: each title is as wide as its label plus a divider.
                let mut x = 0u16;
                for (tab, label) in TABS {
                    let w = label.len() as u16 + 3;
                    if m.column < x + w {
                        self.tab = tab;
                        break;
                    }
                    x += w;
                }
            }
            _ => {}
        }
    }

    fn move_selection(&mut self, delta: i64) {
        let (sel, len) = match self.tab {
            Tab::Experiments => (&mut self.exp_sel, self.experiments.len()),
            Tab::Runs => (&mut self.run_sel, self.snapshot.runs.len()),
            Tab::Checkpoints => (&mut self.ck_sel, self.snapshot.checkpoints.len()),
            Tab::Sweeps => (&mut self.sweep_sel, self.snapshot.sweeps.len()),
            _ => return,
        };
        if len == 0 {
            return;
        }
        *sel = (*sel as i64 + delta).clamp(0, len as i64 - 1) as usize;
        self.update_interest();
    }

    pub fn handle_key(&mut self, key: KeyEvent) {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return self.request_quit();
        }
        if let Some(modal) = self.modal.clone() {
            match (modal, key.code) {
                (Modal::ConfirmDelete(id), KeyCode::Char('y')) => {
                    self.delete(id);
                    self.modal = None;
                }
                (Modal::ConfirmQuit, KeyCode::Char('y')) => {
                    self.stop_all_jobs();
                    self.quit = true;
                }
                (
                    _,
                    KeyCode::Char('n') | KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('?'),
                ) => self.modal = None,
                _ => {}
            }
            return;
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
            return;
        }
        match key.code {
            KeyCode::Char('q') => return self.request_quit(),
            KeyCode::Char('?') => return self.modal = Some(Modal::Help),
            KeyCode::Char(c @ '1'..='6') => self.tab = TABS[(c as u8 - b'1') as usize].0,
            KeyCode::Tab => {
                self.tab =
                    TABS[(TABS.iter().position(|t| t.0 == self.tab).unwrap() + 1) % TABS.len()].0
            }
            KeyCode::BackTab => {
                self.tab = TABS[(TABS.iter().position(|t| t.0 == self.tab).unwrap() + TABS.len()
                    - 1)
                    % TABS.len()]
                .0
            }
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            _ => self.handle_tab_key(key),
        }
        self.update_interest();
    }

    /// Runs training in this session: single runs and sweep workers.
    pub fn busy(&self) -> bool {
        !self.jobs.is_empty() || !self.sweep_workers.is_empty()
    }

    fn request_quit(&mut self) {
        if !self.busy() {
            self.quit = true;
        } else {
            self.modal = Some(Modal::ConfirmQuit);
        }
    }

    fn handle_tab_key(&mut self, key: KeyEvent) {
        let selected = self.selected_run();
        match (self.tab, key.code) {
            (Tab::Experiments, KeyCode::Enter | KeyCode::Char('r')) => {
                self.start_experiment(self.exp_sel)
            }
            (Tab::Experiments, KeyCode::Char('S')) => self.start_sweep(self.exp_sel),
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
            (Tab::Runs, KeyCode::Char('c')) => {
                if let Some(id) = selected {
                    self.cancel(id)
                }
            }
            (Tab::Runs, KeyCode::Char('R')) => {
                if let Some(id) = selected {
                    self.resume(id)
                }
            }
            (Tab::Detail, KeyCode::Char('c')) => {
                if let Some(id) = self.detail_run {
                    self.cancel(id)
                }
            }
            (Tab::Detail, KeyCode::Char('R')) => {
                if let Some(id) = self.detail_run {
                    self.resume(id)
                }
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
            (Tab::Checkpoints, KeyCode::Char('e') | KeyCode::Enter) => self.compare_checkpoints(),
            _ => {}
        }
    }
}
