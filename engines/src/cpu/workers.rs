//! Worker threads that share a session's runs on the planned executor, two ways:
//!
//! - **Items side by side.** A network's items are independent (eval mode), and a session
//!   runs them one at a time anyway ([`super`]'s module docs): with `threads` threads, a
//!   batch of B items takes about `ceil(B / threads)` item times instead of B. A job
//!   ([`ItemJob`]) moves to the worker and back: the plan, the item's values and the
//!   worker's own buffers for that plan.
//! - **One item's large steps split** ([`run_parts`]): a matrix product's columns (or
//!   rows), a convolution's output rows (or groups), one part per thread, each part
//!   writing values no other part writes (`planned.rs`' `Split`). The caller runs the
//!   first part and waits for the rest before the next step. This is what a single crop,
//!   or a detector's one image, gets.
//!
//! Either way the results are the same bits as on one thread: every output value is
//! computed by the same operations in the same order, only on another thread.
//!
//! Each worker is a thread that lives as long as its session, with a one-job slot guarded
//! by a mutex and a condition variable (on Linux both are futexes: waiting and waking
//! allocate nothing), so a warm run allocates nothing on any thread.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::planned::{zeroed, PlannedGraph};

/// One item's run on a worker: the plan, the item's values, and the buffers the plan runs
/// in (a worker's own, kept by the session per item shape).
pub(crate) struct ItemJob {
    pub(crate) plan: Arc<PlannedGraph>,
    pub(crate) input: Vec<f32>,
    pub(crate) buffers: Vec<Vec<f32>>,
}

impl ItemJob {
    /// A job for `plan`, with its buffers allocated; `None` when the memory is not there.
    pub(crate) fn new(plan: Arc<PlannedGraph>) -> Option<ItemJob> {
        Some(ItemJob {
            input: zeroed(plan.input_len())?,
            buffers: plan.new_buffers()?,
            plan,
        })
    }
}

/// One part of a split step, type-erased: `call(f, part)` runs the closure `f` points to
/// on the part `part` points to. Both live on the stack of [`run_parts`]' caller, which
/// does not return (or unwind) before the worker has finished with them.
#[derive(Clone, Copy)]
struct PartCall {
    call: unsafe fn(*const (), *mut ()),
    f: *const (),
    part: *mut (),
    /// A test's choice of the portable kernels on the caller's thread, for the worker's.
    #[cfg(test)]
    tiles_off: bool,
}

// SAFETY: a `PartCall` is made only by `run_parts` from a closure that is `Sync` and a part
// that is `Send`, so calling it from another thread is what those bounds allow; the
// pointers stay valid, and the part used by the worker alone, until `run_parts` has
// collected the call back (see there).
unsafe impl Send for PartCall {}

impl PartCall {
    fn new<T: Send, F: Fn(&mut T) + Sync>(f: &F, part: &mut T) -> PartCall {
        PartCall {
            call: call_part::<T, F>,
            f: (f as *const F).cast(),
            part: (part as *mut T).cast(),
            #[cfg(test)]
            tiles_off: super::tile::OFF_IN_TESTS.with(std::cell::Cell::get),
        }
    }
}

/// Runs `(*f)(&mut *part)`.
///
/// # Safety
/// `f` and `part` must point to a live `F` and `T` ([`PartCall::new`]'s arguments), and
/// nothing else may use the part meanwhile.
unsafe fn call_part<T, F: Fn(&mut T)>(f: *const (), part: *mut ()) {
    // SAFETY: the caller's contract: `f` points to a live `F`, shared (it is `Sync`).
    let f = unsafe { &*f.cast::<F>() };
    // SAFETY: the caller's contract: `part` points to a live `T` no one else uses.
    let part = unsafe { &mut *part.cast::<T>() };
    f(part);
}

/// What a worker runs.
enum Job {
    Item(ItemJob),
    Part(PartCall),
}

/// What a worker's slot holds.
enum Slot {
    Idle,
    Queued(Job),
    Running,
    Done(Job),
    /// A run panicked (a bug in a kernel); the job is gone, and the worker takes no more.
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
        self.queue(Job::Item(job));
    }

    /// Waits for the job started last and takes it back, run; `None` when its run
    /// panicked (the job, and this worker's use, are over).
    pub(crate) fn finish(&self) -> Option<ItemJob> {
        match self.collect() {
            Some(Job::Item(job)) => Some(job),
            Some(Job::Part(_)) | None => None,
        }
    }

    fn queue(&self, job: Job) {
        let mut slot = lock(&self.shared.slot);
        if !matches!(*slot, Slot::Failed) {
            *slot = Slot::Queued(job);
        }
        drop(slot);
        self.shared.changed.notify_all();
    }

    /// Waits for the job queued last and takes it back; `None` when its run panicked or
    /// the worker had failed before.
    fn collect(&self) -> Option<Job> {
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

/// Runs `f` on every part: the first on this thread, the others one per worker (at most
/// `1 + workers.len()` parts). Returns once every part has run. A part whose worker
/// failed (now or before) runs on this thread instead, so a lost worker costs speed,
/// not results. Allocates nothing.
pub(crate) fn run_parts<T: Send, F: Fn(&mut T) + Sync>(workers: &[Worker], parts: &mut [T], f: &F) {
    let Some((mine, theirs)) = parts.split_first_mut() else {
        return;
    };
    assert!(
        theirs.len() <= workers.len(),
        "{} parts for {} threads",
        theirs.len() + 1,
        workers.len() + 1
    );
    // From here until every started part is collected, the workers hold pointers to `f`
    // and to their parts. The guard collects them however this function is left, a panic
    // in `f` on this thread included, so the pointers never outlive what they point to.
    // Meanwhile this thread makes no reference to a part a worker holds: it reaches the
    // parts through `theirs_at` only, part `i` once to hand it out and again only once
    // worker `i` has given it back.
    let count = theirs.len();
    let theirs_at = theirs.as_mut_ptr();
    let mut pending = Pending {
        workers: &workers[..count],
        collected: 0,
    };
    for (i, worker) in workers[..count].iter().enumerate() {
        // SAFETY: `i < count`, inside `theirs`; no other reference to part `i` is live.
        let part = unsafe { &mut *theirs_at.add(i) };
        worker.queue(Job::Part(PartCall::new(f, part)));
    }
    f(mine);
    for i in 0..count {
        let ran = pending.collect_next();
        if !ran {
            // SAFETY: `i < count`, and worker `i` is done with part `i` (just collected).
            f(unsafe { &mut *theirs_at.add(i) });
        }
    }
}

/// The workers of a [`run_parts`] whose parts are not collected yet.
struct Pending<'w> {
    workers: &'w [Worker],
    collected: usize,
}

impl Pending<'_> {
    /// Waits for the next worker's part; whether it ran to the end.
    fn collect_next(&mut self) -> bool {
        let worker = &self.workers[self.collected];
        self.collected += 1;
        matches!(worker.collect(), Some(Job::Part(_)))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        while self.collected < self.workers.len() {
            self.collect_next();
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
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| match &mut job {
                    Job::Item(item) => {
                        item.plan
                            .run(&mut item.buffers, &item.input, &mut Team::alone())
                    }
                    Job::Part(call) => {
                        #[cfg(test)]
                        super::tile::OFF_IN_TESTS.with(|off| off.set(call.tiles_off));
                        // SAFETY: `run_parts` made the call from a live closure and part,
                        // and waits for this job to come back before either goes away.
                        unsafe { (call.call)(call.f, call.part) }
                    }
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

/// The threads one item's run may split its large steps across: the caller's and these
/// workers', each worker with a scratch buffer of its own (the size of the plan's) for
/// the convolutions whose groups it computes.
pub(crate) struct Team<'a> {
    pub(crate) workers: &'a [Worker],
    pub(crate) scratches: &'a mut [Vec<f32>],
}

impl Team<'_> {
    /// The caller's thread only.
    pub(crate) fn alone() -> Team<'static> {
        Team {
            workers: &[],
            scratches: &mut [],
        }
    }

    /// Threads a step may be split across, the caller's included.
    pub(crate) fn lanes(&self) -> usize {
        1 + self.workers.len().min(self.scratches.len())
    }
}

/// Locks a slot; a panic while it was held (there is none: runs happen unlocked) leaves
/// a value that is still whole.
fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn workers(count: usize) -> Vec<Worker> {
        (0..count)
            .map(|i| Worker::spawn(format!("parts-test-{i}")))
            .collect::<Result<_, _>>()
            .expect("spawns")
    }

    fn on_a_worker() -> bool {
        std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("parts-test-"))
    }

    #[test]
    fn every_part_runs_once_on_its_own_thread() {
        let workers = workers(3);
        for count in 0..=4 {
            let mut parts: Vec<(usize, Option<String>)> = (0..count).map(|i| (i, None)).collect();
            run_parts(&workers, &mut parts, &|part: &mut (
                usize,
                Option<String>,
            )| {
                part.1 = std::thread::current().name().map(str::to_owned);
            });
            let names: Vec<_> = parts.iter().map(|(_, name)| name.clone()).collect();
            for (index, name) in names.iter().enumerate() {
                let name = name.as_deref().expect("ran");
                assert_eq!(
                    name.starts_with("parts-test-"),
                    index > 0,
                    "part {index}: {name}"
                );
            }
            let mut unique = names.clone();
            unique.dedup();
            assert_eq!(unique.len(), names.len());
        }
    }

    /// How long handing parts out and collecting them takes (`--ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn hand_off_time() {
        for threads in [2, 4] {
            let workers = workers(threads - 1);
            let mut parts = vec![0u64; threads];
            let runs = 2000;
            let started = std::time::Instant::now();
            for _ in 0..runs {
                run_parts(&workers, &mut parts, &|part: &mut u64| *part += 1);
            }
            let per_run = started.elapsed() / runs;
            eprintln!("{threads} threads: {per_run:?} per split step of empty parts");
        }
    }

    /// A part that panics on its worker runs again on the caller's thread, and the worker
    /// is not used again: its later parts run on the caller's thread too.
    #[test]
    fn a_part_whose_worker_panics_runs_on_the_callers_thread() {
        let workers = workers(2);
        for _ in 0..2 {
            let mut parts = [0usize, 1, 2];
            let ran = AtomicUsize::new(0);
            run_parts(&workers, &mut parts, &|part: &mut usize| {
                if *part == 1 && on_a_worker() {
                    panic!("a kernel bug");
                }
                *part += 10;
                ran.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(parts, [10, 11, 12]);
            assert_eq!(ran.load(Ordering::Relaxed), 3);
        }
    }

    /// A panic in the caller's own part returns only once every worker is done with its
    /// part (the parts live on the caller's stack).
    #[test]
    fn a_panic_on_the_callers_thread_waits_for_the_workers() {
        let workers = workers(3);
        let finished = AtomicUsize::new(0);
        let mut parts = [0u64, 1, 2, 3];
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            run_parts(&workers, &mut parts, &|part: &mut u64| {
                if !on_a_worker() {
                    panic!("the caller's part fails");
                }
                std::thread::sleep(std::time::Duration::from_millis(20 * *part));
                *part += 100;
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }));
        assert!(result.is_err());
        assert_eq!(finished.load(Ordering::SeqCst), 3);
        assert_eq!(parts, [0, 101, 102, 103]);
    }
}
