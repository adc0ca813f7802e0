//! Carries out the workbench's [`Command`]s, none of them on the UI thread: the one place of the
//! UI that writes to the registry, deletes run files and starts or stops threads. It owns the
//! registry handle and every thread it started; how the work went comes back to the app as
//! messages on the channel (`App` is the only code that changes `App`).

use super::app::Command;
use super::background::{self, Msg};
use crate::registry::Registry;
use crate::train::Control;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

/// A run this session trains: its id once known (a new run gets one from the registry on its
/// thread), what stops it, and its thread.
struct Job {
    run: Arc<OnceLock<i64>>,
    control: Control,
    handle: JoinHandle<()>,
}

/// A sweep this session works: the flag that stops its worker, and the worker's thread.
struct SweepJob {
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

pub struct Effects {
    reg: Registry,
    tx: Sender<Msg>,
    jobs: Vec<Job>,
    /// Sweeps worked by this session.
    sweeps: Vec<SweepJob>,
    /// Deletions and comparisons under way.
    others: Vec<JoinHandle<()>>,
}

impl Effects {
    pub fn new(reg: Registry, tx: Sender<Msg>) -> Self {
        Self {
            reg,
            tx,
            jobs: Vec::new(),
            sweeps: Vec::new(),
            others: Vec::new(),
        }
    }

    /// Starts the work `command` asks for; it reports back through the channel.
    pub fn perform(&mut self, command: Command) {
        let (reg, tx) = (self.reg.clone(), self.tx.clone());
        match command {
            Command::StartRun { path, .. } => self.spawn(background::Start::New(path)),
            Command::Resume(id) => self.spawn(background::Start::Resume(id)),
            Command::StartSweep { path, .. } => {
                let cancel = Arc::new(AtomicBool::new(false));
                let handle = background::spawn_sweep(reg, path, cancel.clone(), tx);
                self.sweeps.push(SweepJob { cancel, handle });
            }
            Command::Cancel(id) => match self.jobs.iter().find(|j| j.run.get() == Some(&id)) {
                Some(job) => job.control.cancel.store(true, Ordering::SeqCst),
                None => self
                    .others
                    .push(background::spawn_remote_cancel(reg, id, tx)),
            },
            Command::Delete(id) => self.others.push(background::spawn_delete(reg, id, tx)),
            Command::CompareCheckpoints(a, b) => self
                .others
                .push(background::spawn_comparison(reg, *a, *b, tx)),
            Command::LoadSamples(run) => self.others.push(background::spawn_samples(reg, run, tx)),
            Command::StopAll => self.stop_all(),
        }
    }

    fn spawn(&mut self, start: background::Start) {
        let run = Arc::new(OnceLock::new());
        let control = Control::default();
        let handle = background::spawn_job(
            self.reg.clone(),
            start,
            run.clone(),
            control.clone(),
            self.tx.clone(),
        );
        self.jobs.push(Job {
            run,
            control,
            handle,
        });
    }

    /// Joins the threads that have ended.
    pub fn reap(&mut self) {
        let (done, running): (Vec<Job>, Vec<Job>) = std::mem::take(&mut self.jobs)
            .into_iter()
            .partition(|j| j.handle.is_finished());
        self.jobs = running;
        for job in done {
            let _ = job.handle.join();
        }
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sweeps)
            .into_iter()
            .partition(|s| s.handle.is_finished());
        self.sweeps = running;
        for sweep in done {
            let _ = sweep.handle.join();
        }
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.others)
            .into_iter()
            .partition(|h| h.is_finished());
        self.others = running;
        for handle in done {
            let _ = handle.join();
        }
    }

    /// Stops every job of this session; they finish their step, are marked cancelled (sweep
    /// runs go back to the queue) and stay resumable.
    pub fn stop_all(&mut self) {
        for sweep in &self.sweeps {
            sweep.cancel.store(true, Ordering::SeqCst);
        }
        for job in &self.jobs {
            job.control.cancel.store(true, Ordering::SeqCst);
        }
        for job in self.jobs.drain(..) {
            let _ = job.handle.join();
        }
        for sweep in self.sweeps.drain(..) {
            let _ = sweep.handle.join();
        }
        for handle in self.others.drain(..) {
            let _ = handle.join();
        }
    }
}
