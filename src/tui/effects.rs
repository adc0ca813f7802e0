//! Carries out the workbench's [`Action`]s: the one place of the UI that writes to the registry,
//! deletes run folders and starts or stops threads. It owns the registry handle and every thread
//! it started; what they report comes back to the UI as messages.

use super::app::{Action, App};
use super::background::{self, Msg};
use crate::config;
use crate::jobs;
use crate::registry::Registry;
use crate::status::RunStatus;
use crate::train::Control;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

pub struct Effects {
    reg: Registry,
    tx: Sender<Msg>,
    jobs: HashMap<i64, (Control, JoinHandle<()>)>,
    /// Sweeps worked by this session, and the flag that stops their worker.
    sweeps: HashMap<i64, (Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Effects {
    pub fn new(reg: Registry, tx: Sender<Msg>) -> Self {
        Self {
            reg,
            tx,
            jobs: HashMap::new(),
            sweeps: HashMap::new(),
        }
    }

    /// Does what `action` asks and tells `app` how it went.
    pub fn perform(&mut self, action: Action, app: &mut App) {
        match action {
            Action::StartRun { path, name } => {
                let created = config::load(&path, &[]).and_then(|loaded| {
                    jobs::create_run(&self.reg, &loaded, RunStatus::Running, None)
                });
                match created {
                    Ok(id) => {
                        self.spawn(id, false);
                        app.run_started(id, format!("started run {id} ({name})"));
                    }
                    Err(e) => app.status = format!("cannot start {}: {e:#}", path.display()),
                }
            }
            Action::StartSweep { path, name } => {
                let cancel = Arc::new(AtomicBool::new(false));
                match background::spawn_sweep(
                    self.reg.clone(),
                    path.clone(),
                    cancel.clone(),
                    self.tx.clone(),
                ) {
                    Ok((id, handle)) => {
                        self.sweeps.insert(id, (cancel, handle));
                        app.sweeping.insert(id);
                        app.tab = super::app::Tab::Sweeps;
                        app.status = format!("sweep {id} queued and training ({name})");
                    }
                    Err(e) => app.status = format!("cannot sweep {}: {e:#}", path.display()),
                }
            }
            Action::Cancel(id) => {
                if let Some((control, _)) = self.jobs.get(&id) {
                    control.cancel.store(true, Ordering::SeqCst);
                    app.status = format!("cancelling run {id} after its current step…");
                }
            }
            Action::Resume(id) => match jobs::check_resumable(&self.reg, id) {
                Ok(()) => {
                    self.spawn(id, true);
                    app.run_started(id, format!("resuming run {id}"));
                }
                Err(e) => app.status = e.to_string(),
            },
            Action::Delete(id) => match self.reg.delete_run(id) {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(jobs::run_dir(&self.reg, id));
                    app.run_deleted(id);
                }
                Err(e) => app.status = format!("cannot delete run {id}: {e}"),
            },
            Action::CompareCheckpoints(a, b) => {
                background::spawn_comparison(self.reg.clone(), *a, *b, self.tx.clone())
            }
            Action::Quit => {
                self.stop_all();
                app.quit = true;
            }
        }
    }

    /// Joins the thread of a job or sweep that reported its end.
    pub fn reap(&mut self, msg: &Msg) {
        let handle = match msg {
            Msg::JobDone(run, _) => self.jobs.remove(run).map(|j| j.1),
            Msg::SweepDone(sweep, _) => self.sweeps.remove(sweep).map(|s| s.1),
            _ => None,
        };
        if let Some(h) = handle {
            let _ = h.join();
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

    /// Stops every job of this session; they finish their step, are marked cancelled, stay resumable.
    pub fn stop_all(&mut self) {
        for (cancel, _) in self.sweeps.values() {
            cancel.store(true, Ordering::SeqCst);
        }
        for (control, _) in self.jobs.values() {
            control.cancel.store(true, Ordering::SeqCst);
        }
        for (_, (_, handle)) in self.jobs.drain() {
            let _ = handle.join();
        }
        for (_, (_, handle)) in self.sweeps.drain() {
            let _ = handle.join();
        }
    }
}
