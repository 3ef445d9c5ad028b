// posed-kernels: the renderer, CUDA twin of `CpuRenderer::render`
// (kernels/src/render/mod.rs) with the arithmetic of kernels/src/render/raster.rs, operation
// for operation. Driven by kernels/src/cuda/render.rs (`GpuRenderer`).
//
// Steps, as in raster.rs:
// 1. project_vertices: one thread per vertex of each instance of the batch; camera frame
//    and screen in f32, fixed point with 8 subpixel bits (`roundf`, half away from zero,
//    as Rust's `f32::round`).
// 2-4. raster_triangles: one thread per triangle of each instance (back faces of closed
//    meshes skipped); exact 64-bit edge functions with the top-left bias over the
//    triangle's bounding box clipped to the
//    image, depth `z = area / sum(w_i * inv_z_i)` in f32, and an atomicMin of the 64-bit
//    key `depth_bits << 32 | instance << 24 | triangle` per pixel (min wins, so the result
//    does not depend on the order threads run in). clear_keys empties the keys first.
// 5. shade_pixels: one thread per pixel; decodes the key, perspective weights in the mesh's
//    corner order, vertex colour or, for a textured mesh, raster.rs's `sample_bilinear` at
//    the interpolated corner UVs, optional Lambert, `(clamp(v, 0, 255) + 0.5)` truncated.
//
// Bit-identical to the CPU because:
// - the host compiles with --fmad=false: every `a * b + c` is a rounded multiply and a
//   rounded add, evaluated left to right as Rust does (C++ and Rust both associate `+` to
//   the left, and the expressions below are written in raster.rs's order);
// - division and square root are the IEEE-rounded intrinsics (__fdiv_rn, __fsqrt_rn),
//   whatever -prec-div / -prec-sqrt say; denormals are kept (no --ftz);
// - a 64-bit integer becomes a float through __ll2float_rn, round to nearest even, as
//   Rust's `i64 as f32`; coordinates and edge functions are exact integers;
// - a float becomes a byte through __float2uint_rz (truncation, NaN -> 0), as Rust's
//   saturating `f32 as u8` on values already clamped to [0, 255] + 0.5;
// - texel coordinates: floorf, fmaxf / fminf (NaN -> the other operand, as Rust's
//   f32::max / min), and __float2uint_rz of values already clamped to [0, side - 1]
//   (exact integers), as Rust's `as usize`; texel bytes become floats exactly.
//
// Layout (all little-endian words, shared with render.rs; the sizes are asserted on both
// sides): meshes are concatenated, positions / normals / colours as 3 floats per vertex,
// triangles as 3 unsigned ints per triangle (indices into the mesh's own vertices);
// textures as one byte buffer of RGB texels (row-major, top row first), each textured mesh's
// starting at texture_first_byte, and 6 floats of corner UVs per triangle of each textured
// mesh, starting at triangle first_uv of that buffer. Per
// batch, one PosedItem per image (its pixels start at first_pixel in the batch's pixel
// buffers, its instances at first_instance) and one PosedInstance per object (its projected
// vertices start at first_vertex). The host keeps every index below 2^32.
//
// Grids: project_vertices and raster_triangles use blockIdx.y for the instance (at most
// 65535 per launch) and x for the vertex / triangle; shade_pixels uses blockIdx.y for the
// item and x for its pixel; clear_keys is flat.

#define POSED_NEAR_M 0.01f
#define POSED_FAR_M 10.0f
#define POSED_SUBPIXEL_ONE 256LL
#define POSED_SUBPIXEL_SCALE 256.0f
#define POSED_GUARD_BAND_PX 1048576.0f
#define POSED_INVALID_INV_Z -1.0f
#define POSED_EMPTY_KEY 0xffffffffffffffffULL

// One mesh in the concatenated vertex and triangle arrays; cull_back_faces is
// `Mesh::cull_back_faces` (1 or 0); textured is 1 when the mesh has a texture (then the
// texture_* fields and first_uv locate it), else 0.
struct PosedMesh {
    unsigned int first_vertex;
    unsigned int vertex_count;
    unsigned int first_triangle;
    unsigned int triangle_count;
    unsigned int cull_back_faces;
    unsigned int textured;
    unsigned int texture_first_byte;
    unsigned int texture_width;
    unsigned int texture_height;
    unsigned int first_uv;
};

// One image of the batch: size, where its pixels and instances start, and K in f32 (the
// viewing rays of the shading).
struct PosedItem {
    unsigned int width;
    unsigned int height;
    unsigned int first_pixel;
    unsigned int first_instance;
    unsigned int instance_count;
    float fx;
    float skew;
    float cx;
    float fy;
    float cy;
};

// One object of the batch: raster.rs's `Projection` (camera_from_object and K in f32),
// which mesh, which item, its index in that item (the key's instance), and where its
// projected vertices start.
struct PosedInstance {
    float rotation[9];
    float translation_m[3];
    float fx;
    float skew;
    float cx;
    float fy;
    float cy;
    unsigned int mesh;
    unsigned int item;
    unsigned int instance_in_item;
    unsigned int first_vertex;
};

// raster.rs's `ProjectedVertex`.
struct PosedVertex {
    int x_fp;
    int y_fp;
    float inv_z;
    float normal[3];
};

// raster.rs's `EdgeEquation`.
struct PosedEdge {
    long long step_u;
    long long step_v;
    long long at_origin;
    long long bias;
};

static_assert(sizeof(PosedMesh) == 40, "PosedMesh must match GpuMesh in render.rs");
static_assert(sizeof(PosedItem) == 40, "PosedItem must match GpuItem in render.rs");
static_assert(sizeof(PosedInstance) == 84, "PosedInstance must match GpuInstance in render.rs");
static_assert(sizeof(PosedVertex) == 24, "PosedVertex must match PROJECTED_VERTEX_WORDS");

__device__ __forceinline__ long long posed_min(long long a, long long b) { return a < b ? a : b; }

__device__ __forceinline__ long long posed_max(long long a, long long b) { return a > b ? a : b; }

// Rust's `value.div_euclid(SUBPIXEL_ONE)` for a positive divisor: floor division.
__device__ __forceinline__ long long posed_floor_div(long long value) {
    long long quotient = value / POSED_SUBPIXEL_ONE;
    if (value % POSED_SUBPIXEL_ONE != 0 && value < 0) {
        quotient -= 1;
    }
    return quotient;
}

// raster.rs's `ceil_div(value, SUBPIXEL_ONE)`.
__device__ __forceinline__ long long posed_ceil_div(long long value) {
    return -posed_floor_div(-value);
}

// raster.rs's `edge_function`: E_pq(s) = (q.x - p.x)(s.y - p.y) - (q.y - p.y)(s.x - p.x).
__device__ __forceinline__ long long posed_edge_function(const PosedVertex& p,
                                                         const PosedVertex& q, long long sx,
                                                         long long sy) {
    const long long px = p.x_fp;
    const long long py = p.y_fp;
    return ((long long)q.x_fp - px) * (sy - py) - ((long long)q.y_fp - py) * (sx - px);
}

// raster.rs's `EdgeEquation::new` (with `is_top_left`).
__device__ __forceinline__ PosedEdge posed_edge(const PosedVertex& p, const PosedVertex& q) {
    const long long px = p.x_fp;
    const long long py = p.y_fp;
    const long long dx = (long long)q.x_fp - px;
    const long long dy = (long long)q.y_fp - py;
    PosedEdge edge;
    edge.step_u = -dy * POSED_SUBPIXEL_ONE;
    edge.step_v = dx * POSED_SUBPIXEL_ONE;
    edge.at_origin = dy * px - dx * py;
    const bool top_left = dy < 0 || (dy == 0 && dx > 0);
    edge.bias = top_left ? 0 : -1;
    return edge;
}

// EdgeEquation::at.
__device__ __forceinline__ long long posed_edge_at(const PosedEdge& edge, long long u,
                                                   long long v) {
    return edge.step_u * u + edge.step_v * v + edge.at_origin;
}

// raster.rs's `sample_bilinear`: the texture of `mesh` at (u, v), operation for operation.
__device__ __forceinline__ void posed_sample_bilinear(const unsigned char* __restrict__ textures,
                                                      const PosedMesh& mesh, float u, float v,
                                                      float* out) {
    const float x = u * (float)mesh.texture_width - 0.5f;
    const float y = (1.0f - v) * (float)mesh.texture_height - 0.5f;
    const float x_floor = floorf(x);
    const float y_floor = floorf(y);
    const float fx = x - x_floor;
    const float fy = y - y_floor;
    const float last_x = (float)(mesh.texture_width - 1);
    const float last_y = (float)(mesh.texture_height - 1);
    const unsigned int x0 = __float2uint_rz(fminf(fmaxf(x_floor, 0.0f), last_x));
    const unsigned int x1 = __float2uint_rz(fminf(fmaxf(x_floor + 1.0f, 0.0f), last_x));
    const unsigned int y0 = __float2uint_rz(fminf(fmaxf(y_floor, 0.0f), last_y));
    const unsigned int y1 = __float2uint_rz(fminf(fmaxf(y_floor + 1.0f, 0.0f), last_y));
    const unsigned char* texels = textures + mesh.texture_first_byte;
    const unsigned int width = mesh.texture_width;
    const unsigned char* t00 = texels + 3 * (y0 * width + x0);
    const unsigned char* t10 = texels + 3 * (y0 * width + x1);
    const unsigned char* t01 = texels + 3 * (y1 * width + x0);
    const unsigned char* t11 = texels + 3 * (y1 * width + x1);
    const float w00 = (1.0f - fx) * (1.0f - fy);
    const float w10 = fx * (1.0f - fy);
    const float w01 = (1.0f - fx) * fy;
    const float w11 = fx * fy;
    for (int channel = 0; channel < 3; ++channel) {
        out[channel] = w00 * (float)t00[channel] + w10 * (float)t10[channel] +
                       w01 * (float)t01[channel] + w11 * (float)t11[channel];
    }
}

// Sets every key of the batch's pixels to EMPTY_KEY.
extern "C" __global__ void clear_keys(unsigned long long* __restrict__ keys,
                                      unsigned int n_pixels) {
    const unsigned int pixel = blockIdx.x * blockDim.x + threadIdx.x;
    if (pixel < n_pixels) {
        keys[pixel] = POSED_EMPTY_KEY;
    }
}

// Step 1, raster.rs's `project_vertex`: vertex blockIdx.x * blockDim.x + threadIdx.x of
// instance blockIdx.y.
extern "C" __global__ void project_vertices(const PosedInstance* __restrict__ instances,
                                            const PosedMesh* __restrict__ meshes,
                                            const float* __restrict__ positions_m,
                                            const float* __restrict__ normals,
                                            PosedVertex* __restrict__ vertices) {
    const PosedInstance* instance = instances + blockIdx.y;
    const PosedMesh mesh = meshes[instance->mesh];
    const unsigned int vertex = blockIdx.x * blockDim.x + threadIdx.x;
    if (vertex >= mesh.vertex_count) {
        return;
    }
    const float* r = instance->rotation;
    const float* t = instance->translation_m;
    const unsigned int at = 3 * (mesh.first_vertex + vertex);
    const float x = positions_m[at];
    const float y = positions_m[at + 1];
    const float z = positions_m[at + 2];
    const float xc = r[0] * x + r[1] * y + r[2] * z + t[0];
    const float yc = r[3] * x + r[4] * y + r[5] * z + t[1];
    const float zc = r[6] * x + r[7] * y + r[8] * z + t[2];
    const float nx = normals[at];
    const float ny = normals[at + 1];
    const float nz = normals[at + 2];
    PosedVertex out;
    out.normal[0] = r[0] * nx + r[1] * ny + r[2] * nz;
    out.normal[1] = r[3] * nx + r[4] * ny + r[5] * nz;
    out.normal[2] = r[6] * nx + r[7] * ny + r[8] * nz;
    out.x_fp = 0;
    out.y_fp = 0;
    out.inv_z = POSED_INVALID_INV_Z;
    // raster.rs rejects `zc.is_nan() || zc < NEAR_M`: the same as failing `zc >= NEAR_M`.
    if (zc >= POSED_NEAR_M) {
        const float inv_z = __fdiv_rn(1.0f, zc);
        const float xn = xc * inv_z;
        const float yn = yc * inv_z;
        const float u = instance->fx * xn + instance->skew * yn + instance->cx;
        const float v = instance->fy * yn + instance->cy;
        // Written so that NaN fails the test, as in raster.rs.
        if (fabsf(u) < POSED_GUARD_BAND_PX && fabsf(v) < POSED_GUARD_BAND_PX) {
            // |u * 256| < 2^28: the conversion is exact, as Rust's saturating `as i32`.
            out.x_fp = (int)roundf(u * POSED_SUBPIXEL_SCALE);
            out.y_fp = (int)roundf(v * POSED_SUBPIXEL_SCALE);
            out.inv_z = inv_z;
        }
    }
    vertices[instance->first_vertex + vertex] = out;
}

// Steps 2-4 for triangle blockIdx.x * blockDim.x + threadIdx.x of instance blockIdx.y:
// raster.rs's `setup_triangle`, then every pixel centre of its bounding box inside the
// image, covered by the biased edge test, depth by `fragment_depth_m`, key by
// `visibility_key`, kept by atomicMin.
extern "C" __global__ void raster_triangles(const PosedInstance* __restrict__ instances,
                                            const PosedItem* __restrict__ items,
                                            const PosedMesh* __restrict__ meshes,
                                            const unsigned int* __restrict__ triangles,
                                            const PosedVertex* __restrict__ vertices,
                                            unsigned long long* __restrict__ keys) {
    const PosedInstance* instance = instances + blockIdx.y;
    const PosedMesh mesh = meshes[instance->mesh];
    const unsigned int triangle = blockIdx.x * blockDim.x + threadIdx.x;
    if (triangle >= mesh.triangle_count) {
        return;
    }
    const unsigned int* corner = triangles + 3 * (mesh.first_triangle + triangle);
    const PosedVertex* own = vertices + instance->first_vertex;
    const PosedVertex a = own[corner[0]];
    PosedVertex b = own[corner[1]];
    PosedVertex c = own[corner[2]];
    if (!(a.inv_z > 0.0f && b.inv_z > 0.0f && c.inv_z > 0.0f)) {
        return;
    }
    long long area = posed_edge_function(a, b, c.x_fp, c.y_fp);
    // Back faces of closed meshes (positive area: y points down) are skipped.
    if (mesh.cull_back_faces != 0 && area > 0) {
        return;
    }
    if (area == 0) {
        return;
    }
    if (area < 0) {
        // Positive-area order [a, c, b], as setup_triangle.
        const PosedVertex swap = b;
        b = c;
        c = swap;
        area = -area;
    }
    const long long min_x = posed_min(posed_min(a.x_fp, b.x_fp), c.x_fp);
    const long long min_y = posed_min(posed_min(a.y_fp, b.y_fp), c.y_fp);
    const long long max_x = posed_max(posed_max(a.x_fp, b.x_fp), c.x_fp);
    const long long max_y = posed_max(posed_max(a.y_fp, b.y_fp), c.y_fp);
    const long long min_u = posed_ceil_div(min_x);
    const long long min_v = posed_ceil_div(min_y);
    const long long max_u = posed_floor_div(max_x);
    const long long max_v = posed_floor_div(max_y);
    if (min_u > max_u || min_v > max_v) {
        return;
    }
    const PosedItem item = items[instance->item];
    const long long width = item.width;
    const long long height = item.height;
    const long long u0 = posed_max(min_u, 0);
    const long long u1 = posed_min(max_u, width - 1);
    const long long v0 = posed_max(min_v, 0);
    const long long v1 = posed_min(max_v, height - 1);
    if (u0 > u1) {
        return;
    }
    const PosedEdge e0 = posed_edge(b, c);
    const PosedEdge e1 = posed_edge(c, a);
    const PosedEdge e2 = posed_edge(a, b);
    const float area_f = __ll2float_rn(area);
    const unsigned long long low_bits =
        ((unsigned long long)instance->instance_in_item << 24) | (unsigned long long)triangle;
    unsigned long long* item_keys = keys + item.first_pixel;
    // Biased edge values (covered when all three are >= 0), walked along the rows as the
    // CPU does; the true weights are the biased ones minus the bias.
    long long row_start0 = posed_edge_at(e0, u0, v0) + e0.bias;
    long long row_start1 = posed_edge_at(e1, u0, v0) + e1.bias;
    long long row_start2 = posed_edge_at(e2, u0, v0) + e2.bias;
    for (long long v = v0; v <= v1; ++v) {
        long long w0 = row_start0;
        long long w1 = row_start1;
        long long w2 = row_start2;
        unsigned long long* row = item_keys + v * width;
        for (long long u = u0; u <= u1; ++u) {
            if ((w0 | w1 | w2) >= 0) {
                // fragment_depth_m: sum(w_i as f32 * inv_z_i) left to right, then a division.
                const float inv_z_sum = __ll2float_rn(w0 - e0.bias) * a.inv_z +
                                        __ll2float_rn(w1 - e1.bias) * b.inv_z +
                                        __ll2float_rn(w2 - e2.bias) * c.inv_z;
                const float z = __fdiv_rn(area_f, inv_z_sum);
                if (POSED_NEAR_M <= z && z <= POSED_FAR_M) {
                    const unsigned long long key =
                        ((unsigned long long)__float_as_uint(z) << 32) | low_bits;
                    atomicMin(row + u, key);
                }
            }
            w0 += e0.step_u;
            w1 += e1.step_u;
            w2 += e2.step_u;
        }
        row_start0 += e0.step_v;
        row_start1 += e1.step_v;
        row_start2 += e2.step_v;
    }
}

// Step 5 for pixel blockIdx.x * blockDim.x + threadIdx.x of item blockIdx.y: CpuRenderer's
// `shade_band` for one pixel (raster.rs's `perspective_weights`, `interpolate`,
// `sample_bilinear` and `shade_albedo`). `lambert` is 0 for Shading::Albedo, else the
// light is used.
extern "C" __global__ void shade_pixels(const PosedItem* __restrict__ items,
                                        const PosedInstance* __restrict__ instances,
                                        const PosedMesh* __restrict__ meshes,
                                        const unsigned int* __restrict__ triangles,
                                        const float* __restrict__ colors,
                                        const unsigned char* __restrict__ textures,
                                        const float* __restrict__ corner_uvs,
                                        const PosedVertex* __restrict__ vertices,
                                        const unsigned long long* __restrict__ keys,
                                        unsigned int lambert, float light_x, float light_y,
                                        float light_z, float ambient, float diffuse,
                                        unsigned char* __restrict__ rgb,
                                        float* __restrict__ depth_m,
                                        unsigned char* __restrict__ mask) {
    const PosedItem item = items[blockIdx.y];
    const unsigned int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= item.width * item.height) {
        return;
    }
    const unsigned int pixel = item.first_pixel + p;
    const unsigned long long key = keys[pixel];
    if (key == POSED_EMPTY_KEY) {
        rgb[3 * pixel] = 0;
        rgb[3 * pixel + 1] = 0;
        rgb[3 * pixel + 2] = 0;
        depth_m[pixel] = 0.0f;
        mask[pixel] = 0;
        return;
    }
    // decode_key.
    const float depth = __uint_as_float((unsigned int)(key >> 32));
    const unsigned int instance_index = (unsigned int)((key >> 24) & 0xff);
    const unsigned int triangle = (unsigned int)(key & 0xffffff);
    const PosedInstance* instance = instances + item.first_instance + instance_index;
    const PosedMesh mesh = meshes[instance->mesh];
    const unsigned int* corner = triangles + 3 * (mesh.first_triangle + triangle);
    const PosedVertex* own = vertices + instance->first_vertex;
    const PosedVertex a = own[corner[0]];
    const PosedVertex b = own[corner[1]];
    const PosedVertex c = own[corner[2]];
    const long long u = p % item.width;
    const long long v = p / item.width;

    // perspective_weights, in the mesh's corner order.
    const long long sx = u * POSED_SUBPIXEL_ONE;
    const long long sy = v * POSED_SUBPIXEL_ONE;
    const float q0 = __ll2float_rn(posed_edge_function(b, c, sx, sy)) * a.inv_z;
    const float q1 = __ll2float_rn(posed_edge_function(c, a, sx, sy)) * b.inv_z;
    const float q2 = __ll2float_rn(posed_edge_function(a, b, sx, sy)) * c.inv_z;
    const float sum = q0 + q1 + q2;
    const float w0 = __fdiv_rn(q0, sum);
    const float w1 = __fdiv_rn(q1, sum);
    const float w2 = __fdiv_rn(q2, sum);

    // The viewing ray (shade_band): [x_ray, y_ray, 1].
    const float y_ray = __fdiv_rn(__ll2float_rn(v) - item.cy, item.fy);
    const float x_ray = __fdiv_rn(__ll2float_rn(u) - item.cx - item.skew * y_ray, item.fx);

    // The albedo: interpolate the texture coordinates and sample, or the vertex colours.
    float value[3];
    if (mesh.textured != 0) {
        const float* uv = corner_uvs + 6 * (mesh.first_uv + triangle);
        const float tex_u = w0 * uv[0] + w1 * uv[2] + w2 * uv[4];
        const float tex_v = w0 * uv[1] + w1 * uv[3] + w2 * uv[5];
        posed_sample_bilinear(textures, mesh, tex_u, tex_v, value);
    } else {
        const float* ca = colors + 3 * (mesh.first_vertex + corner[0]);
        const float* cb = colors + 3 * (mesh.first_vertex + corner[1]);
        const float* cc = colors + 3 * (mesh.first_vertex + corner[2]);
        for (int channel = 0; channel < 3; ++channel) {
            value[channel] = w0 * ca[channel] + w1 * cb[channel] + w2 * cc[channel];
        }
    }
    // shade_albedo.
    if (lambert != 0) {
        float n[3];
        for (int axis = 0; axis < 3; ++axis) {
            n[axis] = w0 * a.normal[axis] + w1 * b.normal[axis] + w2 * c.normal[axis];
        }
        const float length = __fsqrt_rn(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
        const float facing = n[0] * x_ray + n[1] * y_ray + n[2] * 1.0f;
        const float sign = facing > 0.0f ? -1.0f : 1.0f;
        float n_dot_l = 0.0f;
        if (length > 0.0f) {
            n_dot_l = __fdiv_rn(sign * (n[0] * light_x + n[1] * light_y + n[2] * light_z),
                                length);
        }
        // fmaxf returns the other operand for a NaN, as Rust's f32::max.
        const float intensity = ambient + diffuse * fmaxf(n_dot_l, 0.0f);
        for (int channel = 0; channel < 3; ++channel) {
            value[channel] *= intensity;
        }
    }
    for (int channel = 0; channel < 3; ++channel) {
        // Rust's f32::clamp: compares, so NaN stays NaN (and becomes 0 below).
        float clamped = value[channel];
        if (clamped < 0.0f) {
            clamped = 0.0f;
        }
        if (clamped > 255.0f) {
            clamped = 255.0f;
        }
        rgb[3 * pixel + channel] = (unsigned char)__float2uint_rz(clamped + 0.5f);
    }
    depth_m[pixel] = depth;
    mask[pixel] = (unsigned char)(instance_index + 1);
}
