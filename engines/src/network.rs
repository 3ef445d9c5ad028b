//! A network as posed loads it: the ONNX file, its sidecar, and the checked contract.
//!
//! The sidecar is a TOML file next to the ONNX file with the same stem
//! (`refiner.onnx` -> `refiner.toml`); its format is documented in `engines/README.md`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::contract::{
    check_constant_shapes, decode_onnx, Contract, DeclaredDim, DetectorLayout, DimSpec, Role,
    Signature, TensorSpec,
};
use crate::EngineError;

/// The sidecar format this build reads.
pub const SIDECAR_FORMAT: u32 = 1;

/// Detector settings from the sidecar's `[detector]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorInfo {
    /// The tensor layout.
    pub layout: DetectorLayout,
    /// The `labels` output value that names `labels[0]`.
    pub first_category_id: i64,
    /// Detections per image the output buffers hold.
    pub max_detections: usize,
}

/// What the sidecar says about a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// The network's role.
    pub role: Role,
    /// The objects the network knows (for a detector: category id order).
    pub labels: Vec<String>,
    /// Informational: the dataset it was trained for.
    pub dataset: Option<String>,
    /// Informational: one line about the network.
    pub description: Option<String>,
    /// Detector settings (`Some` exactly when the role is detector).
    pub detector: Option<DetectorInfo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SidecarFile {
    format: u32,
    role: Role,
    labels: Vec<String>,
    dataset: Option<String>,
    description: Option<String>,
    detector: Option<DetectorTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectorTable {
    #[serde(default)]
    layout: DetectorLayout,
    #[serde(default = "default_first_category_id")]
    first_category_id: i64,
    #[serde(default = "default_max_detections")]
    max_detections: usize,
}

fn default_first_category_id() -> i64 {
    1
}

fn default_max_detections() -> usize {
    100
}

/// Most detections per image a sidecar may ask buffers for.
const MAX_DETECTIONS_LIMIT: usize = 10_000;

impl Sidecar {
    /// The sidecar path for an ONNX file: same folder and stem, extension `toml`.
    pub fn path_for(onnx_path: &Path) -> PathBuf {
        onnx_path.with_extension("toml")
    }

    /// Parses and validates sidecar text read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Sidecar, EngineError> {
        let error = |field: &str, reason: String| EngineError::Sidecar {
            path: path.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| error("(file)", e.to_string()))?;
        let file: SidecarFile = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = match e.path().to_string() {
                root if root == "." => "(top level)".to_owned(),
                path => path,
            };
            let reason = e.into_inner().message().trim().to_owned();
            error(&field, reason)
        })?;
        if file.format != SIDECAR_FORMAT {
            return Err(error(
                "format",
                format!(
                    "expected {SIDECAR_FORMAT} (the sidecar format this posed reads), found {}",
                    file.format
                ),
            ));
        }
        if file.labels.is_empty() {
            return Err(error(
                "labels",
                "expected at least one label, found none".to_owned(),
            ));
        }
        let mut seen = HashSet::new();
        for (i, label) in file.labels.iter().enumerate() {
            if label.trim().is_empty() {
                return Err(error(
                    &format!("labels[{i}]"),
                    "expected a label, found an empty string".to_owned(),
                ));
            }
            if !seen.insert(label.as_str()) {
                return Err(error(
                    &format!("labels[{i}]"),
                    format!("`{label}` appears twice"),
                ));
            }
        }
        let detector = match (file.role, file.detector) {
            (Role::Detector, table) => {
                let table = table.unwrap_or(DetectorTable {
                    layout: DetectorLayout::default(),
                    first_category_id: default_first_category_id(),
                    max_detections: default_max_detections(),
                });
                if table.max_detections == 0 || table.max_detections > MAX_DETECTIONS_LIMIT {
                    return Err(error(
                        "detector.max_detections",
                        format!(
                            "expected 1 to {MAX_DETECTIONS_LIMIT}, found {}",
                            table.max_detections
                        ),
                    ));
                }
                Some(DetectorInfo {
                    layout: table.layout,
                    first_category_id: table.first_category_id,
                    max_detections: table.max_detections,
                })
            }
            (role, Some(_)) => {
                return Err(error(
                    "detector",
                    format!("a [detector] table is only for role = \"detector\", this network's role is \"{role}\""),
                ));
            }
            (_, None) => None,
        };
        Ok(Sidecar {
            role: file.role,
            labels: file.labels,
            dataset: file.dataset,
            description: file.description,
            detector,
        })
    }

    /// The contract this sidecar's network must meet.
    pub fn contract(&self) -> Contract {
        let layout = self.detector.as_ref().map(|d| d.layout).unwrap_or_default();
        Contract::for_role(self.role, layout)
    }

    /// The label a detector's `labels` output value names, if any.
    pub fn label_for_category(&self, category_id: i64) -> Option<&str> {
        let first = self.detector.as_ref().map_or(1, |d| d.first_category_id);
        let index = usize::try_from(category_id.checked_sub(first)?).ok()?;
        self.labels.get(index).map(String::as_str)
    }
}

/// A loaded, checked network: the ONNX bytes, their digest, the sidecar and the contract.
#[derive(Debug, Clone)]
pub struct Network {
    path: PathBuf,
    onnx: Vec<u8>,
    sha256: [u8; 32],
    sidecar: Sidecar,
    signature: Signature,
}

impl Network {
    /// Reads `onnx_path` and its sidecar and checks the file against the role's contract.
    pub fn open(onnx_path: &Path) -> Result<Network, EngineError> {
        // The ONNX file first: a mistyped path is about the file, not its sidecar.
        let onnx =
            std::fs::read(onnx_path).map_err(|e| EngineError::io(onnx_path, "reading", e))?;
        let sidecar_path = Sidecar::path_for(onnx_path);
        let text = std::fs::read_to_string(&sidecar_path).map_err(|e| EngineError::Sidecar {
            path: sidecar_path.clone(),
            field: "(file)".to_owned(),
            reason: format!(
                "cannot read the sidecar of {} ({e}); every network needs one, see engines/README.md",
                onnx_path.display()
            ),
        })?;
        let sidecar = Sidecar::parse(&sidecar_path, &text)?;
        Network::from_parts(onnx_path, onnx, sidecar)
    }

    /// A network from bytes already read (`path` is used in messages and for the backend).
    pub fn from_parts(
        path: &Path,
        onnx: Vec<u8>,
        sidecar: Sidecar,
    ) -> Result<Network, EngineError> {
        let model = decode_onnx(path, &onnx)?;
        let signature = Signature::from_model(&model);
        check_constant_shapes(path, &model)?;
        drop(model);
        let contract = sidecar.contract();
        contract.check(path, &signature)?;
        if let Some(detector) = &sidecar.detector {
            let declared = |name: &str| {
                let tensor = signature.outputs.iter().find(|t| t.name == name)?;
                let dims = tensor.dims.as_ref()?;
                Some((tensor, dims.as_slice()))
            };
            let shapes = contract.outputs.iter().filter_map(|spec| {
                let (tensor, dims) = declared(spec.name)?;
                let found = dims
                    .iter()
                    .map(|dim| match dim {
                        DeclaredDim::Fixed(n) => usize::try_from(*n).ok(),
                        _ => None,
                    })
                    .collect::<Vec<_>>();
                Some((spec, found, tensor.to_string()))
            });
            for (spec, dims, found) in shapes {
                check_detections(path, spec, &dims, detector.max_detections, &found)?;
            }
        }
        let sha256 = Sha256::digest(&onnx).into();
        Ok(Network {
            path: path.to_owned(),
            onnx,
            sha256,
            sidecar,
            signature,
        })
    }

    /// The ONNX file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ONNX file's bytes.
    pub fn onnx_bytes(&self) -> &[u8] {
        &self.onnx
    }

    /// sha256 of the ONNX bytes.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// sha256 of the ONNX bytes as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    /// The sidecar.
    pub fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }

    /// The role's contract (already checked).
    pub fn contract(&self) -> Contract {
        self.sidecar.contract()
    }

    /// The declared inputs and outputs.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }
}

/// Checks the detection count (`N`) of a detector output against the sidecar's
/// `max_detections`, where the graph fixes it (`dims`: the output's dimensions, `None`
/// where not known): a graph that always writes more detections than the buffers hold
/// would fail every run, so it is refused when the network is checked and loaded.
pub(crate) fn check_detections(
    path: &Path,
    spec: &TensorSpec,
    dims: &[Option<usize>],
    max_detections: usize,
    found: &str,
) -> Result<(), EngineError> {
    if dims.len() != spec.dims.len() {
        return Ok(());
    }
    for (want, got) in spec.dims.iter().zip(dims) {
        if let (DimSpec::Any(name), Some(n)) = (want, got) {
            if *n > max_detections {
                return Err(EngineError::Contract {
                    path: path.to_owned(),
                    tensor: spec.name.to_owned(),
                    expected: format!(
                        "output {spec} with {name} at most {max_detections} \
                         (detector.max_detections in {})",
                        Sidecar::path_for(path).display()
                    ),
                    found: format!(
                        "{found}: {n} detections per image; raise max_detections to {n} or more"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
