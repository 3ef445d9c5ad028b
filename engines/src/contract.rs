//! The three network roles and their tensor contracts (COSYPOSE_SPEC.md A.1-A.3), and the
//! check of an ONNX file's declared inputs and outputs against them.
//!
//! | role | input | outputs |
//! |---|---|---|
//! | coarse, refiner | `images` float32 [batch, 6, 240, 320] | `pose_update` float32 [batch, 9] |
//! | detector, batched | `images` float32 [batch, 3, H, W] | `boxes` float32 [batch, N, 4], `scores` float32 [batch, N], `labels` int64 [batch, N] |
//! | detector, torchvision | `images` float32 [3, H, W] | `boxes` float32 [N, 4], `labels` int64 [N], `scores` float32 [N] (`masks` ignored) |
//!
//! The batch dimension must be dynamic (a named or unnamed dimension in the file). Other
//! outputs a file may have are ignored.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use crate::cpu::MAX_BUFFER_BYTES;
use crate::error::{describe_bytes, panic_message, printable};
use crate::{DType, EngineError};

/// Crop height of the coarse and refiner networks' input (spec A.2).
pub const CROP_HEIGHT: usize = 240;
/// Crop width of the coarse and refiner networks' input.
pub const CROP_WIDTH: usize = 320;
/// Channels of the coarse and refiner input: the real crop's RGB, then the rendering's.
pub const POSE_INPUT_CHANNELS: usize = 6;
/// Length of a pose update: two rotation columns (6D) and (vx, vy, vz) (spec A.3).
pub const POSE_UPDATE_LEN: usize = 9;

/// What a network does in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Image to boxes, scores and labels.
    Detector,
    /// First pose estimate from a crop and a rendering at the initial pose.
    Coarse,
    /// Iterative pose refinement, same tensors as the coarse network.
    Refiner,
}

impl Role {
    /// The sidecar's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Role::Detector => "detector",
            Role::Coarse => "coarse",
            Role::Refiner => "refiner",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a detector lays out its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DetectorLayout {
    /// A batch of images in, fixed N detections per image out.
    #[default]
    Batched,
    /// torchvision's Mask R-CNN export: one image (no batch dimension), N detections.
    Torchvision,
}

/// One dimension of a contract tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DimSpec {
    /// The dynamic batch dimension.
    Batch,
    /// A dimension with a fixed size.
    Fixed(usize),
    /// Any size (image height and width of a detector, detections per image).
    Any(&'static str),
}

/// One tensor of a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name in the ONNX file.
    pub name: &'static str,
    /// Its element type.
    pub dtype: DType,
    /// Its dimensions.
    pub dims: &'static [DimSpec],
}

impl fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [", self.dtype.onnx_name())?;
        for (i, dim) in self.dims.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match dim {
                DimSpec::Batch => f.write_str("batch")?,
                DimSpec::Fixed(n) => write!(f, "{n}")?,
                DimSpec::Any(name) => f.write_str(name)?,
            }
        }
        f.write_str("]")
    }
}

/// The tensors a role's network must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contract {
    /// The role.
    pub role: Role,
    /// The detector layout (`None` for coarse and refiner).
    pub layout: Option<DetectorLayout>,
    /// The one input.
    pub input: TensorSpec,
    /// The outputs the pipeline reads, in the order sessions write them.
    pub outputs: &'static [TensorSpec],
}

use DimSpec::{Any, Batch, Fixed};

const POSE_CONTRACT_INPUT: TensorSpec = TensorSpec {
    name: "images",
    dtype: DType::F32,
    dims: &[
        Batch,
        Fixed(POSE_INPUT_CHANNELS),
        Fixed(CROP_HEIGHT),
        Fixed(CROP_WIDTH),
    ],
};

const POSE_CONTRACT_OUTPUTS: &[TensorSpec] = &[TensorSpec {
    name: "pose_update",
    dtype: DType::F32,
    dims: &[Batch, Fixed(POSE_UPDATE_LEN)],
}];

const BATCHED_DETECTOR_OUTPUTS: &[TensorSpec] = &[
    TensorSpec {
        name: "boxes",
        dtype: DType::F32,
        dims: &[Batch, Any("N"), Fixed(4)],
    },
    TensorSpec {
        name: "scores",
        dtype: DType::F32,
        dims: &[Batch, Any("N")],
    },
    TensorSpec {
        name: "labels",
        dtype: DType::I64,
        dims: &[Batch, Any("N")],
    },
];

const TORCHVISION_DETECTOR_OUTPUTS: &[TensorSpec] = &[
    TensorSpec {
        name: "boxes",
        dtype: DType::F32,
        dims: &[Any("N"), Fixed(4)],
    },
    TensorSpec {
        name: "scores",
        dtype: DType::F32,
        dims: &[Any("N")],
    },
    TensorSpec {
        name: "labels",
        dtype: DType::I64,
        dims: &[Any("N")],
    },
];

impl Contract {
    /// The contract of a role (and, for a detector, a layout).
    pub fn for_role(role: Role, layout: DetectorLayout) -> Contract {
        match role {
            Role::Coarse | Role::Refiner => Contract {
                role,
                layout: None,
                input: POSE_CONTRACT_INPUT,
                outputs: POSE_CONTRACT_OUTPUTS,
            },
            Role::Detector => match layout {
                DetectorLayout::Batched => Contract {
                    role,
                    layout: Some(layout),
                    input: TensorSpec {
                        name: "images",
                        dtype: DType::F32,
                        dims: &[Batch, Fixed(3), Any("height"), Any("width")],
                    },
                    outputs: BATCHED_DETECTOR_OUTPUTS,
                },
                DetectorLayout::Torchvision => Contract {
                    role,
                    layout: Some(layout),
                    input: TensorSpec {
                        name: "images",
                        dtype: DType::F32,
                        dims: &[Fixed(3), Any("height"), Any("width")],
                    },
                    outputs: TORCHVISION_DETECTOR_OUTPUTS,
                },
            },
        }
    }

    /// Whether the input has a batch dimension (all but torchvision's layout).
    pub fn is_batched(&self) -> bool {
        self.input.dims.first() == Some(&Batch)
    }

    /// Checks an ONNX file's declared tensors against this contract.
    pub fn check(&self, path: &Path, signature: &Signature) -> Result<(), EngineError> {
        let contract_error =
            |tensor: &str, expected: String, found: String| EngineError::Contract {
                path: path.to_owned(),
                tensor: tensor.to_owned(),
                expected,
                found,
            };
        let input = &self.input;
        match signature.inputs.as_slice() {
            [only] if only.name == input.name => {
                check_tensor(input, only).map_err(|(expected, found)| {
                    contract_error(input.name, format!("input {expected}"), found)
                })?;
            }
            [only] => {
                return Err(contract_error(
                    input.name,
                    format!("one input named `{}`, {input}", input.name),
                    format!("input named `{}`, {only}", only.name),
                ));
            }
            many => {
                return Err(contract_error(
                    input.name,
                    format!("one input named `{}`, {input}", input.name),
                    format!("{} inputs ({})", many.len(), names(many)),
                ));
            }
        }
        for spec in self.outputs {
            let Some(declared) = signature.outputs.iter().find(|o| o.name == spec.name) else {
                return Err(contract_error(
                    spec.name,
                    format!("an output named `{}`, {spec}", spec.name),
                    format!("no such output (outputs: {})", names(&signature.outputs)),
                ));
            };
            check_tensor(spec, declared).map_err(|(expected, found)| {
                contract_error(spec.name, format!("output {expected}"), found)
            })?;
        }
        Ok(())
    }
}

fn names(tensors: &[DeclaredTensor]) -> String {
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    names.join(", ")
}

/// Compares one declared tensor with its spec: `Err((expected, found))` on mismatch.
fn check_tensor(spec: &TensorSpec, declared: &DeclaredTensor) -> Result<(), (String, String)> {
    let mismatch = |why: &str| Err((format!("{spec}{why}"), declared.to_string()));
    if declared.dtype != DeclaredType::Known(spec.dtype) {
        return mismatch("");
    }
    // A file may leave shapes undeclared; the backend then checks shapes at run time.
    let Some(dims) = &declared.dims else {
        return Ok(());
    };
    if dims.len() != spec.dims.len() {
        return mismatch("");
    }
    for (want, got) in spec.dims.iter().zip(dims) {
        match (want, got) {
            (Batch, DeclaredDim::Fixed(_)) => {
                return mismatch(" with a dynamic batch dimension");
            }
            (Fixed(n), DeclaredDim::Fixed(m)) if i64::try_from(*n) != Ok(*m) => {
                return mismatch("");
            }
            _ => {}
        }
    }
    Ok(())
}

/// An element type as an ONNX file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredType {
    /// A type the contracts use.
    Known(DType),
    /// Any other ONNX type, by its ONNX name.
    Other(&'static str),
}

/// One dimension as an ONNX file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredDim {
    /// `dim_value`.
    Fixed(i64),
    /// `dim_param`: a named dynamic dimension.
    Named(String),
    /// Neither: an unnamed dynamic dimension.
    Unknown,
}

/// An input or output as an ONNX file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredTensor {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub dtype: DeclaredType,
    /// Its dimensions, when the file declares a shape.
    pub dims: Option<Vec<DeclaredDim>>,
}

impl fmt::Display for DeclaredTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dtype {
            DeclaredType::Known(dtype) => f.write_str(dtype.onnx_name())?,
            DeclaredType::Other(name) => f.write_str(name)?,
        }
        let Some(dims) = &self.dims else {
            return f.write_str(" (no shape declared)");
        };
        f.write_str(" [")?;
        for (i, dim) in dims.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match dim {
                DeclaredDim::Fixed(n) => write!(f, "{n}")?,
                DeclaredDim::Named(name) => f.write_str(name)?,
                DeclaredDim::Unknown => f.write_str("?")?,
            }
        }
        f.write_str("]")
    }
}

/// The inputs (initialisers excluded) and outputs an ONNX file declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Graph inputs that are not initialisers.
    pub inputs: Vec<DeclaredTensor>,
    /// Graph outputs.
    pub outputs: Vec<DeclaredTensor>,
}

/// Decodes the ONNX model in `bytes` (read from `path`), which must have a graph.
pub(crate) fn decode_onnx(path: &Path, bytes: &[u8]) -> Result<pb::ModelProto, EngineError> {
    let not_onnx = |reason: String| EngineError::NotOnnx {
        path: path.to_owned(),
        reason: printable(&reason),
    };
    let decoded = std::panic::catch_unwind(|| {
        tract_onnx::onnx()
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| format!("{e:#}"))
    })
    .unwrap_or_else(|panic| Err(format!("the decoder panicked: {}", panic_message(&*panic))));
    let model = decoded.map_err(not_onnx)?;
    if model.graph.is_none() {
        return Err(not_onnx("the model has no graph".to_owned()));
    }
    Ok(model)
}

/// Refuses a graph with a `ConstantOfShape` or an `Expand` whose shape is a constant (an
/// initialiser or a `Constant` node) asking for more than [`MAX_BUFFER_BYTES`], before
/// tract sees it: tract evaluates such constants while it types the graph, and on huge
/// ones it panics or fails to allocate, which ends a release build's process (`panic =
/// "abort"`). Shapes computed from the input are checked later, on the typed graph.
pub(crate) fn check_constant_shapes(
    path: &Path,
    model: &pb::ModelProto,
) -> Result<(), EngineError> {
    let Some(graph) = &model.graph else {
        return Ok(());
    };
    // Shapes are short int64 vectors; anything longer is no shape.
    const MAX_SHAPE_LEN: usize = 64;
    let int64s = |tensor: &pb::TensorProto| -> Option<Vec<i64>> {
        const INT64: i32 = 7;
        if tensor.data_type != INT64 {
            return None;
        }
        if !tensor.int64_data.is_empty() {
            return (tensor.int64_data.len() <= MAX_SHAPE_LEN).then(|| tensor.int64_data.clone());
        }
        if tensor.raw_data.len() > 8 * MAX_SHAPE_LEN || !tensor.raw_data.len().is_multiple_of(8) {
            return None;
        }
        let values = tensor.raw_data.chunks_exact(8).map(|chunk| {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            i64::from_le_bytes(word)
        });
        Some(values.collect())
    };
    let mut constants: HashMap<&str, Vec<i64>> = HashMap::new();
    for tensor in &graph.initializer {
        if let Some(values) = int64s(tensor) {
            constants.insert(&tensor.name, values);
        }
    }
    for node in graph.node.iter().filter(|node| node.op_type == "Constant") {
        let value = node.attribute.iter().find(|a| a.name == "value");
        if let (Some(output), Some(values)) = (
            node.output.first(),
            value.and_then(|a| a.t.as_ref()).and_then(int64s),
        ) {
            constants.insert(output, values);
        }
    }
    for node in &graph.node {
        let shape_input = match node.op_type.as_str() {
            "ConstantOfShape" => node.input.first(),
            "Expand" => node.input.get(1),
            _ => None,
        };
        let Some(shape) = shape_input.and_then(|name| constants.get(name.as_str())) else {
            continue;
        };
        // At least one byte per value: never more than the graph really asks for.
        let values = shape.iter().try_fold(1u64, |n, &d| {
            n.checked_mul(u64::try_from(d).unwrap_or(1).max(1))
        });
        if values.is_none_or(|n| n > MAX_BUFFER_BYTES) {
            let name = if node.name.is_empty() {
                node.output.first().map_or("?", String::as_str)
            } else {
                node.name.as_str()
            };
            return Err(EngineError::TooLarge {
                path: path.to_owned(),
                node: name.to_owned(),
                reason: format!(
                    "{} of the constant shape {shape:?}: more values than the {} a value \
                     may take",
                    node.op_type,
                    describe_bytes(Some(MAX_BUFFER_BYTES as usize)),
                ),
            });
        }
    }
    Ok(())
}

impl Signature {
    /// Decodes the ONNX model in `bytes` (read from `path`) and reads its signature.
    pub fn from_onnx_bytes(path: &Path, bytes: &[u8]) -> Result<Signature, EngineError> {
        Ok(Signature::from_model(&decode_onnx(path, bytes)?))
    }

    /// The signature of a decoded model.
    pub(crate) fn from_model(model: &pb::ModelProto) -> Signature {
        let Some(graph) = model.graph.as_ref() else {
            return Signature {
                inputs: Vec::new(),
                outputs: Vec::new(),
            };
        };
        let initialisers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = graph
            .input
            .iter()
            .filter(|i| !initialisers.contains(&i.name.as_str()))
            .map(declared_tensor)
            .collect();
        let outputs = graph.output.iter().map(declared_tensor).collect();
        Signature { inputs, outputs }
    }
}

fn declared_tensor(info: &pb::ValueInfoProto) -> DeclaredTensor {
    let tensor_type = info.r#type.as_ref().and_then(|t| {
        t.value
            .as_ref()
            .map(|pb::type_proto::Value::TensorType(tensor)| tensor)
    });
    let Some(tensor_type) = tensor_type else {
        return DeclaredTensor {
            name: info.name.clone(),
            dtype: DeclaredType::Other("non-tensor value"),
            dims: None,
        };
    };
    let dims = tensor_type.shape.as_ref().map(|shape| {
        shape
            .dim
            .iter()
            .map(|dim| {
                use pb::tensor_shape_proto::dimension::Value;
                match &dim.value {
                    Some(Value::DimValue(n)) => DeclaredDim::Fixed(*n),
                    Some(Value::DimParam(name)) if !name.is_empty() => {
                        DeclaredDim::Named(name.clone())
                    }
                    _ => DeclaredDim::Unknown,
                }
            })
            .collect()
    });
    DeclaredTensor {
        name: info.name.clone(),
        dtype: onnx_elem_type(tensor_type.elem_type),
        dims,
    }
}

/// ONNX `TensorProto.DataType` codes.
fn onnx_elem_type(code: i32) -> DeclaredType {
    match code {
        1 => DeclaredType::Known(DType::F32),
        7 => DeclaredType::Known(DType::I64),
        2 => DeclaredType::Other("uint8"),
        3 => DeclaredType::Other("int8"),
        4 => DeclaredType::Other("uint16"),
        5 => DeclaredType::Other("int16"),
        6 => DeclaredType::Other("int32"),
        9 => DeclaredType::Other("bool"),
        10 => DeclaredType::Other("float16"),
        11 => DeclaredType::Other("float64"),
        16 => DeclaredType::Other("bfloat16"),
        0 => DeclaredType::Other("undefined type"),
        _ => DeclaredType::Other("unsupported type"),
    }
}
