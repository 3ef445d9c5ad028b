//! Shared by the GPU equivalence tests: a minimal reader for the bundled PLY models and
//! the device opening that skips, plainly, where there is no GPU.

#![allow(dead_code)] // Each test binary uses its own part.

use std::path::PathBuf;

use posed_kernels::cuda::CudaDevice;

/// The bundled ycbv-mini model `obj_{index + 1:06}.ply`.
pub fn model_path(index: usize) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../data/ycbv-mini/models/obj_{:06}.ply", index + 1))
}

/// A binary little-endian PLY mesh: positions (millimetres, converted to metres), normals
/// and colours per vertex, triangles. Just enough PLY for the bundled models.
pub struct PlyMesh {
    pub positions_m: Vec<[f32; 3]>,
    pub normals: Vec<[f32; 3]>,
    pub colors: Vec<[u8; 3]>,
    pub triangles: Vec<[u32; 3]>,
}

fn scalar_size(ty: &str) -> usize {
    match ty {
        "char" | "uchar" | "int8" | "uint8" => 1,
        "short" | "ushort" | "int16" | "uint16" => 2,
        "int" | "uint" | "float" | "int32" | "uint32" | "float32" => 4,
        "double" | "float64" => 8,
        other => panic!("PLY property type {other}"),
    }
}

pub fn read_ply(path: &PathBuf) -> PlyMesh {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let end = b"end_header\n";
    let header_len = bytes
        .windows(end.len())
        .position(|w| w == end)
        .expect("PLY header end")
        + end.len();
    let header = std::str::from_utf8(&bytes[..header_len]).expect("ASCII header");
    assert!(header.contains("format binary_little_endian 1.0"));
    let (mut n_vertices, mut n_faces) = (0, 0);
    let mut element = "";
    let mut vertex_properties: Vec<(String, String)> = Vec::new();
    let mut face_list: Option<(String, String)> = None;
    for line in header.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["element", "vertex", n] => {
                n_vertices = n.parse().expect("vertex count");
                element = "vertex";
            }
            ["element", "face", n] => {
                n_faces = n.parse().expect("face count");
                element = "face";
            }
            ["element", ..] => element = "other",
            ["property", "list", count, index, _] if element == "face" => {
                face_list = Some(((*count).to_owned(), (*index).to_owned()));
            }
            ["property", ty, name] if element == "vertex" => {
                vertex_properties.push(((*ty).to_owned(), (*name).to_owned()));
            }
            _ => {}
        }
    }
    let stride: usize = vertex_properties
        .iter()
        .map(|(ty, _)| scalar_size(ty))
        .sum();
    let offset_of = |wanted: &str, wanted_type: &str| {
        let index = vertex_properties
            .iter()
            .position(|(ty, name)| name == wanted && ty == wanted_type)
            .unwrap_or_else(|| panic!("no vertex property {wanted_type} {wanted}"));
        vertex_properties[..index]
            .iter()
            .map(|(ty, _)| scalar_size(ty))
            .sum::<usize>()
    };
    let body = &bytes[header_len..];
    let f32_at = |at: usize| f32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    let xyz = ["x", "y", "z"].map(|n| offset_of(n, "float"));
    let normal = ["nx", "ny", "nz"].map(|n| offset_of(n, "float"));
    let rgb = ["red", "green", "blue"].map(|n| offset_of(n, "uchar"));
    assert!(body.len() >= n_vertices * stride, "truncated vertex list");
    let mut mesh = PlyMesh {
        positions_m: Vec::with_capacity(n_vertices),
        normals: Vec::with_capacity(n_vertices),
        colors: Vec::with_capacity(n_vertices),
        triangles: Vec::with_capacity(n_faces),
    };
    for i in 0..n_vertices {
        let base = i * stride;
        mesh.positions_m
            .push(xyz.map(|offset| f32_at(base + offset) / 1000.0));
        mesh.normals
            .push(normal.map(|offset| f32_at(base + offset)));
        mesh.colors.push(rgb.map(|offset| body[base + offset]));
    }
    let (count_type, index_type) = face_list.expect("face vertex_indices list");
    assert_eq!((count_type.as_str(), index_type.as_str()), ("uchar", "int"));
    let mut at = n_vertices * stride;
    for _ in 0..n_faces {
        assert_eq!(body[at], 3, "only triangles");
        let index = |k: usize| {
            let start = at + 1 + 4 * k;
            i32::from_le_bytes(body[start..start + 4].try_into().expect("4 bytes")) as u32
        };
        mesh.triangles.push([index(0), index(1), index(2)]);
        at += 13;
    }
    assert_eq!(at, body.len(), "trailing bytes after the faces");
    mesh
}

/// Opens CUDA device 0 and says which it is, or prints `SKIPPED: no CUDA device (...)`.
pub fn open_or_skip() -> Option<CudaDevice> {
    match CudaDevice::open(0) {
        Ok(device) => {
            eprintln!(
                "CUDA device 0: {} (sm_{}{}), driver CUDA {}.{}",
                device.name(),
                device.compute_capability().0,
                device.compute_capability().1,
                device.driver_version().0,
                device.driver_version().1
            );
            Some(device)
        }
        Err(e) => {
            eprintln!("SKIPPED: no CUDA device ({e})");
            None
        }
    }
}
