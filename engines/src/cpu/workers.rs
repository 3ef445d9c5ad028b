//! Worker threads that run the items of a batch side by side on the planned executor.
//! A network's items are independent (eval mode), and a session runs them one at a time
//! anyway ([`super`]'s module docs): with `threads` threads, a batch of B items takes
//! about `ceil(B / threads)` item times instead of B, and gives the same bits.
//!
//! Each worker is a thread that lives as long as its session, with a one-job slot guarded
//! by a mutex and a condition variable (on Linux both are futexes: waiting and waking
//! allocate nothing). A job ([`ItemJob`]) moves to the worker and back: the plan, the
//! item's values and the worker's own buffers for that plan, so a warm run allocates
//! nothing on any thread.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::planned::PlannedGraph;

/// One item's run on a worker: the plan, the item's values, and the buffers the plan runs
/// in (a worker's own, kept by the session per item shape).
pub(crate) struct ItemJob {
    pub(crate) plan: Arc<PlannedGraph>,
    pub(crate) input: Vec<f32>,
    pub(crate) buffers: Vec<Vec<f32>>,
}

impl ItemJob {
    /// A job for `plan`, with its buffers allocated.
    pub(crate) fn new(plan: Arc<PlannedGraph>) -> ItemJob {
        ItemJob {
            input: vec![0.0; plan.input_len()],
            buffers: plan.new_buffers(),
            plan,
        }
    }
}

/// What a worker's slot holds.
enum Slot {
    Idle,
    Queued(ItemJob),
    Running,
    Done(ItemJob),
    /// The run panicked (a bug in a kernel); the job is gone.
    Failed,
    Shutdown,
}

struct Shared {
    slot: Mutex<Slot>,
    changed: Condvar,
}

/// A worker thread; dropping it stops and joins the thread.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a worker thread named `name`.
    pub(crate) fn spawn(name: String) -> std::io::Result<Worker> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::Idle),
            changed: Condvar::new(),
        });
        let thread = std::thread::Builder::new().name(name).spawn({
            let shared = Arc::clone(&shared);
            move || work(&shared)
        })?;
        Ok(Worker {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands `job` to the worker, which runs it while the caller goes on. The caller
    /// collects it with [`Worker::finish`] before starting another. A worker that failed
    /// drops the job, and `finish` says so.
    pub(crate) fn start(&self, job: ItemJob) {
        let mut slot = lock(&self.shared.slot);
        if !matches!(*slot, Slot::Failed) {
            *slot = Slot::Queued(job);
        }
        drop(slot);
        self.shared.changed.notify_all();
    }

    /// Waits for the job started last and takes it back, run; `None` when its run
    /// panicked (the job, and this worker's use, are over).
    pub(crate) fn finish(&self) -> Option<ItemJob> {
        let mut slot = lock(&self.shared.slot);
        loop {
            match std::mem::replace(&mut *slot, Slot::Idle) {
                Slot::Done(job) => return Some(job),
                Slot::Failed | Slot::Idle | Slot::Shutdown => {
                    *slot = Slot::Failed;
                    return None;
                }
                waiting @ (Slot::Queued(_) | Slot::Running) => {
                    *slot = waiting;
                    slot = self
                        .shared
                        .changed
                        .wait(slot)
                        .unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        *lock(&self.shared.slot) = Slot::Shutdown;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            // The thread catches its runs' panics: joining does not fail.
            let _ = thread.join();
        }
    }
}

/// Marks the slot failed if the worker thread ends other than by shutting down, so that
/// the session's `finish` does not wait for it forever.
struct ExitGuard<'s>(&'s Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let mut slot = lock(&self.0.slot);
        if !matches!(*slot, Slot::Shutdown) {
            *slot = Slot::Failed;
        }
        drop(slot);
        self.0.changed.notify_all();
    }
}

/// A worker thread's loop: run each queued job, until shut down.
fn work(shared: &Shared) {
    let _exit = ExitGuard(shared);
    let mut slot = lock(&shared.slot);
    loop {
        match std::mem::replace(&mut *slot, Slot::Running) {
            Slot::Queued(mut job) => {
                drop(slot);
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    job.plan.run(&mut job.buffers, &job.input);
                }));
                slot = lock(&shared.slot);
                if !matches!(*slot, Slot::Shutdown) {
                    *slot = match ran {
                        Ok(()) => Slot::Done(job),
                        Err(_) => Slot::Failed,
                    };
                }
                shared.changed.notify_all();
            }
            Slot::Shutdown => {
                *slot = Slot::Shutdown;
                return;
            }
            other => {
                *slot = other;
                slot = shared.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

/// Locks a slot; a panic while it was held (there is none: runs happen unlocked) leaves
/// a value that is still whole.
fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}
