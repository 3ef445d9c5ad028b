//! Contract and sidecar checks on the networks in data/networks: the good ones load, each
//! broken one is refused with a message naming the file, the tensor or field, and what was
//! expected and found.

use std::path::PathBuf;

use posed_engines::{EngineError, Network, Role};

fn networks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/networks")
}

#[test]
fn good_networks_meet_their_contracts() {
    for (stem, role, labels) in [
        ("refiner-tiny", Role::Refiner, 21),
        ("refiner-identity", Role::Refiner, 21),
        ("coarse-tiny", Role::Coarse, 21),
        ("detector-tiny", Role::Detector, 21),
        ("detector-torchvision", Role::Detector, 21),
    ] {
        let path = networks_dir().join(format!("{stem}.onnx"));
        let network = Network::open(&path).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_eq!(network.sidecar().role, role, "{stem}");
        assert_eq!(network.sidecar().labels.len(), labels, "{stem}");
        assert_eq!(network.sha256_hex().len(), 64);
    }
    let detector = Network::open(&networks_dir().join("detector-tiny.onnx")).expect("detector");
    assert_eq!(detector.sidecar().label_for_category(1), Some("obj_000001"));
    assert_eq!(
        detector.sidecar().label_for_category(21),
        Some("obj_000021")
    );
    assert_eq!(detector.sidecar().label_for_category(0), None);
    assert_eq!(detector.sidecar().label_for_category(22), None);
}

/// Opens a broken network and returns its error message, checking that it names the file.
fn refused(relative: &str) -> String {
    let path = networks_dir().join("broken").join(relative);
    let err = match Network::open(&path) {
        Ok(_) => panic!("{relative} loaded but must be refused"),
        Err(e) => e,
    };
    let message = err.to_string();
    let file_name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    assert!(
        message.contains(file_name),
        "{relative}: the message must name the file: {message}"
    );
    message
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "expected {part:?} in: {message}");
    }
}

#[test]
fn contract_mismatches_name_tensor_expected_and_found() {
    assert_contains(
        &refused("refiner-input-name.onnx"),
        &[
            "tensor `images`",
            "one input named `images`",
            "input named `input`",
        ],
    );
    assert_contains(
        &refused("refiner-5-channels.onnx"),
        &[
            "tensor `images`",
            "float32 [batch, 6, 240, 320]",
            "[batch, 5, 240, 320]",
        ],
    );
    assert_contains(
        &refused("refiner-crop-size.onnx"),
        &["tensor `images`", "[batch, 6, 240, 320]", "256, 256]"],
    );
    assert_contains(
        &refused("refiner-output-9x1.onnx"),
        &["tensor `pose_update`", "float32 [batch, 9]", "[batch, 8]"],
    );
    assert_contains(
        &refused("refiner-fixed-batch.onnx"),
        &[
            "tensor `images`",
            "dynamic batch dimension",
            "[1, 6, 240, 320]",
        ],
    );
    assert_contains(
        &refused("refiner-int64-input.onnx"),
        &["tensor `images`", "float32 [batch, 6, 240, 320]", "int64"],
    );
    assert_contains(
        &refused("detector-no-scores.onnx"),
        &[
            "tensor `scores`",
            "an output named `scores`",
            "no such output",
        ],
    );
}

#[test]
fn unreadable_files_say_so() {
    assert_contains(&refused("truncated.onnx"), &["not a readable ONNX model"]);
    assert_contains(&refused("not-onnx.onnx"), &["not a readable ONNX model"]);
}

#[test]
fn sidecar_errors_name_the_field() {
    let check = |stem: &str, parts: &[&str]| {
        let message = refused(&format!("sidecar-bad/{stem}.onnx"));
        assert!(
            message.contains(&format!("{stem}.toml")),
            "names the sidecar: {message}"
        );
        assert_contains(&message, parts);
    };
    check("role-segmenter", &["role", "segmenter"]);
    check("labels-wrong-type", &["labels", "sequence"]);
    check("missing-role", &["role"]);
    check("format-2", &["format", "expected 1", "found 2"]);
}

#[test]
fn a_network_without_sidecar_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lonely.onnx");
    std::fs::copy(networks_dir().join("refiner-tiny.onnx"), &path).expect("copy");
    let err = Network::open(&path).expect_err("no sidecar");
    assert!(matches!(err, EngineError::Sidecar { .. }), "{err}");
    assert_contains(&err.to_string(), &["lonely.toml", "sidecar"]);
}
