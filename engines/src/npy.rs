//! NumPy `.npy` files (format 1.0 to 3.0, little-endian, C order), float32 and int64: the
//! exchange format of `posed engines run` and of the golden outputs in
//! `data/networks/golden/`. Written by hand because the format is one header line and
//! the crates for it pull in ndarray versions tract does not use.

use std::fs;
use std::path::Path;

use crate::tensor::DType;
use crate::EngineError;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The values of an `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `<f4`.
    F32(Vec<f32>),
    /// `<i8`.
    I64(Vec<i64>),
}

/// An array read from or written to an `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions, C order.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: NpyData,
}

impl NpyArray {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            NpyData::F32(_) => DType::F32,
            NpyData::I64(_) => DType::I64,
        }
    }

    /// The float32 values, or an error naming `path` for an int64 array.
    pub fn into_f32(self, path: &Path) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        match self.data {
            NpyData::F32(values) => Ok((self.shape, values)),
            NpyData::I64(_) => Err(npy_error(
                path,
                "expected float32 ('<f4') values, found int64 ('<i8')",
            )),
        }
    }
}

fn npy_error(path: &Path, reason: &str) -> EngineError {
    EngineError::Config {
        what: "npy file",
        reason: format!("{}: {reason}", path.display()),
    }
}

/// Reads an `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray, EngineError> {
    let bytes = fs::read(path).map_err(|e| EngineError::io(path, "reading", e))?;
    parse_npy(path, &bytes)
}

/// Parses `.npy` bytes read from `path` (used in messages only).
pub fn parse_npy(path: &Path, bytes: &[u8]) -> Result<NpyArray, EngineError> {
    let bad = |reason: String| npy_error(path, &reason);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("not an .npy file (no \\x93NUMPY magic)".to_owned()));
    }
    let major = bytes[6];
    let (header_len, header_start): (usize, usize) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header".to_owned()));
            }
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (usize::try_from(len).unwrap_or(usize::MAX), 12)
        }
        other => {
            return Err(bad(format!(
                "format version {other}.x, expected 1.0, 2.0 or 3.0"
            )))
        }
    };
    let header_end = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len());
    let Some(header_end) = header_end else {
        return Err(bad("truncated header".to_owned()));
    };
    let header = std::str::from_utf8(&bytes[header_start..header_end])
        .map_err(|_| bad("header is not text".to_owned()))?;
    let descr = header_value(header, "descr")
        .ok_or_else(|| bad(format!("no 'descr' in header {header:?}")))?;
    let fortran = header_value(header, "fortran_order")
        .ok_or_else(|| bad("no 'fortran_order' in header".to_owned()))?;
    let shape_text =
        header_value(header, "shape").ok_or_else(|| bad("no 'shape' in header".to_owned()))?;
    if fortran.trim() != "False" {
        return Err(bad(
            "Fortran-order arrays are not supported; save with C order".to_owned(),
        ));
    }
    let shape =
        parse_shape(shape_text).ok_or_else(|| bad(format!("unreadable shape {shape_text}")))?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("shape overflows".to_owned()))?;
    let body = &bytes[header_end..];
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let element_size = match descr {
        "<f4" => 4,
        "<i8" => 8,
        other => {
            return Err(bad(format!(
                "element type '{other}', expected float32 '<f4' or int64 '<i8' (little-endian)"
            )))
        }
    };
    let expected_len = count
        .checked_mul(element_size)
        .ok_or_else(|| bad("shape overflows".to_owned()))?;
    if body.len() != expected_len {
        return Err(bad(format!(
            "shape {shape:?} needs {expected_len} bytes of data, the file has {}",
            body.len()
        )));
    }
    let data = if element_size == 4 {
        NpyData::F32(
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    } else {
        NpyData::I64(
            body.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        )
    };
    Ok(NpyArray { shape, data })
}

/// The text after `'key':` in a header dict, up to the next top-level comma.
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let start = quoted
        .iter()
        .find_map(|q| header.find(q.as_str()).map(|i| i + q.len()))?;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    if rest.starts_with('(') {
        let end = rest.find(')')?;
        return Some(&rest[..=end]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

fn parse_shape(text: &str) -> Option<Vec<usize>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

/// Writes an `.npy` file (format 1.0) atomically: a temporary file renamed into place.
pub fn write_npy(path: &Path, array: &NpyArray) -> Result<(), EngineError> {
    let (descr, body): (&str, Vec<u8>) = match &array.data {
        NpyData::F32(values) => ("<f4", values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        NpyData::I64(values) => ("<i8", values.iter().flat_map(|v| v.to_le_bytes()).collect()),
    };
    let count: usize = array.shape.iter().product();
    let values = body.len() / if descr == "<f4" { 4 } else { 8 };
    if count != values {
        return Err(npy_error(
            path,
            &format!(
                "shape {:?} holds {count} values, the array has {values}",
                array.shape
            ),
        ));
    }
    let dims: Vec<String> = array.shape.iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts on a 64-byte boundary, ending the header with a newline.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let header_len = u16::try_from(header.len()).map_err(|_| npy_error(path, "header too long"))?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + 4 + header.len() + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&header_len.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&body);
    let tmp = path.with_extension("npy.tmp");
    // Named by the file asked for: the temporary one is an implementation detail.
    fs::write(&tmp, &bytes).map_err(|e| EngineError::io(path, "writing", e))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        EngineError::io(path, "renaming into place", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_f32_and_i64() {
        let dir = tempfile::tempdir().expect("tempdir");
        for array in [
            NpyArray {
                shape: vec![2, 3],
                data: NpyData::F32(vec![0.0, 1.5, -2.0, 3.25, 1e-7, f32::MAX]),
            },
            NpyArray {
                shape: vec![4],
                data: NpyData::I64(vec![1, -2, i64::MAX, 0]),
            },
            NpyArray {
                shape: vec![],
                data: NpyData::F32(vec![7.0]),
            },
        ] {
            let path = dir.path().join("a.npy");
            write_npy(&path, &array).expect("write");
            let bytes = fs::read(&path).expect("read");
            assert_eq!(
                (bytes.len() - array_bytes(&array)) % 64,
                0,
                "data is 64-byte aligned"
            );
            assert_eq!(read_npy(&path).expect("read back"), array);
        }
    }

    #[test]
    fn a_failed_write_names_the_file_asked_for() {
        let path = Path::new("/nonexistent/dir/x.npy");
        let array = NpyArray {
            shape: vec![1],
            data: NpyData::F32(vec![1.0]),
        };
        let message = write_npy(path, &array)
            .expect_err("no such dir")
            .to_string();
        assert!(
            message.starts_with("/nonexistent/dir/x.npy: writing: "),
            "{message}"
        );
        assert!(!message.contains(".tmp"), "{message}");
    }

    fn array_bytes(array: &NpyArray) -> usize {
        match &array.data {
            NpyData::F32(v) => v.len() * 4,
            NpyData::I64(v) => v.len() * 8,
        }
    }

    fn raw(header: &str, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn broken_files_name_the_problem() {
        let path = Path::new("in.npy");
        let check = |bytes: &[u8], expected: &str| {
            let err = parse_npy(path, bytes).expect_err(expected);
            let message = err.to_string();
            assert!(
                message.contains("in.npy") && message.contains(expected),
                "{message}"
            );
        };
        check(b"hello world, not numpy", "magic");
        let f8 = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }\n";
        check(&raw(f8, &1.0f64.to_le_bytes()), "'<f8'");
        let f4 = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        check(&raw(f4, &[0, 0, 0, 0]), "needs 8 bytes");
        let fortran = "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }\n";
        check(&raw(fortran, &[0, 0, 0, 0]), "Fortran");
        let no_shape = "{'descr': '<f4', 'fortran_order': False}\n";
        check(&raw(no_shape, &[0, 0, 0, 0]), "no 'shape'");
        let mut truncated = raw(f4, &[0; 8]);
        truncated.truncate(20);
        check(&truncated, "truncated header");
        assert!(parse_npy(path, &raw(f4, &[0; 8])).is_ok());
    }
}
