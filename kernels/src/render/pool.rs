//! A fixed set of worker threads that run numbered tasks of one job at a time.
//!
//! Why not rayon: a job handed to rayon from outside its pool goes through a global
//! injector queue that allocates a block every few dozen jobs, and the renderer promises
//! that a warmed-up frame allocates nothing. This pool allocates only when it is created:
//! a job is a borrowed closure, tasks are claimed with an atomic counter, and the threads
//! sleep on a futex-backed `Mutex` / `Condvar` between jobs.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A task body: called once per task index, from any thread of the pool.
type Task<'a> = dyn Fn(usize) + Sync + 'a;

/// The job being run, with its lifetime erased (see the SAFETY note in [`WorkerPool::run`]).
#[derive(Clone, Copy)]
struct JobRef(*const Task<'static>);

// SAFETY: a `JobRef` points at a `Sync` closure, so calling it from several threads at once
// is allowed; `run` keeps the closure alive until every worker is done with it.
unsafe impl Send for JobRef {}

struct State {
    generation: u64,
    job: Option<JobRef>,
    task_count: usize,
    busy_workers: usize,
    panicked: bool,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    work_ready: Condvar,
    work_done: Condvar,
    next_task: AtomicUsize,
    /// Mirrors of `State::generation` and `State::busy_workers`, written under the lock,
    /// read without it while spinning.
    published_generation: AtomicU64,
    busy_workers: AtomicUsize,
}

/// How long a thread spins on the atomics before it sleeps on a condition variable.
/// Waking a sleeping thread costs tens of microseconds on a Jetson and far more on some
/// virtual machines; a frame runs two jobs back to back, and frames follow each other, so
/// a short spin keeps the workers awake exactly when the next job comes.
const SPIN: Duration = Duration::from_micros(200);

/// Spins until `done()` or until [`SPIN`] has passed; returns `done()`.
fn spin_until(done: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if started.elapsed() >= SPIN {
            return done();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic inside a task is caught before the lock is taken, so poisoning can only
        // come from a bug in this file; the state stays consistent either way.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims and runs tasks until none are left. Returns whether one of them panicked.
    fn run_tasks(
        &self,
        job: &Task<'_>,
        task_count: usize,
    ) -> Option<Box<dyn std::any::Any + Send>> {
        loop {
            let task = self.next_task.fetch_add(1, Ordering::Relaxed);
            if task >= task_count {
                return None;
            }
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(task))) {
                // Leave the remaining tasks to the others; report the panic to `run`.
                self.next_task.store(task_count, Ordering::Relaxed);
                return Some(payload);
            }
        }
    }
}

/// Worker threads plus the calling thread, running the tasks of one job at a time.
pub struct WorkerPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// A pool that runs jobs on `threads` threads in all: the caller of [`WorkerPool::run`]
    /// and `threads - 1` workers (so `threads <= 1` runs everything on the caller).
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                task_count: 0,
                busy_workers: 0,
                panicked: false,
                shutdown: false,
            }),
            work_ready: Condvar::new(),
            work_done: Condvar::new(),
            next_task: AtomicUsize::new(0),
            published_generation: AtomicU64::new(0),
            busy_workers: AtomicUsize::new(0),
        });
        let workers = threads.saturating_sub(1);
        let mut handles = Vec::with_capacity(workers);
        for index in 0..workers {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("posed-render-{index}"))
                .spawn(move || worker_loop(&shared));
            // A pool with fewer workers is still correct, only slower.
            if let Ok(handle) = spawned {
                handles.push(handle);
            }
        }
        Self {
            shared,
            threads: handles,
        }
    }

    /// Threads that run tasks, the caller included.
    pub fn thread_count(&self) -> usize {
        self.threads.len() + 1
    }

    /// Runs `job(task)` for every task in `0..task_count`, spread over the pool, and
    /// returns when all have finished. A panic in a task is re-raised here after the
    /// others have stopped.
    pub fn run(&self, task_count: usize, job: &(dyn Fn(usize) + Sync)) {
        if self.threads.is_empty() || task_count <= 1 {
            (0..task_count).for_each(job);
            return;
        }
        // SAFETY: only the lifetime is changed. The erased reference is stored in the
        // shared state, read by workers while `busy_workers > 0`, and cleared below before
        // this function returns; we wait until every worker has decremented `busy_workers`,
        // so no worker touches `job` after `run` returns and the borrow outlives every use.
        let erased: *const Task<'static> = unsafe { std::mem::transmute(job as *const Task<'_>) };
        {
            let mut state = self.shared.lock();
            self.shared.next_task.store(0, Ordering::Relaxed);
            state.job = Some(JobRef(erased));
            state.task_count = task_count;
            state.busy_workers = self.threads.len();
            state.panicked = false;
            state.generation = state.generation.wrapping_add(1);
            self.shared
                .busy_workers
                .store(self.threads.len(), Ordering::Release);
            self.shared
                .published_generation
                .store(state.generation, Ordering::Release);
        }
        self.shared.work_ready.notify_all();
        let own_panic = self.shared.run_tasks(job, task_count);
        spin_until(|| self.shared.busy_workers.load(Ordering::Acquire) == 0);
        let mut state = self.shared.lock();
        while state.busy_workers > 0 {
            state = self
                .shared
                .work_done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.job = None;
        let worker_panicked = state.panicked;
        drop(state);
        if let Some(payload) = own_panic {
            resume_unwind(payload);
        }
        if worker_panicked {
            // The worker's payload stayed on its thread; raise a plain one here.
            panic!("a render task panicked on a worker thread");
        }
    }
}

fn worker_loop(shared: &Shared) {
    let mut seen_generation = 0_u64;
    loop {
        spin_until(|| shared.published_generation.load(Ordering::Acquire) != seen_generation);
        let (job, task_count) = {
            let mut state = shared.lock();
            while state.generation == seen_generation && !state.shutdown {
                state = shared
                    .work_ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.shutdown {
                return;
            }
            seen_generation = state.generation;
            match state.job {
                Some(job) => (job, state.task_count),
                None => continue,
            }
        };
        // SAFETY: `run` set this pointer from a live `&dyn Fn` and does not return (so the
        // closure stays alive) until this worker decrements `busy_workers` below.
        let job_ref: &Task<'_> = unsafe { &*job.0 };
        let panicked = shared.run_tasks(job_ref, task_count).is_some();
        let mut state = shared.lock();
        state.panicked |= panicked;
        state.busy_workers -= 1;
        shared.busy_workers.fetch_sub(1, Ordering::Release);
        if state.busy_workers == 0 {
            shared.work_done.notify_all();
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work_ready.notify_all();
        for handle in self.threads.drain(..) {
            // A worker that panicked outside a task has nothing left to report.
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("threads", &self.thread_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        let pool = WorkerPool::new(3);
        for round in 0..50 {
            let counts: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
            pool.run(counts.len(), &|task| {
                counts[task].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
        }
    }

    #[test]
    fn single_thread_pool_runs_on_the_caller() {
        let pool = WorkerPool::new(1);
        assert_eq!(pool.thread_count(), 1);
        let sum = AtomicUsize::new(0);
        pool.run(10, &|task| {
            sum.fetch_add(task, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_still_works() {
        let pool = WorkerPool::new(2);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|task| assert!(task != 5, "task 5 fails"));
        }));
        assert!(result.is_err());
        let sum = AtomicUsize::new(0);
        pool.run(4, &|task| {
            sum.fetch_add(task, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 6);
    }
}
