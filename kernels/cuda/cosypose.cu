// posed-kernels: CosyPose's crop geometry and pose update, the CUDA twins of
// kernels/src/cosypose/crop.rs (`project_robust`, `crop_box`, `k_crop`, `roi_align_rgb8`)
// and kernels/src/cosypose/update.rs (`rotation_from_6d`, `apply_update`), operation for
// operation. Driven by kernels/src/cuda/cosypose.rs (`GpuCosyPose`).
//
// Kernels, batched over B objects:
// - cosypose_crop: one block per object; its threads project the object's points
//   robustly and reduce min / max, then thread 0 computes the crop box and K_crop in f64.
// - cosypose_roi_align_rgb8: one thread per output pixel of each object (blockIdx.y),
//   RoIAlign of the 8-bit RGB image over the object's crop box into three f32 planes of
//   240 x 320 of the network input.
// - cosypose_apply_update: one thread per object, the 6D rotation and the image-space
//   update in f64.
// Errors become status codes (0 ok), which the host turns into the CPU twin's errors.
//
// Bit-identical to the CPU because:
// - the host compiles with --fmad=false: every `a * b + c` is a rounded multiply and a
//   rounded add, and the expressions below are written in the CPU's (nalgebra's) order,
//   left to right: a 3 x 3 product row is ((a0 * b0 + a1 * b1) + a2 * b2), a squared norm
//   ((x * x + y * y) + z * z);
// - f64 division and sqrt are IEEE-rounded in CUDA; f32 division is the explicit
//   __fdiv_rn whatever -prec-div says; denormals are kept (no --ftz);
// - fmin / fmax / fmaxf return the other operand for a NaN, as Rust's f64::min / max and
//   f32::max; min and max over a set do not depend on the order (the signs of zero they
//   may pick differently are removed by the fabs that follows), so the block reduction
//   gives the CPU's sequential result;
// - f64 -> f32 is __double2float_rn (round to nearest even, overflow to infinity), as
//   Rust's `as f32`; u8 and small unsigned integers become floats exactly; the texel
//   coordinate, in [0, size], is truncated by __float2uint_rz as Rust's `as usize`.
//
// Layout (shared with cosypose.rs): points are xyz f32 triples in metres, each object's
// starting at object_first_point[object]; poses are 12 doubles (rotation row-major, then
// translation in metres); K and K_crop are 9 doubles, row-major; boxes are 4 doubles
// (x1, y1, x2, y2); network outputs are 9 floats (a1, a2, vx, vy, vz); the image is
// row-major H x W x 3 bytes.

#define POSED_CROP_BLOCK 256
#define POSED_CROP_HEIGHT 240
#define POSED_CROP_WIDTH 320
#define POSED_CROP_SCALE 1.4
#define POSED_MIN_DEPTH_M 0.1
#define POSED_ROI_RATIO 4
#define POSED_MIN_NORM 1e-12

// Status codes of cosypose_crop (the errors of crop_box, then k_crop).
#define POSED_CROP_OK 0u
#define POSED_CROP_NO_POINTS 1u
#define POSED_CROP_NOT_FINITE 2u
#define POSED_CROP_NOT_POSITIVE 3u

// Status codes of cosypose_apply_update (the errors of apply_update, in its order).
#define POSED_UPDATE_OK 0u
#define POSED_UPDATE_6D_NOT_FINITE 1u
#define POSED_UPDATE_A1_ZERO 2u
#define POSED_UPDATE_A2_PARALLEL 3u
#define POSED_UPDATE_T_NOT_FINITE 4u

// project_robust: [su, sv, s] = K (R p + t), (u, v) = (su, sv) / max(s, 0.1).
__device__ __forceinline__ void posed_project_robust(const double* __restrict__ k,
                                                     const double* __restrict__ pose, double x,
                                                     double y, double z, double* u, double* v) {
    const double px = ((pose[0] * x + pose[1] * y) + pose[2] * z) + pose[9];
    const double py = ((pose[3] * x + pose[4] * y) + pose[5] * z) + pose[10];
    const double pz = ((pose[6] * x + pose[7] * y) + pose[8] * z) + pose[11];
    const double su = (k[0] * px + k[1] * py) + k[2] * pz;
    const double sv = (k[3] * px + k[4] * py) + k[5] * pz;
    const double s = (k[6] * px + k[7] * py) + k[8] * pz;
    const double depth = fmax(s, POSED_MIN_DEPTH_M);
    *u = su / depth;
    *v = sv / depth;
}

// Per object blockIdx.x (objects[item] names its point set): crop_box, then k_crop.
// width and height are the image size as the CPU twin converts it (`usize as f64`).
// Launched with POSED_CROP_BLOCK threads per block.
extern "C" __global__ void cosypose_crop(const float* __restrict__ points_m,
                                         const unsigned int* __restrict__ object_first_point,
                                         const unsigned int* __restrict__ object_point_count,
                                         const unsigned int* __restrict__ objects,
                                         const double* __restrict__ poses,
                                         const double* __restrict__ k, double width,
                                         double height, double* __restrict__ boxes,
                                         double* __restrict__ k_crops,
                                         unsigned int* __restrict__ status) {
    __shared__ double shared_x1[POSED_CROP_BLOCK];
    __shared__ double shared_y1[POSED_CROP_BLOCK];
    __shared__ double shared_x2[POSED_CROP_BLOCK];
    __shared__ double shared_y2[POSED_CROP_BLOCK];

    const unsigned int item = blockIdx.x;
    const unsigned int object = objects[item];
    const unsigned int first = object_first_point[object];
    const unsigned int count = object_point_count[object];
    const double* pose = poses + 12 * item;
    const double infinity = __longlong_as_double(0x7ff0000000000000LL);

    double x1 = infinity;
    double y1 = infinity;
    double x2 = -infinity;
    double y2 = -infinity;
    for (unsigned int p = threadIdx.x; p < count; p += POSED_CROP_BLOCK) {
        const float* point = points_m + 3 * ((size_t)first + p);
        double u, v;
        posed_project_robust(k, pose, (double)point[0], (double)point[1], (double)point[2], &u,
                             &v);
        x1 = fmin(x1, u);
        y1 = fmin(y1, v);
        x2 = fmax(x2, u);
        y2 = fmax(y2, v);
    }
    shared_x1[threadIdx.x] = x1;
    shared_y1[threadIdx.x] = y1;
    shared_x2[threadIdx.x] = x2;
    shared_y2[threadIdx.x] = y2;
    __syncthreads();
    for (unsigned int stride = POSED_CROP_BLOCK / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            const unsigned int other = threadIdx.x + stride;
            shared_x1[threadIdx.x] = fmin(shared_x1[threadIdx.x], shared_x1[other]);
            shared_y1[threadIdx.x] = fmin(shared_y1[threadIdx.x], shared_y1[other]);
            shared_x2[threadIdx.x] = fmax(shared_x2[threadIdx.x], shared_x2[other]);
            shared_y2[threadIdx.x] = fmax(shared_y2[threadIdx.x], shared_y2[other]);
        }
        __syncthreads();
    }
    if (threadIdx.x != 0) {
        return;
    }
    if (count == 0) {
        status[item] = POSED_CROP_NO_POINTS;
        return;
    }
    x1 = shared_x1[0];
    y1 = shared_y1[0];
    x2 = shared_x2[0];
    y2 = shared_y2[0];

    // crop_box.
    double xc, yc;
    posed_project_robust(k, pose, 0.0, 0.0, 0.0, &xc, &yc);
    const double r = fmax(width, height) / fmin(width, height);
    const double dx = fmax(fabs(x1 - xc), fabs(x2 - xc));
    const double dy = fmax(fabs(y1 - yc), fabs(y2 - yc));
    const double crop_w = 2.0 * POSED_CROP_SCALE * fmax(dx, r * dy);
    const double crop_h = 2.0 * POSED_CROP_SCALE * fmax(dx / r, dy);
    double* box = boxes + 4 * item;
    box[0] = xc - crop_w / 2.0;
    box[1] = yc - crop_h / 2.0;
    box[2] = xc + crop_w / 2.0;
    box[3] = yc + crop_h / 2.0;
    if (!(isfinite(box[0]) && isfinite(box[1]) && isfinite(box[2]) && isfinite(box[3]))) {
        status[item] = POSED_CROP_NOT_FINITE;
        return;
    }

    // k_crop.
    const double box_w = box[2] - box[0];
    const double box_h = box[3] - box[1];
    if (!(box_w > 0.0 && box_h > 0.0 && isfinite(box_w) && isfinite(box_h))) {
        status[item] = POSED_CROP_NOT_POSITIVE;
        return;
    }
    const double sx = (double)POSED_CROP_WIDTH / box_w;
    const double sy = (double)POSED_CROP_HEIGHT / box_h;
    const double cx =
        ((double)POSED_CROP_WIDTH - 1.0) / 2.0 + sx * (k[2] - (box[0] + box[2]) / 2.0);
    const double cy =
        ((double)POSED_CROP_HEIGHT - 1.0) / 2.0 + sy * (k[5] - (box[1] + box[3]) / 2.0);
    double* k_crop = k_crops + 9 * item;
    k_crop[0] = sx * k[0];
    k_crop[1] = k[1];
    k_crop[2] = cx;
    k_crop[3] = 0.0;
    k_crop[4] = sy * k[4];
    k_crop[5] = cy;
    k_crop[6] = 0.0;
    k_crop[7] = 0.0;
    k_crop[8] = 1.0;
    status[item] = POSED_CROP_OK;
}

// crop.rs's `AxisSample`: the two texels along one axis and the weight of `high`.
struct PosedAxisSample {
    bool valid;
    unsigned int low;
    unsigned int high;
    float frac;
};

// crop.rs's `axis_sample`: torchvision's `bilinear_interpolate` along one axis.
__device__ __forceinline__ PosedAxisSample posed_axis_sample(float coordinate,
                                                             unsigned int size) {
    PosedAxisSample sample;
    sample.valid = false;
    sample.low = 0;
    sample.high = 0;
    sample.frac = 0.0f;
    const float size_f = (float)size;
    if (coordinate < -1.0f || coordinate > size_f) {
        return sample;
    }
    const float c = fmaxf(coordinate, 0.0f);
    const unsigned int low = __float2uint_rz(c);
    if (low >= size - 1) {
        sample.low = size - 1;
        sample.high = size - 1;
        sample.frac = 0.0f;
    } else {
        sample.low = low;
        sample.high = low + 1;
        sample.frac = c - (float)low;
    }
    sample.valid = true;
    return sample;
}

// crop.rs's `axis_samples` for output index `index`, sample `s`:
// start + index * bin + (s + 0.5) * bin / ratio.
__device__ __forceinline__ float posed_sample_coordinate(float start, float bin,
                                                         unsigned int index, unsigned int s) {
    const float offset = __fdiv_rn(((float)s + 0.5f) * bin, (float)POSED_ROI_RATIO);
    return start + (float)index * bin + offset;
}

// A byte as the CPU's `f32::from(byte) / 255.0`.
__device__ __forceinline__ float posed_texel(unsigned char byte) {
    return __fdiv_rn((float)byte, 255.0f);
}

// roi_align_rgb8 for output pixel blockIdx.x * blockDim.x + threadIdx.x (row-major over
// 240 x 320) of item blockIdx.y: its box is boxes[4 * item..], converted to f32; a box
// that is not finite in f32 leaves the item's output untouched (the CPU's error). Channel
// c goes to out[item * item_stride + channel_offset + c * 240 * 320 + pixel].
extern "C" __global__ void cosypose_roi_align_rgb8(const unsigned char* __restrict__ rgb,
                                                   unsigned int width, unsigned int height,
                                                   const double* __restrict__ boxes,
                                                   float* __restrict__ out,
                                                   unsigned int item_stride,
                                                   unsigned int channel_offset) {
    const unsigned int item = blockIdx.y;
    const unsigned int plane = POSED_CROP_HEIGHT * POSED_CROP_WIDTH;
    const unsigned int pixel = blockIdx.x * blockDim.x + threadIdx.x;
    if (pixel >= plane) {
        return;
    }
    const unsigned int i = pixel / POSED_CROP_WIDTH;
    const unsigned int j = pixel % POSED_CROP_WIDTH;
    const double* box = boxes + 4 * item;
    const float x_start = __double2float_rn(box[0]);
    const float y_start = __double2float_rn(box[1]);
    const float x_end = __double2float_rn(box[2]);
    const float y_end = __double2float_rn(box[3]);
    if (!(isfinite(x_start) && isfinite(y_start) && isfinite(x_end) && isfinite(y_end))) {
        return;
    }
    const float x_bin = __fdiv_rn(fmaxf(x_end - x_start, 1.0f), (float)POSED_CROP_WIDTH);
    const float y_bin = __fdiv_rn(fmaxf(y_end - y_start, 1.0f), (float)POSED_CROP_HEIGHT);
    PosedAxisSample xs[POSED_ROI_RATIO];
    PosedAxisSample ys[POSED_ROI_RATIO];
    for (unsigned int s = 0; s < POSED_ROI_RATIO; ++s) {
        xs[s] = posed_axis_sample(posed_sample_coordinate(x_start, x_bin, j, s), width);
        ys[s] = posed_axis_sample(posed_sample_coordinate(y_start, y_bin, i, s), height);
    }
    float sums[3] = {0.0f, 0.0f, 0.0f};
    for (unsigned int sy = 0; sy < POSED_ROI_RATIO; ++sy) {
        for (unsigned int sx = 0; sx < POSED_ROI_RATIO; ++sx) {
            if (!(ys[sy].valid && xs[sx].valid)) {
                continue;
            }
            const float ly = ys[sy].frac;
            const float lx = xs[sx].frac;
            const float hy = 1.0f - ly;
            const float hx = 1.0f - lx;
            const float w1 = hy * hx;
            const float w2 = hy * lx;
            const float w3 = ly * hx;
            const float w4 = ly * lx;
            const unsigned char* t00 = rgb + 3 * ((size_t)ys[sy].low * width + xs[sx].low);
            const unsigned char* t10 = rgb + 3 * ((size_t)ys[sy].low * width + xs[sx].high);
            const unsigned char* t01 = rgb + 3 * ((size_t)ys[sy].high * width + xs[sx].low);
            const unsigned char* t11 = rgb + 3 * ((size_t)ys[sy].high * width + xs[sx].high);
            for (int c = 0; c < 3; ++c) {
                sums[c] += w1 * posed_texel(t00[c]) + w2 * posed_texel(t10[c]) +
                           w3 * posed_texel(t01[c]) + w4 * posed_texel(t11[c]);
            }
        }
    }
    const float count = (float)(POSED_ROI_RATIO * POSED_ROI_RATIO);
    float* item_out = out + (size_t)item * item_stride + channel_offset;
    for (int c = 0; c < 3; ++c) {
        item_out[(size_t)c * plane + pixel] = __fdiv_rn(sums[c], count);
    }
}

// The length sqrt((x * x + y * y) + z * z), as nalgebra's norm.
__device__ __forceinline__ double posed_norm(double x, double y, double z) {
    return sqrt((x * x + y * y) + z * z);
}

// apply_update for object blockIdx.x * blockDim.x + threadIdx.x: `outputs` holds its 9
// network outputs, `poses` its camera_from_object (12 doubles), `focal_lengths` the
// (fx', fy') of its K_crop; the updated pose goes to `updated` (12 doubles).
extern "C" __global__ void cosypose_apply_update(const float* __restrict__ outputs,
                                                 const double* __restrict__ poses,
                                                 const double* __restrict__ focal_lengths,
                                                 unsigned int n_items,
                                                 double* __restrict__ updated,
                                                 unsigned int* __restrict__ status) {
    const unsigned int item = blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= n_items) {
        return;
    }
    double o[9];
    for (int n = 0; n < 9; ++n) {
        o[n] = (double)outputs[9 * item + n];
    }

    // rotation_from_6d(a1 = o[0..3], a2 = o[3..6]).
    for (int n = 0; n < 6; ++n) {
        if (!isfinite(o[n])) {
            status[item] = POSED_UPDATE_6D_NOT_FINITE;
            return;
        }
    }
    const double n1 = posed_norm(o[0], o[1], o[2]);
    if (n1 < POSED_MIN_NORM) {
        status[item] = POSED_UPDATE_A1_ZERO;
        return;
    }
    const double e1[3] = {o[0] / n1, o[1] / n1, o[2] / n1};
    // e1 x a2, as nalgebra's cross.
    const double cross[3] = {e1[1] * o[5] - e1[2] * o[4], e1[2] * o[3] - e1[0] * o[5],
                             e1[0] * o[4] - e1[1] * o[3]};
    const double n3 = posed_norm(cross[0], cross[1], cross[2]);
    if (n3 < POSED_MIN_NORM) {
        status[item] = POSED_UPDATE_A2_PARALLEL;
        return;
    }
    const double e3[3] = {cross[0] / n3, cross[1] / n3, cross[2] / n3};
    const double e2[3] = {e3[1] * e1[2] - e3[2] * e1[1], e3[2] * e1[0] - e3[0] * e1[2],
                          e3[0] * e1[1] - e3[1] * e1[0]};
    // dR, row-major: its columns are e1, e2, e3.
    const double delta[9] = {e1[0], e2[0], e3[0], e1[1], e2[1], e3[1], e1[2], e2[2], e3[2]};

    const double vx = o[6];
    const double vy = o[7];
    const double vz = o[8];
    if (!(isfinite(vx) && isfinite(vy) && isfinite(vz))) {
        status[item] = POSED_UPDATE_T_NOT_FINITE;
        return;
    }
    const double* pose = poses + 12 * item;
    const double x = pose[9];
    const double y = pose[10];
    const double z = pose[11];
    const double z_new = vz * z;
    const double x_new = (vx / focal_lengths[2 * item] + x / z) * z_new;
    const double y_new = (vy / focal_lengths[2 * item + 1] + y / z) * z_new;

    double* out = updated + 12 * item;
    // R+ = dR R.
    for (int row = 0; row < 3; ++row) {
        for (int col = 0; col < 3; ++col) {
            const double* d = delta + 3 * row;
            out[3 * row + col] =
                (d[0] * pose[col] + d[1] * pose[3 + col]) + d[2] * pose[6 + col];
        }
    }
    out[9] = x_new;
    out[10] = y_new;
    out[11] = z_new;
    status[item] = POSED_UPDATE_OK;
}
