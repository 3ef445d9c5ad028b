//! What the TensorRT backend decides without TensorRT: the optimisation profile for a
//! contract, the size of every device and host buffer, how TensorRT's data types map onto
//! the contracts' types, and the check of a built engine's tensors against the contract.
//! Pure functions, tested on any machine.

use std::fmt;
use std::path::Path;

use crate::backend::ModelOptions;
use crate::contract::{Contract, DimSpec, TensorSpec};
use crate::tensor::{DType, MAX_RANK};
use crate::EngineError;

/// Smallest detector image side an engine's optimisation profile admits, in pixels.
pub const MIN_IMAGE_SIDE: usize = 32;

/// `nvinfer1::TensorFormat::kLINEAR`: row-major, the only layout posed binds.
pub const TENSOR_FORMAT_LINEAR: i32 = 0;

/// TensorRT's `nvinfer1::DataType`, by its numeric code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrtDataType {
    /// `kFLOAT` (0): 32-bit float.
    Float,
    /// `kHALF` (1): 16-bit float.
    Half,
    /// `kINT8` (2).
    Int8,
    /// `kINT32` (3).
    Int32,
    /// `kBOOL` (4).
    Bool,
    /// `kUINT8` (5).
    Uint8,
    /// `kFP8` (6), TensorRT 8.6+.
    Fp8,
    /// `kBF16` (7), TensorRT 9+.
    Bf16,
    /// `kINT64` (8), TensorRT 10+ (8.6 turns int64 network I/O into int32).
    Int64,
    /// `kINT4` (9), TensorRT 10+.
    Int4,
    /// `kFP4` (10), TensorRT 10.8+.
    Fp4,
    /// `kE8M0` (11), TensorRT 10.12+.
    E8m0,
    /// A code this posed does not know.
    Unknown(i32),
}

impl TrtDataType {
    /// The type for a TensorRT `DataType` code.
    pub fn from_code(code: i32) -> TrtDataType {
        match code {
            0 => TrtDataType::Float,
            1 => TrtDataType::Half,
            2 => TrtDataType::Int8,
            3 => TrtDataType::Int32,
            4 => TrtDataType::Bool,
            5 => TrtDataType::Uint8,
            6 => TrtDataType::Fp8,
            7 => TrtDataType::Bf16,
            8 => TrtDataType::Int64,
            9 => TrtDataType::Int4,
            10 => TrtDataType::Fp4,
            11 => TrtDataType::E8m0,
            other => TrtDataType::Unknown(other),
        }
    }

    /// The TensorRT code.
    pub fn code(self) -> i32 {
        match self {
            TrtDataType::Float => 0,
            TrtDataType::Half => 1,
            TrtDataType::Int8 => 2,
            TrtDataType::Int32 => 3,
            TrtDataType::Bool => 4,
            TrtDataType::Uint8 => 5,
            TrtDataType::Fp8 => 6,
            TrtDataType::Bf16 => 7,
            TrtDataType::Int64 => 8,
            TrtDataType::Int4 => 9,
            TrtDataType::Fp4 => 10,
            TrtDataType::E8m0 => 11,
            TrtDataType::Unknown(code) => code,
        }
    }

    /// The name errors print (ONNX's spelling where there is one).
    pub fn name(self) -> &'static str {
        match self {
            TrtDataType::Float => "float32",
            TrtDataType::Half => "float16",
            TrtDataType::Int8 => "int8",
            TrtDataType::Int32 => "int32",
            TrtDataType::Bool => "bool",
            TrtDataType::Uint8 => "uint8",
            TrtDataType::Fp8 => "fp8",
            TrtDataType::Bf16 => "bfloat16",
            TrtDataType::Int64 => "int64",
            TrtDataType::Int4 => "int4",
            TrtDataType::Fp4 => "fp4",
            TrtDataType::E8m0 => "e8m0",
            TrtDataType::Unknown(_) => "unknown TensorRT type",
        }
    }

    /// Bytes per element; `None` for sub-byte and unknown types.
    pub fn size_bytes(self) -> Option<usize> {
        match self {
            TrtDataType::Float | TrtDataType::Int32 => Some(4),
            TrtDataType::Half | TrtDataType::Bf16 => Some(2),
            TrtDataType::Int8
            | TrtDataType::Bool
            | TrtDataType::Uint8
            | TrtDataType::Fp8
            | TrtDataType::E8m0 => Some(1),
            TrtDataType::Int64 => Some(8),
            TrtDataType::Int4 | TrtDataType::Fp4 | TrtDataType::Unknown(_) => None,
        }
    }

    /// How an engine tensor of this type delivers a contract tensor of `dtype`, or `None`
    /// when it cannot. TensorRT 8.6 has no int64 I/O and turns int64 outputs into int32.
    pub fn transfer_to(self, dtype: DType) -> Option<Transfer> {
        match (self, dtype) {
            (TrtDataType::Float, DType::F32) => Some(Transfer::F32),
            (TrtDataType::Int64, DType::I64) => Some(Transfer::I64),
            (TrtDataType::Int32, DType::I64) => Some(Transfer::I32ToI64),
            _ => None,
        }
    }
}

impl fmt::Display for TrtDataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrtDataType::Unknown(code) => write!(f, "TensorRT data type {code}"),
            known => f.write_str(known.name()),
        }
    }
}

/// How one tensor travels between the engine's buffer and the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transfer {
    /// float32 as is.
    F32,
    /// int64 as is.
    I64,
    /// int32 on the device, widened to int64 on the host (TensorRT 8.6).
    I32ToI64,
}

impl Transfer {
    /// Bytes per element on the device.
    pub fn device_size_bytes(self) -> usize {
        match self {
            Transfer::F32 | Transfer::I32ToI64 => 4,
            Transfer::I64 => 8,
        }
    }
}

/// The largest shape a buffer must hold, for one tensor of a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingSize {
    /// The tensor's name.
    pub name: &'static str,
    /// Whether it is the input.
    pub is_input: bool,
    /// The contract's element type.
    pub dtype: DType,
    /// Elements in the largest run.
    pub max_elements: usize,
}

impl BindingSize {
    /// Bytes of a device buffer holding `max_elements` moved with `transfer`.
    pub fn device_bytes(&self, transfer: Transfer) -> usize {
        self.max_elements
            .saturating_mul(transfer.device_size_bytes())
    }

    /// Bytes of the host copy in the contract's type.
    pub fn host_bytes(&self) -> usize {
        self.max_elements.saturating_mul(self.dtype.size_bytes())
    }
}

/// The buffers a session allocates once: the input for the largest batch (and, for a
/// detector, the largest image), then every output in contract order (detections sized by
/// the sidecar's `max_detections`).
pub fn binding_plan(
    contract: &Contract,
    options: &ModelOptions,
    max_detections: usize,
) -> Vec<BindingSize> {
    let max_shape = optimisation_profile(contract, options).max;
    let input = BindingSize {
        name: contract.input.name,
        is_input: true,
        dtype: contract.input.dtype,
        max_elements: max_shape
            .iter()
            .fold(1usize, |acc, &n| acc.saturating_mul(n)),
    };
    let outputs = contract.outputs.iter().map(|spec| BindingSize {
        name: spec.name,
        is_input: false,
        dtype: spec.dtype,
        max_elements: crate::backend::max_elements(contract, spec, options, max_detections),
    });
    std::iter::once(input).chain(outputs).collect()
}

/// An optimisation profile for the contract's input: one shape per TensorRT selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileShapes {
    /// `kMIN`: batch 1, images 32 x 32.
    pub min: Vec<usize>,
    /// `kOPT`: what TensorRT tunes for: half the largest batch (rounded up), the largest image.
    pub opt: Vec<usize>,
    /// `kMAX`: the model options' largest batch and image.
    pub max: Vec<usize>,
}

impl ProfileShapes {
    /// Whether a run's input shape lies inside the profile.
    pub fn admits(&self, shape: &[usize]) -> bool {
        shape.len() == self.min.len()
            && shape
                .iter()
                .zip(self.min.iter().zip(&self.max))
                .all(|(&n, (&lo, &hi))| lo <= n && n <= hi)
    }
}

/// The batch profile (min, optimum, max) for the engine cache key: (1, ceil(max / 2), max)
/// for a batched contract, (1, 1, 1) for torchvision's single image.
pub fn batch_profile(contract: &Contract, options: &ModelOptions) -> (usize, usize, usize) {
    if contract.is_batched() {
        let max = options.max_batch.max(1);
        (1, max.div_ceil(2), max)
    } else {
        (1, 1, 1)
    }
}

/// The optimisation profile for the contract's input under `options`.
pub fn optimisation_profile(contract: &Contract, options: &ModelOptions) -> ProfileShapes {
    let (batch_min, batch_opt, batch_max) = batch_profile(contract, options);
    let (max_h, max_w) = options.max_image_hw;
    let mut profile = ProfileShapes {
        min: Vec::with_capacity(contract.input.dims.len()),
        opt: Vec::with_capacity(contract.input.dims.len()),
        max: Vec::with_capacity(contract.input.dims.len()),
    };
    for dim in contract.input.dims {
        let (min, opt, max) = match dim {
            DimSpec::Batch => (batch_min, batch_opt, batch_max),
            DimSpec::Fixed(n) => (*n, *n, *n),
            DimSpec::Any("width") => (MIN_IMAGE_SIDE.min(max_w), max_w, max_w),
            // The contracts' only other free input dimension is the image height.
            DimSpec::Any(_) => (MIN_IMAGE_SIDE.min(max_h), max_h, max_h),
        };
        profile.min.push(min);
        profile.opt.push(opt);
        profile.max.push(max);
    }
    profile
}

/// One input or output of a built engine, as TensorRT reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineTensor {
    /// Its name.
    pub name: String,
    /// Input or output.
    pub is_input: bool,
    /// Its element type.
    pub dtype: TrtDataType,
    /// `nvinfer1::TensorFormat` code (0: linear).
    pub format: i32,
    /// Its dimensions, -1 where dynamic.
    pub dims: Vec<i64>,
}

impl fmt::Display for EngineTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "engine {} `{}`, {} {:?}",
            if self.is_input { "input" } else { "output" },
            self.name,
            self.dtype,
            self.dims
        )?;
        if self.format != TENSOR_FORMAT_LINEAR {
            write!(f, " in TensorRT format {} (not linear)", self.format)?;
        }
        Ok(())
    }
}

/// How each contract output comes out of a checked engine, in contract order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineIo {
    /// One per contract output.
    pub outputs: Vec<Transfer>,
}

/// Checks a built engine's tensors against the contract: one float32 linear input of the
/// contract's name and rank, every contract output with a type posed can read, the
/// contract's rank and fixed sizes, and nothing else (extra outputs would need buffers).
pub fn check_engine_io(
    contract: &Contract,
    path: &Path,
    tensors: &[EngineTensor],
) -> Result<EngineIo, EngineError> {
    let mismatch = |tensor: &str, expected: String, found: String| EngineError::Contract {
        path: path.to_owned(),
        tensor: tensor.to_owned(),
        expected,
        found: format!("{found} (in the built TensorRT engine)"),
    };
    let inputs: Vec<&EngineTensor> = tensors.iter().filter(|t| t.is_input).collect();
    let spec = &contract.input;
    match inputs.as_slice() {
        [only] if only.name == spec.name => {
            if only.dtype != TrtDataType::Float
                || !dims_fit(spec, &only.dims)
                || only.format != TENSOR_FORMAT_LINEAR
            {
                return Err(mismatch(
                    spec.name,
                    format!("input {spec}"),
                    only.to_string(),
                ));
            }
        }
        _ => {
            let names: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
            return Err(mismatch(
                spec.name,
                format!("one input named `{}`, {spec}", spec.name),
                format!("inputs [{}]", names.join(", ")),
            ));
        }
    }
    let mut outputs = Vec::with_capacity(contract.outputs.len());
    for spec in contract.outputs {
        let Some(found) = tensors.iter().find(|t| !t.is_input && t.name == spec.name) else {
            let names: Vec<&str> = tensors
                .iter()
                .filter(|t| !t.is_input)
                .map(|t| t.name.as_str())
                .collect();
            return Err(mismatch(
                spec.name,
                format!("an output named `{}`, {spec}", spec.name),
                format!("outputs [{}]", names.join(", ")),
            ));
        };
        let transfer = found.dtype.transfer_to(spec.dtype);
        match transfer {
            Some(transfer)
                if dims_fit(spec, &found.dims) && found.format == TENSOR_FORMAT_LINEAR =>
            {
                outputs.push(transfer);
            }
            _ => {
                return Err(mismatch(
                    spec.name,
                    format!("output {spec}"),
                    found.to_string(),
                ))
            }
        }
    }
    if let Some(extra) = tensors
        .iter()
        .find(|t| !t.is_input && !contract.outputs.iter().any(|s| s.name == t.name))
    {
        return Err(mismatch(
            &extra.name,
            "only the contract's outputs (posed builds engines without the others)".to_owned(),
            format!("{extra}; rebuild the engine with this posed"),
        ));
    }
    Ok(EngineIo { outputs })
}

/// Whether engine dimensions (-1: dynamic) fit a contract tensor's.
fn dims_fit(spec: &TensorSpec, dims: &[i64]) -> bool {
    dims.len() == spec.dims.len()
        && dims.len() <= MAX_RANK
        && spec.dims.iter().zip(dims).all(|(want, &got)| match want {
            DimSpec::Fixed(n) => got == -1 || i64::try_from(*n) == Ok(got),
            DimSpec::Batch | DimSpec::Any(_) => got == -1 || got > 0,
        })
}
