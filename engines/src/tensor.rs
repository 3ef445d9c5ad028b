//! Host tensors a session reads and writes: shapes without heap storage, and output
//! buffers the caller allocates once per session and every run fills in place.

use std::fmt;

use crate::EngineError;

/// The most dimensions a contract tensor has (torchvision's `masks`: N x 1 x H x W).
pub const MAX_RANK: usize = 4;

/// Element types the contracts use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit signed integer (torchvision's `labels`).
    I64,
}

impl DType {
    /// ONNX's name for the type, as errors print it.
    pub fn onnx_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::I64 => "int64",
        }
    }

    /// Size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
        }
    }
}

/// A tensor shape of at most [`MAX_RANK`] dimensions, stored inline (`Copy`, no heap).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    /// A shape from its dimensions; `None` when there are more than [`MAX_RANK`].
    pub fn new(dims: &[usize]) -> Option<Shape> {
        if dims.len() > MAX_RANK {
            return None;
        }
        let mut shape = Shape {
            dims: [0; MAX_RANK],
            rank: dims.len() as u8,
        };
        shape.dims[..dims.len()].copy_from_slice(dims);
        Some(shape)
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims[..usize::from(self.rank)]
    }

    /// Number of elements.
    pub fn volume(&self) -> usize {
        self.dims().iter().product()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.dims().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The storage of one output tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    /// float32 elements.
    F32(Vec<f32>),
    /// int64 elements.
    I64(Vec<i64>),
}

/// One output tensor: a buffer sized once for the largest run, and the shape the last run
/// wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    name: String,
    data: OutputData,
    shape: Shape,
}

impl OutputTensor {
    /// A buffer for `capacity` elements of `dtype`.
    pub fn with_capacity(name: &str, dtype: DType, capacity: usize) -> OutputTensor {
        let data = match dtype {
            DType::F32 => OutputData::F32(vec![0.0; capacity]),
            DType::I64 => OutputData::I64(vec![0; capacity]),
        };
        OutputTensor {
            name: name.to_owned(),
            data,
            shape: Shape::default(),
        }
    }

    /// The contract's name for this output.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            OutputData::F32(_) => DType::F32,
            OutputData::I64(_) => DType::I64,
        }
    }

    /// The shape the last run wrote (empty before the first run).
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// How many elements the buffer holds.
    pub fn capacity(&self) -> usize {
        match &self.data {
            OutputData::F32(v) => v.len(),
            OutputData::I64(v) => v.len(),
        }
    }

    /// The float32 values the last run wrote; `None` for an int64 tensor.
    pub fn f32s(&self) -> Option<&[f32]> {
        match &self.data {
            OutputData::F32(v) => Some(&v[..self.shape.volume()]),
            OutputData::I64(_) => None,
        }
    }

    /// The int64 values the last run wrote; `None` for a float32 tensor.
    pub fn i64s(&self) -> Option<&[i64]> {
        match &self.data {
            OutputData::I64(v) => Some(&v[..self.shape.volume()]),
            OutputData::F32(_) => None,
        }
    }

    /// Checks that `shape` fits, records it and returns the storage to fill (exactly
    /// `shape.volume()` elements). Backends call this; it never reallocates.
    pub fn prepare(&mut self, shape: &[usize]) -> Result<&mut OutputData, EngineError> {
        let Some(new_shape) = Shape::new(shape) else {
            return Err(EngineError::Output {
                tensor: self.name.clone(),
                reason: format!("rank {} exceeds {MAX_RANK}", shape.len()),
            });
        };
        let volume = new_shape.volume();
        if volume > self.capacity() {
            return Err(EngineError::Output {
                tensor: self.name.clone(),
                reason: format!(
                    "shape {new_shape} needs {volume} elements, the buffer holds {}",
                    self.capacity()
                ),
            });
        }
        self.shape = new_shape;
        Ok(&mut self.data)
    }
}

/// The outputs of a session, in contract order. Allocate once with
/// [`crate::Session::allocate_outputs`]; every run overwrites them.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    tensors: Vec<OutputTensor>,
}

impl Outputs {
    /// Outputs from their buffers, in contract order.
    pub fn new(tensors: Vec<OutputTensor>) -> Outputs {
        Outputs { tensors }
    }

    /// The output tensors, in contract order.
    pub fn tensors(&self) -> &[OutputTensor] {
        &self.tensors
    }

    /// Mutable access for backends.
    pub fn tensors_mut(&mut self) -> &mut [OutputTensor] {
        &mut self.tensors
    }

    /// The output named `name`.
    pub fn get(&self, name: &str) -> Option<&OutputTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_display_and_volume() {
        let shape = Shape::new(&[2, 9]).expect("rank 2");
        assert_eq!(shape.to_string(), "[2, 9]");
        assert_eq!(shape.volume(), 18);
        assert!(Shape::new(&[1, 2, 3, 4, 5]).is_none());
        assert_eq!(DType::F32.size_bytes(), 4);
        assert_eq!(DType::I64.size_bytes(), 8);
    }

    #[test]
    fn prepare_refuses_to_grow() {
        let mut out = OutputTensor::with_capacity("pose_update", DType::F32, 18);
        assert!(out.prepare(&[2, 9]).is_ok());
        assert_eq!(out.f32s().map(<[f32]>::len), Some(18));
        let err = out.prepare(&[3, 9]).expect_err("27 > 18");
        assert!(err.to_string().contains("pose_update"), "{err}");
        // A failed prepare keeps the last good shape.
        assert_eq!(out.shape().dims(), &[2, 9]);
    }
}
