//! ADD and ADD-S on the GPU for many pose pairs against one model: the twins of
//! [`PoseErrorModel::add`](crate::metrics::PoseErrorModel::add) and
//! [`PoseErrorModel::adds`](crate::metrics::PoseErrorModel::adds) (`kernels/cuda/metrics.cu`).
//!
//! The math is f64, in the CPU twin's operation order, compiled with `--fmad=false`, and
//! each pair's mean is summed in the CPU twin's point order: the results are expected to
//! be bit-identical to the CPU (the equivalence test allows a relative 1e-12). The ADD-S
//! nearest neighbour is an exact brute-force search, `O(points^2)` per pair: fine on a
//! discrete GPU, a few hundred pairs per second on Orin's f64 units for a 4,000-point
//! model.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{driver_error, guarded, CompiledImage, CudaDevice, METRICS_SOURCE};
use crate::metrics::nearest::KdTree;
use crate::{KernelError, Pose};

/// Threads per block; `POSED_METRICS_BLOCK` in `metrics.cu` (the ADD-S shared tile).
const BLOCK: u32 = 256;

/// Device memory for per-point distances, which bounds the pairs per launch.
const SCRATCH_BYTES: usize = 64 << 20;

/// The kernels index points by `point * n_pairs + pair` in 32 bits.
const MAX_ELEMENTS: usize = 1 << 31;

/// One model's points on the GPU, and the buffers for batches of pose pairs.
///
/// A session in the sense of DESIGN.md: it owns its CUDA stream, its kernel handles
/// (resolved once, here) and every device buffer; a batch allocates no device memory.
/// Evaluation, not the frame loop: each launch still lets cudarc build its small argument
/// list on the heap. On an error, the contents of `out` are unspecified.
pub struct GpuPoseMetrics {
    stream: Arc<CudaStream>,
    add_distances: CudaFunction,
    adds_distances: CudaFunction,
    mean: CudaFunction,
    image: CompiledImage,
    n_points: usize,
    /// Model points in the CPU ADD order (as given), structure of arrays.
    add_points: [CudaSlice<f64>; 3],
    /// Model points in the CPU ADD-S order (the k-d tree's), structure of arrays.
    adds_points: [CudaSlice<f64>; 3],
    pairs_per_launch: usize,
    /// Host staging for the relative poses of one launch, 12 values per pair.
    deltas_host: Vec<f64>,
    deltas: CudaSlice<f64>,
    /// `[point][pair]` per-point distances of one launch.
    distances: CudaSlice<f64>,
    means: CudaSlice<f64>,
}

impl std::fmt::Debug for GpuPoseMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuPoseMetrics")
            .field("n_points", &self.n_points)
            .field("pairs_per_launch", &self.pairs_per_launch)
            .field("target", &self.image.target)
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Metric {
    Add,
    Adds,
}

impl GpuPoseMetrics {
    /// Compiles (or loads from the cache) `metrics.cu` for `device`, uploads the model's
    /// points (metres, object frame; every mesh vertex, as for
    /// [`PoseErrorModel::new`](crate::metrics::PoseErrorModel::new)) once, and allocates
    /// the buffers of a batch. The same inputs are refused as by the CPU twin.
    pub fn new(device: &CudaDevice, points_m: &[[f64; 3]]) -> Result<Self, KernelError> {
        if points_m.is_empty() {
            return Err(KernelError::Empty {
                what: "model point set",
            });
        }
        if points_m.iter().flatten().any(|v| !v.is_finite()) {
            return Err(KernelError::NotFinite {
                what: "model point",
            });
        }
        let n_points = points_m.len();
        if n_points >= MAX_ELEMENTS {
            return Err(KernelError::LimitExceeded {
                what: "model points for the GPU metrics",
                limit: MAX_ELEMENTS - 1,
                found: n_points,
            });
        }
        let pairs_per_launch = (SCRATCH_BYTES / (8 * n_points))
            .min((MAX_ELEMENTS - 1) / n_points)
            .clamp(1, 65_536);

        let module = device.load_module(&METRICS_SOURCE)?;
        let add_distances = module.function("add_point_distances_f64")?;
        let adds_distances = module.function("adds_point_distances_f64")?;
        let mean = module.function("mean_over_points_f64")?;
        let image = module.image().clone();

        // ADD-S sums in the order the CPU twin visits points: its k-d tree's.
        let tree = KdTree::new(points_m);
        let soa = |points: &[[f64; 3]]| {
            let axis = |a: usize| points.iter().map(|p| p[a]).collect::<Vec<f64>>();
            [axis(0), axis(1), axis(2)]
        };
        let add_host = soa(points_m);
        let adds_host = soa(tree.points());

        guarded("uploading the model points", || {
            let stream = device
                .context()
                .new_stream()
                .map_err(driver_error("cuStreamCreate"))?;
            let upload = |values: &[f64]| {
                stream
                    .clone_htod(values)
                    .map_err(driver_error("cuMemcpyHtoD"))
            };
            let add_points = [
                upload(&add_host[0])?,
                upload(&add_host[1])?,
                upload(&add_host[2])?,
            ];
            let adds_points = [
                upload(&adds_host[0])?,
                upload(&adds_host[1])?,
                upload(&adds_host[2])?,
            ];
            let alloc = |len: usize| {
                stream
                    .alloc_zeros::<f64>(len)
                    .map_err(driver_error("cuMemAlloc"))
            };
            let deltas = alloc(12 * pairs_per_launch)?;
            let distances = alloc(n_points * pairs_per_launch)?;
            let means = alloc(pairs_per_launch)?;
            stream
                .synchronize()
                .map_err(driver_error("cuStreamSynchronize"))?;
            Ok(Self {
                stream,
                add_distances,
                adds_distances,
                mean,
                image,
                n_points,
                add_points,
                adds_points,
                pairs_per_launch,
                deltas_host: vec![0.0; 12 * pairs_per_launch],
                deltas,
                distances,
                means,
            })
        })
    }

    /// The number of model points.
    pub fn n_points(&self) -> usize {
        self.n_points
    }

    /// How many pairs one launch handles (larger batches take several).
    pub fn pairs_per_launch(&self) -> usize {
        self.pairs_per_launch
    }

    /// The compiled `metrics.cu`: target, NVRTC warnings (the log), cache status.
    pub fn compiled_image(&self) -> &CompiledImage {
        &self.image
    }

    /// ADD (mean distance between corresponding points, metres) of each
    /// `(gt, est)` pair (poses `camera_from_object`) into `out[i]`.
    pub fn add_batch(
        &mut self,
        pairs: &[(Pose, Pose)],
        out: &mut [f64],
    ) -> Result<(), KernelError> {
        self.run(Metric::Add, pairs, out)
    }

    /// ADD-S (for each GT-posed point, the distance to the nearest estimate-posed point,
    /// averaged over the points; metres) of each `(gt, est)` pair into `out[i]`.
    pub fn adds_batch(
        &mut self,
        pairs: &[(Pose, Pose)],
        out: &mut [f64],
    ) -> Result<(), KernelError> {
        self.run(Metric::Adds, pairs, out)
    }

    fn run(
        &mut self,
        metric: Metric,
        pairs: &[(Pose, Pose)],
        out: &mut [f64],
    ) -> Result<(), KernelError> {
        if out.len() != pairs.len() {
            return Err(KernelError::SizeMismatch {
                what: "output slice for the GPU pose metrics",
                expected: pairs.len(),
                found: out.len(),
            });
        }
        guarded("GPU pose metrics", || {
            for (pairs, out) in pairs
                .chunks(self.pairs_per_launch)
                .zip(out.chunks_mut(self.pairs_per_launch))
            {
                self.launch(metric, pairs, out)?;
            }
            Ok(())
        })
    }

    /// One launch: relative poses up, per-point distances, per-pair means, means down.
    fn launch(
        &mut self,
        metric: Metric,
        pairs: &[(Pose, Pose)],
        out: &mut [f64],
    ) -> Result<(), KernelError> {
        let n_pairs = pairs.len();
        if n_pairs == 0 {
            return Ok(());
        }
        for ((gt, est), delta) in pairs.iter().zip(self.deltas_host.chunks_exact_mut(12)) {
            pack_delta(gt, est, delta);
        }
        // Both fit in u32: n_points * pairs_per_launch < 2^31 (see `new`).
        let n_points_u32 = self.n_points as u32;
        let n_pairs_u32 = n_pairs as u32;
        let elements = self.n_points * n_pairs;
        let distances_config = LaunchConfig {
            grid_dim: (elements.div_ceil(BLOCK as usize) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mean_config = LaunchConfig {
            grid_dim: (n_pairs_u32.div_ceil(BLOCK), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (function, points) = match metric {
            Metric::Add => (&self.add_distances, &self.add_points),
            Metric::Adds => (&self.adds_distances, &self.adds_points),
        };

        let stream = &self.stream;
        {
            let mut deltas = self.deltas.slice_mut(..12 * n_pairs);
            stream
                .memcpy_htod(&self.deltas_host[..12 * n_pairs], &mut deltas)
                .map_err(driver_error("cuMemcpyHtoDAsync"))?;
        }
        let mut builder = stream.launch_builder(function);
        builder
            .arg(&points[0])
            .arg(&points[1])
            .arg(&points[2])
            .arg(&n_points_u32)
            .arg(&self.deltas)
            .arg(&n_pairs_u32)
            .arg(&mut self.distances);
        // SAFETY: the kernel's parameters are (const double* xs, ys, zs, unsigned n_points,
        // const double* deltas, unsigned n_pairs, double* distances), matching the
        // arguments in order and type; xs/ys/zs hold n_points values, deltas 12 * n_pairs
        // (written above), distances n_points * pairs_per_launch >= n_points * n_pairs;
        // the grid covers exactly the n_points * n_pairs elements the kernel checks.
        unsafe { builder.launch(distances_config) }
            .map_err(driver_error("launch of the per-point distance kernel"))?;

        let mut builder = stream.launch_builder(&self.mean);
        builder
            .arg(&self.distances)
            .arg(&n_points_u32)
            .arg(&n_pairs_u32)
            .arg(&mut self.means);
        // SAFETY: mean_over_points_f64(const double* distances, unsigned n_points,
        // unsigned n_pairs, double* means): distances holds the n_points * n_pairs values
        // written by the launch above (same stream, so ordered), means has room for
        // pairs_per_launch >= n_pairs values; threads past n_pairs return.
        unsafe { builder.launch(mean_config) }
            .map_err(driver_error("launch of mean_over_points_f64"))?;

        stream
            .memcpy_dtoh(&self.means.slice(..n_pairs), out)
            .map_err(driver_error("cuMemcpyDtoHAsync"))?;
        stream
            .synchronize()
            .map_err(driver_error("cuStreamSynchronize"))
    }
}

/// The relative pose of a pair as the kernels take it: rotation row-major, then
/// translation. Exactly the CPU twin's `est^-1 * gt`, which maps a GT-posed point into the
/// estimate's object frame.
fn pack_delta(gt: &Pose, est: &Pose, delta: &mut [f64]) {
    let relative = est.inverse().compose(gt);
    delta[..9].copy_from_slice(&relative.rotation_row_major());
    delta[9..12].copy_from_slice(relative.translation_m.as_slice());
}

#[cfg(test)]
mod tests {
    //! `metrics.cu`'s arithmetic, transcribed line by line into Rust (which never contracts
    //! into FMA, like `--fmad=false`), against the CPU twin: bit-identical. This checks
    //! the host side (delta packing, point orders) and the operation order on any
    //! machine; the GPU equivalence test checks the kernels themselves.

    use super::*;
    use crate::metrics::PoseErrorModel;
    use nalgebra::{Rotation3, Vector3};

    fn apply(d: &[f64], x: f64, y: f64, z: f64) -> (f64, f64, f64) {
        (
            ((d[0] * x + d[1] * y) + d[2] * z) + d[9],
            ((d[3] * x + d[4] * y) + d[5] * z) + d[10],
            ((d[6] * x + d[7] * y) + d[8] * z) + d[11],
        )
    }

    fn add_kernel(points: &[[f64; 3]], d: &[f64]) -> f64 {
        let mut sum = 0.0;
        for p in points {
            let (qx, qy, qz) = apply(d, p[0], p[1], p[2]);
            let (wx, wy, wz) = (qx - p[0], qy - p[1], qz - p[2]);
            sum += ((wx * wx + wy * wy) + wz * wz).sqrt();
        }
        sum / points.len() as f64
    }

    fn adds_kernel(points: &[[f64; 3]], d: &[f64]) -> f64 {
        let mut sum = 0.0;
        for p in points {
            let (qx, qy, qz) = apply(d, p[0], p[1], p[2]);
            let (ox, oy, oz) = (qx - p[0], qy - p[1], qz - p[2]);
            let mut best_sq = (ox * ox + oy * oy) + oz * oz;
            for c in points {
                let (dx, dy, dz) = (c[0] - qx, c[1] - qy, c[2] - qz);
                let d_sq = (dx * dx + dy * dy) + dz * dz;
                best_sq = if d_sq < best_sq { d_sq } else { best_sq };
            }
            sum += best_sq.sqrt();
        }
        sum / points.len() as f64
    }

    #[test]
    fn the_kernel_arithmetic_is_bit_identical_to_the_cpu_twin() {
        // A lumpy surface-like cloud: a deformed sphere of 700 points.
        let points: Vec<[f64; 3]> = (0..700)
            .map(|i| {
                let t = i as f64 * 0.618_033_988_75;
                let z = 1.0 - 2.0 * (i as f64 + 0.5) / 700.0;
                let r = (1.0 - z * z).sqrt();
                let scale = 0.05 + 0.01 * (3.0 * t).sin();
                [scale * r * t.cos(), 0.7 * scale * r * t.sin(), scale * z]
            })
            .collect();
        let model = PoseErrorModel::new(points.clone(), 0.1, vec![Pose::identity()]).unwrap();
        let tree_order = KdTree::new(&points).points().to_vec();
        let pose = |axis_angle: [f64; 3], t: [f64; 3]| Pose {
            rotation: *Rotation3::new(Vector3::from(axis_angle)).matrix(),
            translation_m: Vector3::from(t),
        };
        let gt = pose([0.3, -1.2, 0.4], [0.05, -0.02, 0.8]);
        for est in [
            gt,
            pose([0.3, -1.2, 0.4 + 1e-9], [0.05, -0.02, 0.8]),
            pose([0.31, -1.19, 0.42], [0.052, -0.021, 0.81]),
            pose([2.0, 0.5, -1.0], [0.2, 0.1, 1.3]),
            pose([-0.1, 3.0, 0.0], [5.0, -3.0, 12.0]),
        ] {
            let mut delta = [0.0; 12];
            pack_delta(&gt, &est, &mut delta);
            assert_eq!(
                add_kernel(&points, &delta).to_bits(),
                model.add(&gt, &est).to_bits()
            );
            assert_eq!(
                adds_kernel(&tree_order, &delta).to_bits(),
                model.adds(&gt, &est).to_bits()
            );
        }
    }
}
