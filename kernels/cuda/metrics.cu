// posed-kernels: ADD and ADD-S, the CUDA twins of `PoseErrorModel::add` / `adds`
// (kernels/src/metrics/pose_error.rs). Driven by kernels/src/cuda/metrics.rs.
//
// Arithmetic: f64 throughout, compiled with --fmad=false, so every per-point value is
// bit-identical to the CPU twin:
// - the host computes each pair's relative pose `delta = est^-1 * gt` with the same Rust
//   code as the CPU twin and passes it as 12 doubles (rotation row-major, translation);
// - `delta * p` is evaluated in nalgebra's order: ((r0 * x + r1 * y) + r2 * z) + t;
// - squared norms are ((x * x + y * y) + z * z), as nalgebra's `norm_squared` and the
//   k-d tree's leaf loop compute them; sqrt and division are IEEE-rounded in f64;
// - each pair's mean is a sequential sum over the points in the CPU twin's order (model
//   order for ADD, the k-d tree's order for ADD-S; the host uploads the points in that
//   order), divided by the number of points.
// The ADD-S nearest neighbour is brute force, exact: the minimum of the same set of
// squared distances the k-d tree would look at, seeded (as on the CPU) with the distance
// to the point's own partner, so a NaN pose gives NaN exactly as on the CPU.
//
// Layout: points are structure-of-arrays (xs, ys, zs, metres, object frame); per-point
// results go to `distances[point * n_pairs + pair]`, so consecutive threads write, and
// the per-pair sums read, consecutive addresses. The host keeps n_points * n_pairs below
// 2^31.

#define POSED_METRICS_BLOCK 256

// q = delta * p, in nalgebra's operation order (see above).
__device__ __forceinline__ void posed_apply_delta(const double* __restrict__ delta, double x,
                                                  double y, double z, double* qx, double* qy,
                                                  double* qz) {
    *qx = ((delta[0] * x + delta[1] * y) + delta[2] * z) + delta[9];
    *qy = ((delta[3] * x + delta[4] * y) + delta[5] * z) + delta[10];
    *qz = ((delta[6] * x + delta[7] * y) + delta[8] * z) + delta[11];
}

// ADD per point: |delta p - p| for every (point, pair).
extern "C" __global__ void add_point_distances_f64(const double* __restrict__ xs,
                                                   const double* __restrict__ ys,
                                                   const double* __restrict__ zs,
                                                   unsigned int n_points,
                                                   const double* __restrict__ deltas,
                                                   unsigned int n_pairs,
                                                   double* __restrict__ distances) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_points * n_pairs) {
        return;
    }
    const unsigned int point = i / n_pairs;
    const unsigned int pair = i % n_pairs;
    const double x = xs[point];
    const double y = ys[point];
    const double z = zs[point];
    double qx, qy, qz;
    posed_apply_delta(deltas + 12 * pair, x, y, z, &qx, &qy, &qz);
    const double wx = qx - x;
    const double wy = qy - y;
    const double wz = qz - z;
    distances[i] = sqrt((wx * wx + wy * wy) + wz * wz);
}

// ADD-S per point: the distance from delta p to the nearest model point, for every
// (point, pair). Model points are streamed through shared memory in tiles of one block.
extern "C" __global__ void adds_point_distances_f64(const double* __restrict__ xs,
                                                    const double* __restrict__ ys,
                                                    const double* __restrict__ zs,
                                                    unsigned int n_points,
                                                    const double* __restrict__ deltas,
                                                    unsigned int n_pairs,
                                                    double* __restrict__ distances) {
    __shared__ double tile_x[POSED_METRICS_BLOCK];
    __shared__ double tile_y[POSED_METRICS_BLOCK];
    __shared__ double tile_z[POSED_METRICS_BLOCK];

    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = i < n_points * n_pairs;
    double qx = 0.0;
    double qy = 0.0;
    double qz = 0.0;
    double best_sq = 0.0;
    if (active) {
        const unsigned int point = i / n_pairs;
        const unsigned int pair = i % n_pairs;
        const double x = xs[point];
        const double y = ys[point];
        const double z = zs[point];
        posed_apply_delta(deltas + 12 * pair, x, y, z, &qx, &qy, &qz);
        // The CPU twin's starting bound: the distance to the point's own partner.
        const double ox = qx - x;
        const double oy = qy - y;
        const double oz = qz - z;
        best_sq = (ox * ox + oy * oy) + oz * oz;
    }
    // Every thread of the block loads tiles (also the inactive ones past the end), so
    // that the barriers are reached by all of them.
    for (unsigned int start = 0; start < n_points; start += POSED_METRICS_BLOCK) {
        const unsigned int j = start + threadIdx.x;
        if (j < n_points) {
            tile_x[threadIdx.x] = xs[j];
            tile_y[threadIdx.x] = ys[j];
            tile_z[threadIdx.x] = zs[j];
        }
        __syncthreads();
        const unsigned int remaining = n_points - start;
        const unsigned int count =
            remaining < POSED_METRICS_BLOCK ? remaining : POSED_METRICS_BLOCK;
        if (active) {
            for (unsigned int k = 0; k < count; ++k) {
                const double dx = tile_x[k] - qx;
                const double dy = tile_y[k] - qy;
                const double dz = tile_z[k] - qz;
                const double d_sq = (dx * dx + dy * dy) + dz * dz;
                // Strictly smaller, as the k-d tree: a NaN bound stays NaN.
                best_sq = d_sq < best_sq ? d_sq : best_sq;
            }
        }
        __syncthreads();
    }
    if (active) {
        distances[i] = sqrt(best_sq);
    }
}

// The mean over points of each pair: a sequential sum in point order (the CPU twin's
// order), one thread per pair.
extern "C" __global__ void mean_over_points_f64(const double* __restrict__ distances,
                                                unsigned int n_points, unsigned int n_pairs,
                                                double* __restrict__ means) {
    const unsigned int pair = blockIdx.x * blockDim.x + threadIdx.x;
    if (pair >= n_pairs) {
        return;
    }
    double sum = 0.0;
    for (unsigned int point = 0; point < n_points; ++point) {
        sum += distances[point * n_pairs + pair];
    }
    means[pair] = sum / (double)n_points;
}
