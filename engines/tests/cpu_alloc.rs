//! A warm run of the CPU backend's planned executor allocates nothing, on every test
//! network and batch size, on one thread or with worker threads (counted by this
//! binary's global allocator, over all threads).

use std::path::PathBuf;

use posed_engines::cpu::CpuExecutor;
use posed_engines::{CpuBackend, Model, ModelOptions, Network};
use posed_kernels::alloc_count::{self, allocations, CountingAllocator};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn network(name: &str) -> Network {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/networks")
        .join(name);
    Network::open(&path).expect("test network")
}

/// Input values in [0, 1] that differ from run to run.
fn fill(input: &mut [f32], seed: usize) {
    for (i, v) in input.iter_mut().enumerate() {
        *v = ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0;
    }
}

// A binary of its own without libtest (Cargo.toml: `harness = false`), see
// `run_test_without_harness`.
fn main() {
    alloc_count::run_test_without_harness(
        "warm_runs_allocate_nothing_on_every_test_network",
        warm_runs_allocate_nothing_on_every_test_network,
    );
}

fn warm_runs_allocate_nothing_on_every_test_network() {
    for threads in [1, 3] {
        warm_runs_allocate_nothing_on(threads);
    }
}

fn warm_runs_allocate_nothing_on(threads: usize) {
    let cases: [(&str, &[&[usize]]); 4] = [
        (
            "refiner-tiny.onnx",
            &[&[1, 6, 240, 320], &[3, 6, 240, 320], &[5, 6, 240, 320]],
        ),
        ("coarse-tiny.onnx", &[&[2, 6, 240, 320]]),
        (
            "detector-tiny.onnx",
            &[&[1, 3, 240, 320], &[2, 3, 120, 160]],
        ),
        ("detector-torchvision.onnx", &[&[3, 240, 320]]),
    ];
    for (name, shapes) in cases {
        let options = ModelOptions {
            max_batch: 16,
            max_image_hw: (240, 320),
        };
        let (model, _) = CpuBackend::new()
            .with_threads(threads)
            .load_with_outcome(network(name), options)
            .expect("load");
        assert_eq!(model.executor(), CpuExecutor::Planned, "{name}");
        let mut session = model.new_session().expect("session");
        let mut outputs = session.allocate_outputs();
        for &shape in shapes {
            let mut input = vec![0.0; shape.iter().product()];
            // Warm-up: the first run of a new input size plans it.
            fill(&mut input, 0);
            session.run(&input, shape, &mut outputs).expect("warm-up");
            let mut counted = 0;
            for seed in 1..4 {
                fill(&mut input, seed);
                let before = allocations();
                session.run(&input, shape, &mut outputs).expect("run");
                counted += allocations() - before;
            }
            assert_eq!(
                counted, 0,
                "{name} {shape:?} on {threads} threads: allocations in 3 warm runs"
            );
        }
    }
}
