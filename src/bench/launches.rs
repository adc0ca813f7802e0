//! Kernel launches on cubecl devices, counted by phase of a training step (forward, backward,
//! optimizer, weight average), through cubecl's process-wide launch observer. A launch is
//! counted where it is issued, so the count does not depend on the device: cubecl's CPU runtime
//! gives the numbers a GPU would. The distinct kernels a step launches for the first time (each
//! compiled then) are collected too. On the CPU backend (flex) there is nothing to count.

use burn::tensor::Device;
use serde::Serialize;

/// Where in a training step a launch was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Forward,
    Backward,
    Optimizer,
    Average,
    /// Reading results back, inference, anything else.
    Other,
}

/// Launches of one step, by phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Launches {
    pub forward: u64,
    pub backward: u64,
    pub optimizer: u64,
    pub average: u64,
    pub other: u64,
}

impl Launches {
    pub fn total(&self) -> u64 {
        self.forward + self.backward + self.optimizer + self.average + self.other
    }

    /// Adds another count's phases to this one.
    pub fn add(&mut self, o: Launches) {
        self.forward += o.forward;
        self.backward += o.backward;
        self.optimizer += o.optimizer;
        self.average += o.average;
        self.other += o.other;
    }
}

impl std::fmt::Display for Launches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (forward {}, backward {}, optimizer {}, average {}, other {})",
            self.total(),
            self.forward,
            self.backward,
            self.optimizer,
            self.average,
            self.other
        )
    }
}

/// Counts the launches issued by the thread that started it, for as long as it lives.
pub struct Counter {
    #[cfg(feature = "cube")]
    inner: observer::Inner,
}

impl Counter {
    /// A counter for work on `device`: none on the CPU backend, or in a build without cubecl.
    pub fn start(device: &Device) -> Option<Self> {
        #[cfg(feature = "cube")]
        if crate::model::fused::gpu::is_cube(device) {
            return Some(Self {
                inner: observer::Inner::start(),
            });
        }
        let _ = device;
        None
    }

    pub fn phase(&self, phase: Phase) {
        #[cfg(feature = "cube")]
        self.inner.phase(phase);
        let _ = phase;
    }

    /// The launches since the last call, by phase (the phase goes back to `Other`).
    pub fn take(&self) -> Launches {
        #[cfg(feature = "cube")]
        return self.inner.take();
        #[allow(unreachable_code)]
        Launches::default()
    }

    /// How many distinct kernels were launched for the first time since the last call (each was
    /// compiled then; autotune's candidates are counted by the tuning log, apart).
    pub fn new_kernels(&mut self) -> usize {
        #[cfg(feature = "cube")]
        return self.inner.new_kernels();
        #[allow(unreachable_code)]
        0
    }
}

/// Sets the phase of an optional counter.
pub fn mark(counter: &Option<Counter>, phase: Phase) {
    if let Some(c) = counter {
        c.phase(phase);
    }
}

#[cfg(feature = "cube")]
mod observer {
    use super::{Launches, Phase};
    use cubecl::launched::LaunchedKernels;
    use cubecl::logging::{LaunchObservation, LaunchObserver};
    use std::cell::Cell;
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const PHASES: usize = 5;

    thread_local! {
        /// Set on the thread whose launches are counted: autotune's trial launches, issued on
        /// the device's own thread, are not part of a step.
        static COUNTED: Cell<bool> = const { Cell::new(false) };
    }

    struct Observer {
        phase: AtomicUsize,
        counts: [AtomicU64; PHASES],
        /// Launches by kernel name, when asked for (`MVLAB_LAUNCH_NAMES`).
        names: Option<Mutex<HashMap<&'static str, u64>>>,
    }

    impl LaunchObserver for Observer {
        fn launched(&self, kernel: &'static str) {
            if COUNTED.with(Cell::get) {
                self.counts[self.phase.load(Ordering::Relaxed)].fetch_add(1, Ordering::Relaxed);
                if let Some(names) = &self.names
                    && let Ok(mut names) = names.lock()
                {
                    *names.entry(kernel).or_default() += 1;
                }
            }
        }
    }

    pub struct Inner {
        observer: Arc<Observer>,
        _observation: LaunchObservation,
        kernels: Option<LaunchedKernels>,
        seen: HashSet<u128>,
    }

    impl Inner {
        pub fn start() -> Self {
            COUNTED.with(|c| c.set(true));
            let observer = Arc::new(Observer {
                phase: AtomicUsize::new(Phase::Other as usize),
                counts: Default::default(),
                names: std::env::var_os("MVLAB_LAUNCH_NAMES").map(|_| Mutex::default()),
            });
            Self {
                _observation: LaunchObservation::new(observer.clone()),
                observer,
                kernels: Some(LaunchedKernels::new()),
                seen: HashSet::new(),
            }
        }

        pub fn phase(&self, phase: Phase) {
            self.observer.phase.store(phase as usize, Ordering::Relaxed);
        }

        pub fn take(&self) -> Launches {
            self.phase(Phase::Other);
            let c = |p: Phase| self.observer.counts[p as usize].swap(0, Ordering::Relaxed);
            Launches {
                forward: c(Phase::Forward),
                backward: c(Phase::Backward),
                optimizer: c(Phase::Optimizer),
                average: c(Phase::Average),
                other: c(Phase::Other),
            }
        }

        pub fn new_kernels(&mut self) -> usize {
            let launched = self.kernels.take().map(|k| k.finish()).unwrap_or_default();
            self.kernels = Some(LaunchedKernels::new());
            let before = self.seen.len();
            self.seen.extend(launched);
            self.seen.len() - before
        }
    }

    impl Drop for Inner {
        fn drop(&mut self) {
            COUNTED.with(|c| c.set(false));
            // The launches by kernel, most frequent first: what to fuse next.
            if let Some(names) = &self.observer.names
                && let Ok(names) = names.lock()
            {
                let mut v: Vec<_> = names.iter().collect();
                v.sort_by(|a, b| b.1.cmp(a.1));
                for (name, n) in v.into_iter().take(40) {
                    eprintln!("{n:>8}  {name}");
                }
            }
        }
    }
}
