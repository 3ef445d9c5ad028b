// posed-kernels: camera colour conversion, the CUDA twin of kernels/src/color.rs
// (`yuv_to_rgb`, `to_rgb8`, `to_normalized_planar`). Driven by kernels/src/cuda/color.rs
// (`GpuColor`).
//
// Kernels, one thread per output pixel (x = blockIdx.x * blockDim.x + threadIdx.x, y the
// same on the y axis), over a packed camera frame of `width` x `height` pixels whose rows
// are `stride` bytes apart:
// - color_to_rgb8: 8-bit RGB, row-major, 3 bytes per pixel;
// - color_to_normalized_planar_f32: three f32 planes (R, G, B) of width * height, each
//   byte divided by 255.
// The host has checked the frame (sizes, parity, stride, length) before any launch.
//
// Bit-identical to the CPU because the YUV maths is integer (BT.601 limited range, 8
// fractional bits) and the normalisation is the CPU's one IEEE division, __fdiv_rn, as
// in cosypose.cu's posed_texel.
//
// Layouts (V4L2 single-planar; the POSED_COLOR_* codes are cuda/color.rs's):
// - YUYV: Y0 U Y1 V for each pair of pixels;
// - NV12: a plane of Y, then at stride * height a plane of interleaved U V for each 2 x 2
//   block of pixels, with the same stride;
// - RGB24: R G B.

#define POSED_COLOR_BLOCK_X 32
#define POSED_COLOR_BLOCK_Y 8

#define POSED_COLOR_YUYV 0u
#define POSED_COLOR_NV12 1u
#define POSED_COLOR_RGB24 2u

// clamp(sum >> 8) of color.rs with the clamp's lower side taken first: the shift then
// never sees a negative value (implementation-defined in C++17). The result is the
// same, since a negative sum shifts to a negative value, which the CPU clamps to 0.
__device__ __forceinline__ unsigned char posed_clamp_shift(int sum) {
    return (unsigned char)min(max(sum, 0) >> 8, 255);
}

// color.rs's yuv_to_rgb.
__device__ __forceinline__ void posed_yuv_to_rgb(unsigned char y, unsigned char u,
                                                 unsigned char v, unsigned char rgb[3]) {
    const int c = (int)y - 16;
    const int d = (int)u - 128;
    const int e = (int)v - 128;
    rgb[0] = posed_clamp_shift(298 * c + 409 * e + 128);
    rgb[1] = posed_clamp_shift(298 * c - 100 * d - 208 * e + 128);
    rgb[2] = posed_clamp_shift(298 * c + 516 * d + 128);
}

// Pixel (x, y) of the packed frame as 8-bit RGB. An unknown layout reads as RGB24 (the
// host passes only the three codes).
__device__ __forceinline__ void posed_color_pixel(const unsigned char* __restrict__ packed,
                                                  unsigned int layout, unsigned int height,
                                                  unsigned int stride, unsigned int x,
                                                  unsigned int y, unsigned char rgb[3]) {
    const size_t row = (size_t)y * stride;
    if (layout == POSED_COLOR_YUYV) {
        const unsigned char* pair = packed + row + 4 * (size_t)(x / 2);
        posed_yuv_to_rgb(pair[2 * (x & 1u)], pair[1], pair[3], rgb);
    } else if (layout == POSED_COLOR_NV12) {
        const unsigned char* uv =
            packed + (size_t)stride * height + (size_t)(y / 2) * stride + (x & ~1u);
        posed_yuv_to_rgb(packed[row + x], uv[0], uv[1], rgb);
    } else {
        const unsigned char* p = packed + row + 3 * (size_t)x;
        rgb[0] = p[0];
        rgb[1] = p[1];
        rgb[2] = p[2];
    }
}

// color.rs's to_rgb8: pixel (x, y) to rgb[3 * (y * width + x)..].
extern "C" __global__ void color_to_rgb8(const unsigned char* __restrict__ packed,
                                         unsigned int layout, unsigned int width,
                                         unsigned int height, unsigned int stride,
                                         unsigned char* __restrict__ rgb) {
    const unsigned int x = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= width || y >= height) {
        return;
    }
    unsigned char pixel[3];
    posed_color_pixel(packed, layout, height, stride, x, y, pixel);
    unsigned char* out = rgb + 3 * ((size_t)y * width + x);
    out[0] = pixel[0];
    out[1] = pixel[1];
    out[2] = pixel[2];
}

// color.rs's to_normalized_planar: pixel (x, y) to planes[c * width * height + y * width
// + x] for c = R, G, B, each byte as the CPU's `f32::from(byte) / 255.0`.
extern "C" __global__ void color_to_normalized_planar_f32(
    const unsigned char* __restrict__ packed, unsigned int layout, unsigned int width,
    unsigned int height, unsigned int stride, float* __restrict__ planes) {
    const unsigned int x = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= width || y >= height) {
        return;
    }
    unsigned char pixel[3];
    posed_color_pixel(packed, layout, height, stride, x, y, pixel);
    const size_t plane = (size_t)width * height;
    const size_t at = (size_t)y * width + x;
    planes[at] = __fdiv_rn((float)pixel[0], 255.0f);
    planes[plane + at] = __fdiv_rn((float)pixel[1], 255.0f);
    planes[2 * plane + at] = __fdiv_rn((float)pixel[2], 255.0f);
}
