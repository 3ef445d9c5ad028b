//! The CPU backend on the refiner-shaped test network (data/networks/refiner-tiny,
//! B x 6 x 240 x 320 -> B x 9) at batch 1, 5 and 16, on both executors (posed's planned
//! one, the default, and tract's plan): throughput in crops per second, the cost of
//! creating a session and of loading the model, and the heap allocations one warm run
//! makes (counted by this binary's global allocator and printed before the benches).

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use posed_engines::cpu::CpuExecutor;
use posed_engines::{Backend, CpuBackend, Model, ModelOptions, Network};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts them.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const BATCHES: [usize; 3] = [1, 5, 16];
const EXECUTORS: [CpuExecutor; 2] = [CpuExecutor::Planned, CpuExecutor::Tract];
const CROP_VALUES: usize = 6 * 240 * 320;

fn refiner() -> Network {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/networks/refiner-tiny.onnx");
    Network::open(&path).expect("data/networks/refiner-tiny.onnx")
}

fn model(executor: CpuExecutor) -> Box<dyn Model> {
    let options = ModelOptions {
        max_batch: 16,
        ..ModelOptions::default()
    };
    CpuBackend::new()
        .with_executor(executor)
        .load(refiner(), options)
        .expect("load")
}

fn crops(batch: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    (0..batch * CROP_VALUES)
        .map(|_| rng.random::<f32>())
        .collect()
}

/// Prints the allocations of one warm run per batch size and executor.
fn report_allocations(executor: CpuExecutor) {
    let model = model(executor);
    let mut session = model.new_session().expect("session");
    let mut outputs = session.allocate_outputs();
    for batch in BATCHES {
        let input = crops(batch);
        let shape = [batch, 6, 240, 320];
        for _ in 0..3 {
            session.run(&input, &shape, &mut outputs).expect("warm-up");
        }
        let (count, bytes) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            ALLOCATED_BYTES.load(Ordering::Relaxed),
        );
        session.run(&input, &shape, &mut outputs).expect("run");
        println!(
            "engines/cpu/refiner-tiny {} batch {batch:>2}: {} heap allocations ({:.1} MiB) in one warm run",
            executor.name(),
            ALLOCATIONS.load(Ordering::Relaxed) - count,
            (ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes) as f64 / (1024.0 * 1024.0)
        );
    }
}

fn run(c: &mut Criterion) {
    for executor in EXECUTORS {
        report_allocations(executor);
    }
    for executor in EXECUTORS {
        let model = model(executor);
        let mut session = model.new_session().expect("session");
        let mut outputs = session.allocate_outputs();
        let mut group = c.benchmark_group(format!("engines/cpu/refiner-tiny/{}", executor.name()));
        for batch in BATCHES {
            let input = crops(batch);
            let shape = [batch, 6, 240, 320];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new("run", batch), &batch, |b, _| {
                b.iter(|| session.run(&input, &shape, &mut outputs).expect("run"))
            });
        }
        group.finish();
    }
}

fn setup(c: &mut Criterion) {
    let options = ModelOptions {
        max_batch: 16,
        ..ModelOptions::default()
    };
    for executor in EXECUTORS {
        let model = model(executor);
        let name = executor.name();
        c.bench_function(
            &format!("engines/cpu/refiner-tiny/{name}/new_session"),
            |b| b.iter(|| model.new_session().expect("session")),
        );
        c.bench_function(&format!("engines/cpu/refiner-tiny/{name}/load_onnx"), |b| {
            b.iter(|| {
                CpuBackend::new()
                    .with_executor(executor)
                    .load(refiner(), options)
                    .expect("load")
            })
        });
    }
}

criterion_group!(benches, run, setup);
criterion_main!(benches);
