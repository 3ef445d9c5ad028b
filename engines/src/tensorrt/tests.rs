//! Tests of the TensorRT backend that need no TensorRT and no GPU: cache keys, profiles,
//! buffer sizes, data types, the engine-I/O check (against mock engines) and the
//! unavailable-backend errors.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::plan::{MIN_IMAGE_SIDE, TENSOR_FORMAT_LINEAR};
use super::*;
use crate::contract::DetectorLayout;
use crate::tensor::DType;

fn refiner() -> Contract {
    Contract::for_role(Role::Refiner, DetectorLayout::Batched)
}

fn detector() -> Contract {
    Contract::for_role(Role::Detector, DetectorLayout::Batched)
}

fn torchvision() -> Contract {
    Contract::for_role(Role::Detector, DetectorLayout::Torchvision)
}

fn options(max_batch: usize, max_image_hw: (usize, usize)) -> ModelOptions {
    ModelOptions {
        max_batch,
        max_image_hw,
    }
}

const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn base_inputs(contract: Contract) -> EngineKeyInputs<'static> {
    EngineKeyInputs {
        onnx_sha256: SHA,
        contract,
        options: options(16, (480, 640)),
        precision: Precision::Fp16,
        dla_core: None,
        tensorrt_version: "10.3.0",
        device_name: "Orin",
        compute_capability: (8, 7),
    }
}

#[test]
fn same_inputs_give_the_same_key() {
    let a = base_inputs(detector()).key();
    let b = base_inputs(detector()).key();
    assert_eq!(a, b);
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.backend, "tensorrt");
    assert_eq!(a.builder_version, SHIM_VERSION);
    assert_eq!(a.compute_capability, "8.7");
    assert_eq!(a.batch_profile, (1, 8, 16));
    assert_eq!(a.max_image_hw, (480, 640));
    assert_eq!(a.role, "detector");
}

#[test]
fn every_key_input_changes_the_digest() {
    let base = base_inputs(detector());
    let variants: Vec<(&str, EngineKeyInputs<'static>)> = vec![
        ("base", base),
        (
            "onnx sha256",
            EngineKeyInputs {
                onnx_sha256: "1111111111111111111111111111111111111111111111111111111111111111",
                ..base
            },
        ),
        (
            "role",
            EngineKeyInputs {
                contract: refiner(),
                ..base
            },
        ),
        (
            "batch profile",
            EngineKeyInputs {
                options: options(8, (480, 640)),
                ..base
            },
        ),
        (
            "image size",
            EngineKeyInputs {
                options: options(16, (720, 1280)),
                ..base
            },
        ),
        (
            "precision",
            EngineKeyInputs {
                precision: Precision::Fp32,
                ..base
            },
        ),
        (
            "int8",
            EngineKeyInputs {
                precision: Precision::Int8,
                ..base
            },
        ),
        (
            "DLA core",
            EngineKeyInputs {
                dla_core: Some(0),
                ..base
            },
        ),
        (
            "other DLA core",
            EngineKeyInputs {
                dla_core: Some(1),
                ..base
            },
        ),
        (
            "TensorRT version",
            EngineKeyInputs {
                tensorrt_version: "10.3.1",
                ..base
            },
        ),
        (
            "TensorRT 8.6",
            EngineKeyInputs {
                tensorrt_version: "8.6.2",
                ..base
            },
        ),
        (
            "GPU name",
            EngineKeyInputs {
                device_name: "NVIDIA H200",
                ..base
            },
        ),
        (
            "compute capability",
            EngineKeyInputs {
                compute_capability: (8, 6),
                ..base
            },
        ),
    ];
    let mut seen = HashSet::new();
    for (what, inputs) in &variants {
        assert!(
            seen.insert(inputs.key().digest()),
            "changing the {what} did not change the digest"
        );
    }
    // The shim's version is the key's builder_version: a new shim means new engines.
    let mut key = base.key();
    let digest = key.digest();
    key.builder_version += 1;
    assert_ne!(key.digest(), digest);
}

#[test]
fn image_size_is_only_part_of_a_detector_key() {
    let refiner_a = base_inputs(refiner());
    let refiner_b = EngineKeyInputs {
        options: options(16, (720, 1280)),
        ..refiner_a
    };
    assert_eq!(refiner_a.key(), refiner_b.key());
    assert_eq!(refiner_a.key().max_image_hw, (0, 0));
    // A torchvision detector takes one image: max_batch does not matter, the image does.
    let tv_a = base_inputs(torchvision());
    let tv_b = EngineKeyInputs {
        options: options(4, (480, 640)),
        ..tv_a
    };
    assert_eq!(tv_a.key(), tv_b.key());
    assert_eq!(tv_a.key().batch_profile, (1, 1, 1));
}

fn networks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/networks")
}

#[test]
fn engine_key_of_a_network_uses_its_digest_and_contract() {
    let network = Network::open(&networks_dir().join("refiner-tiny.onnx")).expect("test network");
    let opts = options(4, (480, 640));
    let key = engine_key(
        &network,
        &opts,
        Precision::Fp16,
        None,
        "10.3.0",
        "Orin",
        (8, 7),
    );
    assert_eq!(key.onnx_sha256, network.sha256_hex());
    assert_eq!(key.role, "refiner");
    assert_eq!(key.batch_profile, (1, 2, 4));
    let again = engine_key(
        &network,
        &opts,
        Precision::Fp16,
        None,
        "10.3.0",
        "Orin",
        (8, 7),
    );
    assert_eq!(key.digest(), again.digest());
}

#[test]
fn profiles_follow_the_contract() {
    let p = optimisation_profile(&refiner(), &options(16, (480, 640)));
    assert_eq!(p.min, [1, 6, 240, 320]);
    assert_eq!(p.opt, [8, 6, 240, 320]);
    assert_eq!(p.max, [16, 6, 240, 320]);
    // Half the largest batch, rounded up.
    assert_eq!(
        optimisation_profile(&refiner(), &options(5, (480, 640))).opt[0],
        3
    );
    assert_eq!(
        optimisation_profile(&refiner(), &options(1, (480, 640))).opt[0],
        1
    );
    assert_eq!(
        batch_profile(&refiner(), &options(64, (480, 640))),
        (1, 32, 64)
    );

    let p = optimisation_profile(&detector(), &options(4, (480, 640)));
    assert_eq!(p.min, [1, 3, MIN_IMAGE_SIDE, MIN_IMAGE_SIDE]);
    assert_eq!(p.opt, [2, 3, 480, 640]);
    assert_eq!(p.max, [4, 3, 480, 640]);

    let p = optimisation_profile(&torchvision(), &options(4, (720, 1280)));
    assert_eq!(p.min, [3, 32, 32]);
    assert_eq!(p.opt, [3, 720, 1280]);
    assert_eq!(p.max, [3, 720, 1280]);

    // A largest image smaller than the usual minimum pins the minimum to it.
    let p = optimisation_profile(&detector(), &options(1, (16, 24)));
    assert_eq!(p.min, [1, 3, 16, 24]);
    assert_eq!(p.max, [1, 3, 16, 24]);
}

#[test]
fn profiles_admit_exactly_their_range() {
    let p = optimisation_profile(&detector(), &options(4, (480, 640)));
    assert!(p.admits(&[1, 3, 32, 32]));
    assert!(p.admits(&[4, 3, 480, 640]));
    assert!(p.admits(&[2, 3, 240, 320]));
    assert!(!p.admits(&[5, 3, 240, 320]), "batch above the profile");
    assert!(!p.admits(&[1, 3, 16, 320]), "image below 32 pixels");
    assert!(!p.admits(&[1, 3, 481, 320]), "image above the profile");
    assert!(!p.admits(&[1, 1, 240, 320]), "wrong channels");
    assert!(!p.admits(&[3, 240, 320]), "wrong rank");
}

#[test]
fn buffers_are_sized_for_the_largest_run() {
    let plan = binding_plan(&refiner(), &options(16, (480, 640)), 1);
    let sizes: Vec<(&str, bool, usize)> = plan
        .iter()
        .map(|b| (b.name, b.is_input, b.max_elements))
        .collect();
    assert_eq!(
        sizes,
        [
            ("images", true, 16 * 6 * 240 * 320),
            ("pose_update", false, 16 * 9)
        ]
    );
    assert_eq!(plan[0].device_bytes(Transfer::F32), 16 * 6 * 240 * 320 * 4);
    assert_eq!(plan[1].host_bytes(), 16 * 9 * 4);

    let plan = binding_plan(&detector(), &options(2, (480, 640)), 8);
    let sizes: Vec<(&str, usize)> = plan.iter().map(|b| (b.name, b.max_elements)).collect();
    assert_eq!(
        sizes,
        [
            ("images", 2 * 3 * 480 * 640),
            ("boxes", 2 * 8 * 4),
            ("scores", 2 * 8),
            ("labels", 2 * 8)
        ]
    );
    // int64 labels: 8 bytes on the host; on TensorRT 8.6 the engine gives int32.
    assert_eq!(plan[3].dtype, DType::I64);
    assert_eq!(plan[3].host_bytes(), 2 * 8 * 8);
    assert_eq!(plan[3].device_bytes(Transfer::I64), 2 * 8 * 8);
    assert_eq!(plan[3].device_bytes(Transfer::I32ToI64), 2 * 8 * 4);

    // torchvision: one image whatever max_batch says.
    let plan = binding_plan(&torchvision(), &options(16, (480, 640)), 100);
    let sizes: Vec<(&str, usize)> = plan.iter().map(|b| (b.name, b.max_elements)).collect();
    assert_eq!(
        sizes,
        [
            ("images", 3 * 480 * 640),
            ("boxes", 400),
            ("scores", 100),
            ("labels", 100)
        ]
    );

    // The output buffers agree with what sessions hand to callers.
    let opts = options(3, (240, 320));
    for contract in [refiner(), detector(), torchvision()] {
        let outputs = crate::backend::allocate_outputs(&contract, &opts, 7);
        let plan = binding_plan(&contract, &opts, 7);
        for (buffer, binding) in outputs.tensors().iter().zip(&plan[1..]) {
            assert_eq!(buffer.name(), binding.name);
            assert_eq!(buffer.capacity(), binding.max_elements);
        }
    }
}

#[test]
fn tensorrt_data_types_map_by_code() {
    let expected = [
        (0, TrtDataType::Float, Some(4)),
        (1, TrtDataType::Half, Some(2)),
        (2, TrtDataType::Int8, Some(1)),
        (3, TrtDataType::Int32, Some(4)),
        (4, TrtDataType::Bool, Some(1)),
        (5, TrtDataType::Uint8, Some(1)),
        (6, TrtDataType::Fp8, Some(1)),
        (7, TrtDataType::Bf16, Some(2)),
        (8, TrtDataType::Int64, Some(8)),
        (9, TrtDataType::Int4, None),
        (10, TrtDataType::Fp4, None),
        (11, TrtDataType::E8m0, Some(1)),
    ];
    for (code, dtype, size) in expected {
        assert_eq!(TrtDataType::from_code(code), dtype);
        assert_eq!(dtype.code(), code);
        assert_eq!(dtype.size_bytes(), size, "{dtype}");
    }
    assert_eq!(TrtDataType::from_code(42), TrtDataType::Unknown(42));
    assert_eq!(TrtDataType::Unknown(42).code(), 42);
    assert_eq!(
        TrtDataType::Unknown(42).to_string(),
        "TensorRT data type 42"
    );
    assert_eq!(TrtDataType::Half.to_string(), "float16");

    assert_eq!(
        TrtDataType::Float.transfer_to(DType::F32),
        Some(Transfer::F32)
    );
    assert_eq!(
        TrtDataType::Int64.transfer_to(DType::I64),
        Some(Transfer::I64)
    );
    assert_eq!(
        TrtDataType::Int32.transfer_to(DType::I64),
        Some(Transfer::I32ToI64)
    );
    assert_eq!(TrtDataType::Half.transfer_to(DType::F32), None);
    assert_eq!(TrtDataType::Int32.transfer_to(DType::F32), None);
    assert_eq!(TrtDataType::Float.transfer_to(DType::I64), None);
}

fn tensor(name: &str, is_input: bool, dtype: TrtDataType, dims: &[i64]) -> EngineTensor {
    EngineTensor {
        name: name.to_owned(),
        is_input,
        dtype,
        format: TENSOR_FORMAT_LINEAR,
        dims: dims.to_vec(),
    }
}

fn refiner_engine() -> Vec<EngineTensor> {
    vec![
        tensor("images", true, TrtDataType::Float, &[-1, 6, 240, 320]),
        tensor("pose_update", false, TrtDataType::Float, &[-1, 9]),
    ]
}

fn io_error(contract: &Contract, tensors: &[EngineTensor]) -> String {
    check_engine_io(contract, Path::new("net.onnx"), tensors)
        .expect_err("mismatch")
        .to_string()
}

#[test]
fn a_matching_engine_passes_the_io_check() {
    let io =
        check_engine_io(&refiner(), Path::new("refiner.onnx"), &refiner_engine()).expect("matches");
    assert_eq!(io.outputs, [Transfer::F32]);

    // TensorRT 8.6 gives int32 labels, TensorRT 10 int64; outputs in any order.
    for (labels, transfer) in [
        (TrtDataType::Int32, Transfer::I32ToI64),
        (TrtDataType::Int64, Transfer::I64),
    ] {
        let engine = vec![
            tensor("images", true, TrtDataType::Float, &[-1, 3, -1, -1]),
            tensor("labels", false, labels, &[-1, 8]),
            tensor("boxes", false, TrtDataType::Float, &[-1, 8, 4]),
            tensor("scores", false, TrtDataType::Float, &[-1, 8]),
        ];
        let io =
            check_engine_io(&detector(), Path::new("detector.onnx"), &engine).expect("matches");
        assert_eq!(io.outputs, [Transfer::F32, Transfer::F32, transfer]);
    }

    // Data-dependent detections: -1 everywhere but the box size.
    let engine = vec![
        tensor("images", true, TrtDataType::Float, &[3, -1, -1]),
        tensor("boxes", false, TrtDataType::Float, &[-1, 4]),
        tensor("scores", false, TrtDataType::Float, &[-1]),
        tensor("labels", false, TrtDataType::Int64, &[-1]),
    ];
    assert!(check_engine_io(&torchvision(), Path::new("tv.onnx"), &engine).is_ok());
}

#[test]
fn engine_io_mismatches_name_the_tensor() {
    let mut engine = refiner_engine();
    engine[0].dtype = TrtDataType::Half;
    let err = io_error(&refiner(), &engine);
    assert!(
        err.contains("net.onnx") && err.contains("`images`") && err.contains("float16"),
        "{err}"
    );
    assert!(err.contains("float32 [batch, 6, 240, 320]"), "{err}");

    let mut engine = refiner_engine();
    engine[0].dims = vec![-1, 3, 240, 320];
    let err = io_error(&refiner(), &engine);
    assert!(err.contains("[-1, 3, 240, 320]"), "{err}");

    let mut engine = refiner_engine();
    engine[0].format = 1;
    let err = io_error(&refiner(), &engine);
    assert!(err.contains("not linear"), "{err}");

    let mut engine = refiner_engine();
    engine[0].name = "input".to_owned();
    let err = io_error(&refiner(), &engine);
    assert!(
        err.contains("one input named `images`") && err.contains("inputs [input]"),
        "{err}"
    );

    let mut engine = refiner_engine();
    engine.push(tensor("extra", true, TrtDataType::Float, &[-1]));
    let err = io_error(&refiner(), &engine);
    assert!(err.contains("inputs [images, extra]"), "{err}");

    let mut engine = refiner_engine();
    engine[1].name = "pose".to_owned();
    let err = io_error(&refiner(), &engine);
    assert!(
        err.contains("`pose_update`") && err.contains("outputs [pose]"),
        "{err}"
    );

    let mut engine = refiner_engine();
    engine[1].dims = vec![-1, 6];
    let err = io_error(&refiner(), &engine);
    assert!(
        err.contains("`pose_update`") && err.contains("[-1, 6]"),
        "{err}"
    );

    let mut engine = refiner_engine();
    engine[1].dtype = TrtDataType::Int32;
    let err = io_error(&refiner(), &engine);
    assert!(err.contains("int32"), "{err}");

    // An output the contract does not read (the engine would need a buffer for it).
    let mut engine = refiner_engine();
    engine.push(tensor("masks", false, TrtDataType::Float, &[-1, 1, -1, -1]));
    let err = io_error(&refiner(), &engine);
    assert!(err.contains("`masks`") && err.contains("rebuild"), "{err}");
}

#[test]
fn options_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = EngineCache::open(dir.path()).expect("cache");
    let mut opts = TensorRtOptions::new(cache);
    assert!(opts.validate().is_ok());
    assert_eq!(opts.workspace_bytes(), 1024 << 20);
    opts.dla_core = Some(0);
    opts.precision = Precision::Fp32;
    let err = opts.validate().expect_err("DLA in fp32").to_string();
    assert!(err.contains("dla_core") && err.contains("fp16"), "{err}");
    opts.precision = Precision::Fp16;
    assert!(opts.validate().is_ok());
    opts.workspace_mib = usize::MAX;
    assert!(opts.validate().is_err());
    opts.workspace_mib = 0;
    assert_eq!(opts.workspace_bytes(), 0);
}

#[test]
fn an_unavailable_backend_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = TensorRtOptions::new(EngineCache::open(dir.path()).expect("cache"));
    match TensorRtBackend::new(options) {
        Err(EngineError::BackendUnavailable { backend, reason }) => {
            assert_eq!(backend, "tensorrt");
            #[cfg(not(posed_trt_shim))]
            assert_eq!(reason, NOT_COMPILED_REASON);
            #[cfg(posed_trt_shim)]
            assert!(
                reason.contains("libnvinfer")
                    || reason.contains("CUDA")
                    || reason.contains("TensorRT"),
                "{reason}"
            );
            let shown = EngineError::BackendUnavailable { backend, reason }.to_string();
            assert!(
                shown.starts_with("backend tensorrt unavailable: "),
                "{shown}"
            );
        }
        Err(other) => panic!("expected BackendUnavailable, got {other}"),
        // A machine with TensorRT and a GPU.
        Ok(backend) => assert!(!backend.tensorrt_version().is_empty()),
    }
    assert!(
        NOT_COMPILED_REASON.contains("TENSORRT_ROOT")
            && NOT_COMPILED_REASON.contains("--features tensorrt")
    );
}

#[cfg(posed_trt_shim)]
#[test]
fn without_libnvinfer_the_reason_names_it() {
    // Only meaningful where TensorRT is not installed, as on CI.
    let installed = ["libnvinfer.so.10", "libnvinfer.so.8"].iter().any(|name| {
        [
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib",
            "/usr/local/lib",
        ]
        .iter()
        .any(|dir| Path::new(dir).join(name).exists())
    });
    if installed || std::env::var_os("LD_LIBRARY_PATH").is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let options = TensorRtOptions::new(EngineCache::open(dir.path()).expect("cache"));
    let err = TensorRtBackend::new(options)
        .expect_err("no TensorRT here")
        .to_string();
    assert!(
        err.contains("libnvinfer.so.10 or .so.8 not found: install TensorRT (JetPack)"),
        "{err}"
    );
}

#[cfg(posed_trt_shim)]
#[test]
fn the_compiled_shim_matches_these_declarations() {
    // SAFETY: these return constants.
    let (version, params, info) = unsafe {
        (
            super::ffi::posed_trt_shim_version(),
            super::ffi::posed_trt_struct_size(0),
            super::ffi::posed_trt_struct_size(1),
        )
    };
    assert_eq!(version, SHIM_VERSION);
    assert_eq!(params, size_of::<super::ffi::BuildParams>());
    assert_eq!(info, size_of::<super::ffi::TensorInfo>());
}

#[test]
fn the_shim_header_has_this_version() {
    let header = include_str!("../../shim/posed_trt_shim.h");
    let line = header
        .lines()
        .find(|l| l.starts_with("#define POSED_TRT_SHIM_VERSION "))
        .expect("version define");
    let version: u32 = line["#define POSED_TRT_SHIM_VERSION ".len()..]
        .trim()
        .parse()
        .expect("a number");
    assert_eq!(version, SHIM_VERSION);
}

#[test]
fn progress_hooks_can_cross_threads() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&events);
    let hook: ProgressHook = Box::new(move |event| {
        if let Ok(mut events) = sink.lock() {
            events.push(event);
        }
    });
    assert_send_sync(&hook);
    std::thread::scope(|s| {
        s.spawn(|| {
            hook(BuildProgress::PhaseFinished {
                phase: "Building".to_owned(),
            })
        });
    });
    assert_eq!(events.lock().map(|e| e.len()).unwrap_or(0), 1);
}
