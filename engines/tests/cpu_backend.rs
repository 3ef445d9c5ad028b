//! The CPU backend, on both executors (posed's planned one and tract's plan), against
//! onnxruntime's outputs on the test networks (data/networks/golden, made by
//! tools/onnx_golden.py), and its behaviour on bad runs.

use std::path::{Path, PathBuf};

use posed_engines::cpu::CpuExecutor;
use posed_engines::npy::{read_npy, NpyData};
use posed_engines::{Backend, CpuBackend, Model, ModelOptions, Network, Outputs, Session};
use serde::Deserialize;

/// tract and onnxruntime sum in different orders; the networks are small and in [0, 1].
const MAX_ABS_DIFFERENCE: f32 = 1e-5;

fn networks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/networks")
}

#[derive(Deserialize)]
struct Manifest {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    network: String,
    input: TensorFile,
    outputs: Vec<TensorFile>,
}

#[derive(Deserialize)]
struct TensorFile {
    name: String,
    file: String,
    shape: Vec<usize>,
}

fn manifest() -> Manifest {
    let path = networks_dir().join("golden/manifest.json");
    let text = std::fs::read_to_string(&path).expect("golden manifest");
    serde_json::from_str(&text).expect("manifest parses")
}

fn session(network: &Path, max_batch: usize) -> Box<dyn Session> {
    session_on(network, max_batch, CpuExecutor::Planned)
}

/// A session on `executor`, which must be the one that runs the network (no fallback).
fn session_on(network: &Path, max_batch: usize, executor: CpuExecutor) -> Box<dyn Session> {
    let network = Network::open(network).expect("network");
    let options = ModelOptions {
        max_batch,
        max_image_hw: (240, 320),
    };
    let path = network.path().to_owned();
    let (model, _) = CpuBackend::new()
        .with_executor(executor)
        .load_with_outcome(network, options)
        .expect("load");
    assert_eq!(model.executor(), executor, "{}", path.display());
    model.new_session().expect("session")
}

fn read_input(file: &str) -> (Vec<usize>, Vec<f32>) {
    let path = networks_dir().join("golden").join(file);
    read_npy(&path)
        .expect("input")
        .into_f32(&path)
        .expect("f32 input")
}

#[test]
fn matches_onnxruntime_on_every_golden_case() {
    let cases = manifest().cases;
    assert_eq!(cases.len(), 8, "every network at every golden batch size");
    for (case, executor) in cases
        .iter()
        .flat_map(|case| [CpuExecutor::Planned, CpuExecutor::Tract].map(|e| (case, e)))
    {
        let mut session = session_on(&networks_dir().join(&case.network), 4, executor);
        let (shape, input) = read_input(&case.input.file);
        assert_eq!(shape, case.input.shape);
        let mut outputs = session.allocate_outputs();
        session
            .run(&input, &shape, &mut outputs)
            .unwrap_or_else(|e| panic!("{}: {e}", case.network));
        let mut compared = 0;
        for golden in &case.outputs {
            // Outputs outside the contract (torchvision's masks) are not produced.
            let Some(ours) = outputs.get(&golden.name) else {
                assert_eq!(golden.name, "masks", "{}", case.network);
                continue;
            };
            assert_eq!(
                ours.shape().dims(),
                golden.shape.as_slice(),
                "{} {}",
                case.network,
                golden.name
            );
            let path = networks_dir().join("golden").join(&golden.file);
            match read_npy(&path).expect("golden output").data {
                NpyData::F32(expected) => {
                    let got = ours.f32s().expect("float output");
                    let worst = got
                        .iter()
                        .zip(&expected)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    assert!(
                        worst <= MAX_ABS_DIFFERENCE,
                        "{} {} on {}: max |posed - onnxruntime| = {worst:e}",
                        case.network,
                        golden.name,
                        executor.name()
                    );
                }
                NpyData::I64(expected) => {
                    assert_eq!(
                        ours.i64s().expect("int output"),
                        expected.as_slice(),
                        "{}",
                        case.network
                    );
                }
            }
            compared += 1;
        }
        assert_eq!(
            compared,
            outputs.tensors().len(),
            "{}: every contract output compared",
            case.network
        );
    }
}

#[test]
fn identity_network_returns_the_identity_update_exactly() {
    let mut session = session(&networks_dir().join("refiner-identity.onnx"), 2);
    let (shape, input) = read_input("refiner-tiny.b2.input.npy");
    let mut outputs = session.allocate_outputs();
    session.run(&input, &shape, &mut outputs).expect("run");
    let update = outputs
        .get("pose_update")
        .expect("pose_update")
        .f32s()
        .expect("f32");
    let identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    assert_eq!(update, [identity, identity].concat().as_slice());
}

#[test]
fn batch_rows_are_independent_and_sessions_reusable() {
    let mut session = session(&networks_dir().join("refiner-tiny.onnx"), 4);
    let (shape2, input2) = read_input("refiner-tiny.b2.input.npy");
    let mut outputs = session.allocate_outputs();
    session
        .run(&input2, &shape2, &mut outputs)
        .expect("batch 2");
    let both: Vec<f32> = outputs.tensors()[0].f32s().expect("f32").to_vec();
    // The second image alone gives the second row (up to summation order).
    let per_image = input2.len() / 2;
    for _ in 0..2 {
        session
            .run(&input2[per_image..], &[1, 6, 240, 320], &mut outputs)
            .expect("batch 1");
        let second = outputs.tensors()[0].f32s().expect("f32");
        assert_eq!(outputs.tensors()[0].shape().dims(), &[1, 9]);
        for (a, b) in second.iter().zip(&both[9..]) {
            assert!((a - b).abs() <= MAX_ABS_DIFFERENCE, "{a} vs {b}");
        }
    }
}

#[test]
fn bad_runs_are_errors_not_panics() {
    let mut session = session(&networks_dir().join("refiner-tiny.onnx"), 1);
    let mut outputs = session.allocate_outputs();
    let (shape, input) = read_input("refiner-tiny.b2.input.npy");
    let err = session
        .run(&input, &shape, &mut outputs)
        .expect_err("batch 2 > max 1");
    assert!(err.to_string().contains("max_batch"), "{err}");
    let err = session
        .run(&input[..100], &[1, 6, 240, 320], &mut outputs)
        .expect_err("short input");
    assert!(err.to_string().contains("input length"), "{err}");
    let err = session
        .run(&input, &[2, 3, 240, 640], &mut outputs)
        .expect_err("wrong shape");
    assert!(err.to_string().contains("[batch, 6, 240, 320]"), "{err}");
    // Outputs from another session with smaller buffers are refused, not overrun.
    let mut small = Outputs::new(vec![posed_engines::OutputTensor::with_capacity(
        "pose_update",
        posed_engines::DType::F32,
        4,
    )]);
    let err = session
        .run(&input[..input.len() / 2], &[1, 6, 240, 320], &mut small)
        .expect_err("small");
    // An output error names the network's file, so that a log line says which one.
    assert!(
        matches!(err, posed_engines::EngineError::NetworkOutput { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("refiner-tiny.onnx") && message.contains("output `pose_update`"),
        "{message}"
    );
}

#[test]
fn torchvision_layout_runs_one_image() {
    let mut session = session(&networks_dir().join("detector-torchvision.onnx"), 1);
    let (shape, input) = read_input("detector-torchvision.b1.input.npy");
    let mut outputs = session.allocate_outputs();
    session.run(&input, &shape, &mut outputs).expect("run");
    let boxes = outputs.get("boxes").expect("boxes");
    assert_eq!(boxes.shape().dims(), &[5, 4]);
    let labels = outputs.get("labels").expect("labels").i64s().expect("i64");
    assert!(labels.iter().all(|&l| (1..=21).contains(&l)), "{labels:?}");
}

#[test]
fn engine_cache_round_trip_and_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = posed_engines::EngineCache::open(dir.path()).expect("cache");
    let backend = CpuBackend::with_cache(cache.clone());
    let path = networks_dir().join("refiner-tiny.onnx");
    let options = ModelOptions {
        max_batch: 2,
        max_image_hw: (240, 320),
    };
    let (shape, input) = read_input("refiner-tiny.b2.input.npy");
    let golden_path = networks_dir().join("golden/refiner-tiny.b2.pose_update.npy");
    let NpyData::F32(golden) = read_npy(&golden_path).expect("golden").data else {
        panic!("golden is float32");
    };
    let run = |outcome_expected: posed_engines::CacheOutcome| {
        let network = Network::open(&path).expect("network");
        let (model, outcome) = backend.load_with_outcome(network, options).expect("load");
        assert_eq!(outcome, outcome_expected);
        // The graph read back from the cache runs on the planned executor too.
        assert_eq!(
            model.executor(),
            CpuExecutor::Planned,
            "{:?}",
            model.planned_refusal()
        );
        let mut session = posed_engines::Model::new_session(&model).expect("session");
        let mut outputs = session.allocate_outputs();
        session.run(&input, &shape, &mut outputs).expect("run");
        let got = outputs.tensors()[0].f32s().expect("f32");
        for (a, b) in got.iter().zip(&golden) {
            assert!((a - b).abs() <= MAX_ABS_DIFFERENCE, "{a} vs {b}");
        }
    };
    run(posed_engines::CacheOutcome::Built);
    run(posed_engines::CacheOutcome::Hit);

    // A damaged entry is detected, set aside and rebuilt; the model still matches.
    let network = Network::open(&path).expect("network");
    let entry = cache.entry_path(&CpuBackend::engine_key(&network, &options));
    let mut bytes = std::fs::read(&entry).expect("entry");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, &bytes).expect("damage");
    run(posed_engines::CacheOutcome::Rebuilt);
    run(posed_engines::CacheOutcome::Hit);

    // An entry that verifies but that tract cannot read (random bytes stored with their
    // own sha256, as a corrupt disk or a hand-made entry may hold) is reported by
    // `list`, then set aside and rebuilt by the next load, not kept and reparsed forever.
    let key = CpuBackend::engine_key(&network, &options);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..5000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    for payload in [&b"not an NNEF archive"[..], &random] {
        std::fs::remove_file(entry.with_extension("engine.rejected")).expect("old rejected");
        cache.store(&key, payload).expect("store");
        let listed = cache.list().expect("list");
        let problem = listed[0].problem.as_deref().unwrap_or_default();
        assert!(problem.contains("not a tract NNEF archive"), "{problem}");
        run(posed_engines::CacheOutcome::Rebuilt);
        assert!(entry.with_extension("engine.rejected").exists());
        run(posed_engines::CacheOutcome::Hit);
        let listed = cache.list().expect("list");
        assert_eq!(listed[0].problem, None, "{}", listed[0].path.display());
    }

    // The CPU engine is the single-item graph: one entry serves every max_batch.
    let other = ModelOptions {
        max_batch: 4,
        ..options
    };
    assert_eq!(
        CpuBackend::engine_key(&network, &options).digest(),
        CpuBackend::engine_key(&network, &other).digest()
    );
    // A detector's largest image is part of its key.
    let detector = Network::open(&networks_dir().join("detector-tiny.onnx")).expect("detector");
    let larger = ModelOptions {
        max_image_hw: (480, 640),
        ..options
    };
    assert_ne!(
        CpuBackend::engine_key(&detector, &options).digest(),
        CpuBackend::engine_key(&detector, &larger).digest()
    );
}

#[test]
fn sessions_planning_new_image_sizes_at_once_get_the_same_outputs() {
    // Four sessions of one detector model, two image sizes it has not planned (each
    // session plans on first sight, concurrently): every run of a size gives the boxes a
    // later session gets from the model's kept plan.
    let network = Network::open(&networks_dir().join("detector-tiny.onnx")).expect("network");
    let options = ModelOptions {
        max_batch: 1,
        max_image_hw: (240, 320),
    };
    let model = CpuBackend::new().load(network, options).expect("load");
    let sizes = [[1, 3, 120, 160], [1, 3, 96, 128]];
    let boxes_of = |session: &mut Box<dyn Session>, dims: &[usize; 4]| -> Vec<f32> {
        let input: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|i| ((i * 31) % 97) as f32 / 97.0)
            .collect();
        let mut outputs = session.allocate_outputs();
        session.run(&input, dims, &mut outputs).expect("run");
        let boxes = outputs.get("boxes").expect("boxes");
        boxes.f32s().expect("f32").to_vec()
    };
    let concurrent: Vec<(usize, Vec<f32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let model = &model;
                scope.spawn(move || {
                    let mut session = model.new_session().expect("session");
                    (i % 2, boxes_of(&mut session, &sizes[i % 2]))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut later = model.new_session().expect("session");
    for (size, boxes) in &concurrent {
        assert_eq!(
            boxes,
            &boxes_of(&mut later, &sizes[*size]),
            "{:?}",
            sizes[*size]
        );
    }
}

#[test]
fn worker_threads_give_the_same_bits_as_one_thread() {
    // Batches smaller than, equal to and larger than the thread count (waves of 3 with a
    // remainder), on a refiner and on a batched detector (detection counts checked across
    // the items of a batch).
    let cases: [(&str, [usize; 3]); 2] = [
        ("refiner-tiny.onnx", [6, 240, 320]),
        ("detector-tiny.onnx", [3, 240, 320]),
    ];
    for (name, item) in cases {
        let open = |threads: usize| {
            let options = ModelOptions {
                max_batch: 8,
                max_image_hw: (240, 320),
            };
            let (model, _) = CpuBackend::new()
                .with_threads(threads)
                .load_with_outcome(
                    Network::open(&networks_dir().join(name)).expect("network"),
                    options,
                )
                .expect("load");
            model.new_session().expect("session")
        };
        let (mut one, mut three) = (open(1), open(3));
        let (mut out_one, mut out_three) = (one.allocate_outputs(), three.allocate_outputs());
        for batch in [1, 2, 3, 4, 7] {
            let shape = [batch, item[0], item[1], item[2]];
            let input: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
                .collect();
            one.run(&input, &shape, &mut out_one).expect("one thread");
            three
                .run(&input, &shape, &mut out_three)
                .expect("three threads");
            for (a, b) in out_one.tensors().iter().zip(out_three.tensors()) {
                assert_eq!(a.shape(), b.shape(), "{name} batch {batch}");
                let bits = |t: &posed_engines::OutputTensor| -> Vec<u64> {
                    match (t.f32s(), t.i64s()) {
                        (Some(v), _) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
                        (_, Some(v)) => v.iter().map(|&x| x as u64).collect(),
                        _ => Vec::new(),
                    }
                };
                assert!(
                    !bits(a).is_empty(),
                    "{name} batch {batch}: an output with values"
                );
                assert_eq!(bits(a), bits(b), "{name} batch {batch}");
            }
        }
    }
}
