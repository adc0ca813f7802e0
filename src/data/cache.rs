//! Decoded, pre-resized images, so epochs after the first never decode a JPEG again.
//! Small datasets live in RAM; larger ones in a memory-mapped file of fixed-size slots.

use super::{Item, decode_resized};
use anyhow::{Context, Result};
use memmap2::MmapRaw;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

const EMPTY: u8 = 0;
const FILLING: u8 = 1;
const READY: u8 = 2;
const BAD: u8 = 3;

enum Storage {
    Memory(Vec<OnceLock<Box<[u8]>>>),
    /// An unnamed file in the folder `path`.
    Mapped {
        map: MmapRaw,
        path: PathBuf,
    },
}

pub struct ImageCache {
    pub side: usize,
    storage: Storage,
    state: Vec<AtomicU8>,
    bad: Mutex<Vec<(PathBuf, String)>>,
}

pub enum Fetched {
    Pixels(Vec<u8>),
    /// Unreadable: skipped, and listed in [`ImageCache::bad`].
    Bad,
}

impl ImageCache {
    /// In RAM when `len * side^2 * 3` fits in `budget_mb`, else in a file under `spill_dir`: an
    /// unnamed one of its own (nothing to collide with another cache, nothing left after a kill).
    pub fn new(len: usize, side: usize, budget_mb: usize, spill_dir: &Path) -> Result<Self> {
        let slot = side
            .checked_mul(side)
            .and_then(|a| a.checked_mul(3))
            .with_context(|| format!("images of {side} pixels are too large to cache"))?;
        let bytes = len
            .checked_mul(slot)
            .with_context(|| format!("{len} images of {side} pixels are too large to cache"))?;
        let storage = if bytes as u128 <= budget_mb as u128 * 1024 * 1024 {
            Storage::Memory((0..len).map(|_| OnceLock::new()).collect())
        } else {
            std::fs::create_dir_all(spill_dir)
                .with_context(|| format!("cannot create {}", spill_dir.display()))?;
            let file = tempfile::tempfile_in(spill_dir).with_context(|| {
                format!("cannot create a cache file in {}", spill_dir.display())
            })?;
            file.set_len(bytes.max(1) as u64).with_context(|| {
                format!(
                    "cannot make a {} MB cache file in {}",
                    bytes / (1024 * 1024),
                    spill_dir.display()
                )
            })?;
            let map = MmapRaw::map_raw(&file)
                .with_context(|| format!("cannot map a cache file in {}", spill_dir.display()))?;
            Storage::Mapped {
                map,
                path: spill_dir.to_path_buf(),
            }
        };
        Ok(Self {
            side,
            storage,
            state: (0..len).map(|_| AtomicU8::new(EMPTY)).collect(),
            bad: Mutex::new(Vec::new()),
        })
    }

    pub fn slot_bytes(&self) -> usize {
        self.side * self.side * 3
    }

    /// Bytes the cache takes when full, and where.
    pub fn describe(&self) -> String {
        let mb = (self.state.len() * self.slot_bytes()) as f64 / (1024.0 * 1024.0);
        match &self.storage {
            Storage::Memory(_) => format!("{mb:.1} MB in memory"),
            Storage::Mapped { path, .. } => {
                format!("{mb:.1} MB memory-mapped in {}", path.display())
            }
        }
    }

    /// The resized pixels of item `i`, decoding it the first time.
    pub fn fetch(&self, i: usize, item: &Item) -> Fetched {
        match self.state[i].load(Ordering::Acquire) {
            READY => return Fetched::Pixels(self.read(i)),
            BAD => return Fetched::Bad,
            _ => {}
        }
        match decode_resized(&item.path, self.side) {
            Ok(img) => {
                let pixels = img.into_raw();
                self.store(i, &pixels);
                Fetched::Pixels(pixels)
            }
            Err(e) => {
                if self.state[i].swap(BAD, Ordering::AcqRel) != BAD {
                    self.bad
                        .lock()
                        .unwrap()
                        .push((item.path.clone(), format!("{e:#}")));
                }
                Fetched::Bad
            }
        }
    }

    fn read(&self, i: usize) -> Vec<u8> {
        match &self.storage {
            Storage::Memory(slots) => slots[i].get().expect("ready slot").to_vec(),
            Storage::Mapped { map, .. } => {
                let n = self.slot_bytes();
                // SAFETY: slot i is READY, so it was fully written once and is never written again.
                unsafe { std::slice::from_raw_parts(map.as_ptr().add(i * n), n).to_vec() }
            }
        }
    }

    fn store(&self, i: usize, pixels: &[u8]) {
        // Only the thread that moves the slot EMPTY -> FILLING writes it.
        if self.state[i]
            .compare_exchange(EMPTY, FILLING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        match &self.storage {
            Storage::Memory(slots) => {
                let _ = slots[i].set(pixels.into());
            }
            Storage::Mapped { map, .. } => {
                let n = self.slot_bytes();
                // SAFETY: slots are disjoint and this thread owns slot i while it is FILLING.
                unsafe {
                    std::ptr::copy_nonoverlapping(pixels.as_ptr(), map.as_mut_ptr().add(i * n), n)
                };
            }
        }
        self.state[i].store(READY, Ordering::Release);
    }

    /// Files that could not be read, with the reason.
    pub fn bad(&self) -> Vec<(PathBuf, String)> {
        self.bad.lock().unwrap().clone()
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }
}
