//! Networks built to hurt: graphs of a few hundred bytes that ask for terabytes, or for
//! more detections than the sidecar's buffers hold. Each is refused with an error naming
//! the file and the node (or the sidecar), never by an aborted process or a failure on
//! every frame. The ONNX files are written here byte by byte (protobuf's wire format), as
//! `tools/make_test_networks.py` would with the `onnx` package, so the test needs neither.

use std::path::{Path, PathBuf};

use posed_engines::cpu::CpuExecutor;
use posed_engines::{CpuBackend, EngineError, ModelOptions, Network};

/// A protobuf message under construction: fields appended in wire format.
#[derive(Default, Clone)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut n: u64) {
        loop {
            let low = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.0.push(low);
                return;
            }
            self.0.push(low | 0x80);
        }
    }

    fn int(mut self, field: u64, value: i64) -> Message {
        self.varint(field << 3);
        self.varint(value as u64);
        self
    }

    fn bytes(mut self, field: u64, value: &[u8]) -> Message {
        self.varint((field << 3) | 2);
        self.varint(value.len() as u64);
        self.0.extend_from_slice(value);
        self
    }

    fn text(self, field: u64, value: &str) -> Message {
        self.bytes(field, value.as_bytes())
    }

    fn message(self, field: u64, value: &Message) -> Message {
        self.bytes(field, &value.0)
    }
}

const FLOAT: i64 = 1;
const INT64: i64 = 7;

/// A dimension: a number, or a name (a dynamic dimension).
enum Dim {
    Fixed(i64),
    Named(&'static str),
}

/// `ValueInfoProto` of a tensor.
fn value_info(name: &str, elem_type: i64, dims: &[Dim]) -> Message {
    let shape = dims.iter().fold(Message::default(), |shape, dim| {
        let dim = match dim {
            Dim::Fixed(n) => Message::default().int(1, *n),
            Dim::Named(name) => Message::default().text(2, name),
        };
        shape.message(1, &dim)
    });
    let tensor_type = Message::default().int(1, elem_type).message(2, &shape);
    let type_proto = Message::default().message(1, &tensor_type);
    Message::default().text(1, name).message(2, &type_proto)
}

/// `TensorProto` with raw little-endian data.
fn tensor(name: &str, dims: &[i64], elem_type: i64, raw: &[u8]) -> Message {
    let with_dims = dims.iter().fold(Message::default(), |t, &d| t.int(1, d));
    with_dims.int(2, elem_type).text(8, name).bytes(9, raw)
}

fn int64s(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `NodeProto`.
fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attributes: &[Message],
) -> Message {
    let mut node = Message::default();
    for input in inputs {
        node = node.text(1, input);
    }
    for output in outputs {
        node = node.text(2, output);
    }
    node = node.text(3, name).text(4, op);
    for attribute in attributes {
        node = node.message(5, attribute);
    }
    node
}

fn ints_attribute(name: &str, values: &[i64]) -> Message {
    const INTS: i64 = 7;
    let attribute = Message::default().text(1, name);
    values
        .iter()
        .fold(attribute, |a, &v| a.int(8, v))
        .int(20, INTS)
}

fn int_attribute(name: &str, value: i64) -> Message {
    const INT: i64 = 2;
    Message::default().text(1, name).int(3, value).int(20, INT)
}

fn tensor_attribute(name: &str, value: &Message) -> Message {
    const TENSOR: i64 = 4;
    Message::default()
        .text(1, name)
        .message(5, value)
        .int(20, TENSOR)
}

/// A refiner-shaped model (`images` [batch, 6, 240, 320] in, `pose_update` [batch, 9]
/// out) around `nodes`, which must compute `r` [1, 6] from `images`.
fn refiner_model(nodes: &[Message], initialisers: &[Message]) -> Vec<u8> {
    let weights: Vec<u8> = (0..54).flat_map(|_| 0.01f32.to_le_bytes()).collect();
    let mut graph = Message::default();
    for node in nodes {
        graph = graph.message(1, node);
    }
    graph = graph.message(
        1,
        &node("MatMul", "project", &["r", "W"], &["pose_update"], &[]),
    );
    graph = graph.text(2, "hostile");
    for initialiser in initialisers {
        graph = graph.message(5, initialiser);
    }
    graph = graph.message(5, &tensor("W", &[6, 9], FLOAT, &weights));
    let images = [
        Dim::Named("batch"),
        Dim::Fixed(6),
        Dim::Fixed(240),
        Dim::Fixed(320),
    ];
    graph = graph.message(11, &value_info("images", FLOAT, &images));
    let update = [Dim::Named("batch"), Dim::Fixed(9)];
    graph = graph.message(12, &value_info("pose_update", FLOAT, &update));
    let opset = Message::default().text(1, "").int(2, 17);
    Message::default()
        .int(1, 8)
        .text(2, "posed hostile_networks test")
        .message(7, &graph)
        .message(8, &opset)
        .0
}

const REFINER_SIDECAR: &str = "format = 1\nrole = \"refiner\"\nlabels = [\"obj_000001\"]\n";

/// Writes `onnx` and a refiner sidecar as `<stem>.onnx` / `<stem>.toml` in `dir`.
fn write_network(dir: &Path, stem: &str, onnx: &[u8], sidecar: &str) -> PathBuf {
    let path = dir.join(format!("{stem}.onnx"));
    std::fs::write(&path, onnx).expect("write onnx");
    std::fs::write(dir.join(format!("{stem}.toml")), sidecar).expect("write sidecar");
    path
}

/// `images` padded by `pad` zeros after each row and column, then averaged per channel:
/// 547 bytes, whose padded value needs `4 * 6 * (240 + pad) * (320 + pad)` bytes.
fn padded_refiner(pad: i64) -> Vec<u8> {
    let pads = tensor("pads", &[8], INT64, &int64s(&[0, 0, 0, 0, 0, 0, pad, pad]));
    let mean = [
        ints_attribute("axes", &[2, 3]),
        int_attribute("keepdims", 0),
    ];
    refiner_model(
        &[
            node("Pad", "the_pad", &["images", "pads"], &["padded"], &[]),
            node("ReduceMean", "mean", &["padded"], &["r"], &mean),
        ],
        &[pads],
    )
}

fn load(path: &Path, executor: CpuExecutor) -> Result<(), EngineError> {
    let network = Network::open(path)?;
    let options = ModelOptions {
        max_batch: 2,
        ..ModelOptions::default()
    };
    let (model, _) = CpuBackend::new()
        .with_executor(executor)
        .load_with_outcome(network, options)?;
    posed_engines::Model::new_session(&model)?;
    Ok(())
}

#[test]
fn a_small_file_asking_for_terabytes_is_refused_at_load_naming_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A modest pad loads and runs: the check is about sizes, not about Pad.
    let fine = write_network(dir.path(), "padded", &padded_refiner(16), REFINER_SIDECAR);
    for executor in [CpuExecutor::Planned, CpuExecutor::Tract] {
        load(&fine, executor).expect("a 16-value pad loads");
    }
    // 2^20 values of padding: 24 TiB. 2^30: a size that overflows 64 bits.
    for (pad, size) in [(1 << 20, "24.0 TiB"), (1 << 30, "more than 16 EiB")] {
        let path = write_network(dir.path(), "huge", &padded_refiner(pad), REFINER_SIDECAR);
        // The declared tensors meet the contract: the file passes the check...
        Network::open(&path).expect("the contract check passes");
        // ... and loading refuses it, on either executor (tract's plan would abort in
        // its first run as posed's did when it sized its buffers).
        for executor in [CpuExecutor::Planned, CpuExecutor::Tract] {
            let err = load(&path, executor).expect_err("24 TiB must be refused");
            let message = err.to_string();
            assert!(
                matches!(err, EngineError::TooLarge { .. }),
                "{executor:?}: {message}"
            );
            for part in ["huge.onnx", "the_pad", size, "4.0 GiB"] {
                assert!(
                    message.contains(part),
                    "{executor:?}: {part:?} in {message}"
                );
            }
        }
    }
}

#[test]
fn a_huge_constant_shape_is_refused_before_tract_evaluates_it() {
    // ConstantOfShape([1, 6, 2^36]) averaged: tract evaluates it while typing the graph
    // and panics (a division by zero in its reduction), which a release build turns
    // into an abort. The check refuses it first, for an initialiser and for a Constant
    // node alike.
    let dir = tempfile::tempdir().expect("tempdir");
    let huge_shape = tensor("shape", &[3], INT64, &int64s(&[1, 6, 1 << 36]));
    let mean = [
        ints_attribute("axes", &[2, 3]),
        int_attribute("keepdims", 0),
    ];
    let mean_c = [ints_attribute("axes", &[2]), int_attribute("keepdims", 0)];
    let zero = tensor_attribute("value", &tensor("", &[1], FLOAT, &0f32.to_le_bytes()));
    let body = |shape_node: Option<Message>| {
        let mut nodes = vec![
            node("ReduceMean", "mean", &["images"], &["m"], &mean),
            node(
                "ConstantOfShape",
                "the_zeros",
                &["shape"],
                &["c"],
                std::slice::from_ref(&zero),
            ),
            node("ReduceMean", "mean_c", &["c"], &["cm"], &mean_c),
            node("Add", "sum", &["m", "cm"], &["r"], &[]),
        ];
        match shape_node {
            Some(constant) => {
                nodes.insert(0, constant);
                refiner_model(&nodes, &[])
            }
            None => refiner_model(&nodes, std::slice::from_ref(&huge_shape)),
        }
    };
    let constant = node(
        "Constant",
        "shape_node",
        &[],
        &["shape"],
        &[tensor_attribute("value", &huge_shape)],
    );
    for (stem, onnx) in [
        ("initialiser", body(None)),
        ("constant", body(Some(constant))),
    ] {
        let path = write_network(dir.path(), stem, &onnx, REFINER_SIDECAR);
        let err = Network::open(&path).expect_err("refused by the check");
        let message = err.to_string();
        assert!(matches!(err, EngineError::TooLarge { .. }), "{message}");
        for part in [&format!("{stem}.onnx"), "the_zeros", "68719476736"] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
    }
    // A small constant shape is fine.
    let small = tensor("shape", &[3], INT64, &int64s(&[1, 6, 4]));
    let nodes = [
        node("ReduceMean", "mean", &["images"], &["m"], &mean),
        node("ConstantOfShape", "the_zeros", &["shape"], &["c"], &[zero]),
        node("ReduceMean", "mean_c", &["c"], &["cm"], &mean_c),
        node("Add", "sum", &["m", "cm"], &["r"], &[]),
    ];
    let path = write_network(
        dir.path(),
        "small",
        &refiner_model(&nodes, &[small]),
        REFINER_SIDECAR,
    );
    load(&path, CpuExecutor::Planned).expect("a small constant loads");
}

fn networks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/networks")
}

/// `stem`.onnx from data/networks copied into `dir` with its sidecar's
/// `max_detections` set to `max_detections`.
fn with_max_detections(dir: &Path, stem: &str, max_detections: usize) -> PathBuf {
    let onnx = std::fs::read(networks_dir().join(format!("{stem}.onnx"))).expect("onnx");
    let sidecar =
        std::fs::read_to_string(networks_dir().join(format!("{stem}.toml"))).expect("sidecar");
    let (before, _) = sidecar
        .split_once("max_detections")
        .expect("the sidecar sets max_detections");
    let sidecar = format!("{before}max_detections = {max_detections}\n");
    write_network(dir, stem, &onnx, &sidecar)
}

#[test]
fn a_detector_with_more_detections_than_its_sidecar_allows_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // detector-tiny declares boxes [batch, 8, 4]: refused by the contract check.
    let path = with_max_detections(dir.path(), "detector-tiny", 4);
    let err = Network::open(&path).expect_err("8 detections > 4");
    let message = err.to_string();
    for part in [
        "detector-tiny.onnx",
        "detector-tiny.toml",
        "max_detections",
        "at most 4",
        "[batch, 8, 4]",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    // detector-torchvision declares [num_detections, 4] and computes 5: refused when
    // loaded, once tract has typed the graph.
    let path = with_max_detections(dir.path(), "detector-torchvision", 2);
    Network::open(&path).expect("the declared shape says nothing of N");
    let err = load(&path, CpuExecutor::Planned).expect_err("5 detections > 2");
    let message = err.to_string();
    for part in [
        "detector-torchvision.onnx",
        "detector-torchvision.toml",
        "at most 2",
        "[5, 4]",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    // As many as the graph makes, or more, is fine.
    for (stem, n) in [("detector-tiny", 8), ("detector-torchvision", 5)] {
        let path = with_max_detections(dir.path(), stem, n);
        load(&path, CpuExecutor::Planned).expect("max_detections = N loads");
    }
}

#[test]
fn a_missing_onnx_file_is_named_before_its_sidecar() {
    let err = Network::open(Path::new("/nonexistent/refiner.onnx")).expect_err("missing");
    let message = err.to_string();
    assert!(matches!(err, EngineError::Io { .. }), "{message}");
    assert!(message.contains("/nonexistent/refiner.onnx"), "{message}");
    assert!(!message.contains("sidecar"), "{message}");
}
