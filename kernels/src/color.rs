//! Camera colour conversion: the frames a V4L2 camera delivers (YUYV, NV12 or RGB24, rows
//! possibly padded by the driver) into 8-bit RGB (row-major, 3 bytes per pixel) and into
//! normalised planar RGB (three planes of `width * height` f32, each byte divided by 255,
//! the `[3, H, W]` layout of the detector's input). CPU reference; the CUDA twin is
//! `cuda::GpuColor` (feature `cuda`, `kernels/cuda/color.cu`).
//!
//! # Colour maths
//!
//! YUV is read as ITU-R BT.601 limited range (Y in 16..=235, U and V in 16..=240 around
//! 128), which is what UVC webcams deliver by default. The conversion is integer fixed
//! point with 8 fractional bits, so that the CUDA twin gives the same bytes with no
//! rounding-mode or FMA question to settle (floating point would need both twins to round
//! the same way at every step):
//!
//! ```text
//! C = Y - 16, D = U - 128, E = V - 128
//! R = clamp((298 C + 409 E + 128) >> 8)
//! G = clamp((298 C - 100 D - 208 E + 128) >> 8)
//! B = clamp((298 C + 516 D + 128) >> 8)
//! ```
//!
//! with `>>` an arithmetic shift of an `i32` (a floor division by 256) and `clamp` to
//! `0..=255`. The coefficients are BT.601's `255 / 219 = 1.164`, `1.596`, `0.391`, `0.813`
//! and `2.018` times 256, rounded. Full-range YUV (JPEG-style, Y in 0..=255; some cameras
//! and `V4L2_QUANTIZATION_FULL_RANGE`) and BT.709 are not handled yet: such a camera's
//! picture comes out with lifted blacks and slightly wrong saturation.
//!
//! Nothing here allocates or panics, whatever the input: bad sizes, strides and buffer
//! lengths are [`KernelError`]s that say what was expected and what was found.

use crate::KernelError;

/// How a camera buffer holds its pixels: V4L2's single-planar formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelLayout {
    /// `V4L2_PIX_FMT_YUYV`, packed 4:2:2: `Y0 U Y1 V` for each pair of pixels, 2 bytes per
    /// pixel. The width must be even.
    Yuyv,
    /// `V4L2_PIX_FMT_NV12`, 4:2:0: a plane of Y (a byte per pixel), then, at
    /// `stride_bytes * height` with the same stride, a plane of interleaved `U V` pairs at
    /// half the resolution in both directions. The width and height must be even.
    Nv12,
    /// `V4L2_PIX_FMT_RGB24`, packed `R G B`, 3 bytes per pixel.
    Rgb24,
}

impl PixelLayout {
    /// The V4L2 fourcc: `YUYV`, `NV12`, `RGB3`.
    pub fn fourcc(&self) -> [u8; 4] {
        match self {
            Self::Yuyv => *b"YUYV",
            Self::Nv12 => *b"NV12",
            Self::Rgb24 => *b"RGB3",
        }
    }

    /// The name used in messages: `YUYV`, `NV12`, `RGB24`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Yuyv => "YUYV",
            Self::Nv12 => "NV12",
            Self::Rgb24 => "RGB24",
        }
    }

    /// Bytes of one unpadded row of the first plane (saturating at `usize::MAX`).
    pub fn row_bytes(&self, width: usize) -> usize {
        match self {
            Self::Yuyv => width.saturating_mul(2),
            Self::Nv12 => width,
            Self::Rgb24 => width.saturating_mul(3),
        }
    }

    /// The fewest bytes a buffer of `width` x `height` pixels with rows `stride_bytes`
    /// apart may hold: every row but the last with its padding, the last without (drivers
    /// may or may not pad it). For NV12 this includes the U V plane (`height / 2` rows,
    /// rounded up). Saturates at `usize::MAX`; 0 for an empty image.
    pub fn min_len(&self, width: usize, height: usize, stride_bytes: usize) -> usize {
        if width == 0 || height == 0 {
            return 0;
        }
        let rows = match self {
            Self::Yuyv | Self::Rgb24 => height,
            Self::Nv12 => height.saturating_add(height.div_ceil(2)),
        };
        // Every row but the last with its padding; the last, of either plane, is
        // `row_bytes` long in every layout (an NV12 U V row is `width` bytes).
        stride_bytes
            .saturating_mul(rows - 1)
            .saturating_add(self.row_bytes(width))
    }
}

/// A camera frame as the driver delivered it, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct PackedImage<'a> {
    /// How the pixels are stored.
    pub layout: PixelLayout,
    /// The buffer: at least [`PixelLayout::min_len`] bytes; more is ignored.
    pub data: &'a [u8],
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Bytes from the start of one row of the first plane to the next (V4L2's
    /// `bytesperline`), at least [`PixelLayout::row_bytes`]. Padding bytes are never read.
    pub stride_bytes: usize,
}

impl PackedImage<'_> {
    /// Checks the size, stride and length of the frame: what [`to_rgb8`] and
    /// [`to_normalized_planar`] refuse, in the order they refuse it.
    ///
    /// # Errors
    /// [`KernelError::InvalidValue`] for a zero width or height, an odd width (YUYV, NV12)
    /// or an odd height (NV12); [`KernelError::TooSmall`] for a stride shorter than a row
    /// or a buffer shorter than [`PixelLayout::min_len`].
    pub fn validate(&self) -> Result<(), KernelError> {
        let layout = self.layout;
        if self.width == 0 || self.height == 0 {
            return Err(KernelError::InvalidValue {
                what: "camera image size",
                reason: "expected a width and height of at least 1 pixel, found 0",
            });
        }
        if !self.width.is_multiple_of(2) {
            let what = match layout {
                PixelLayout::Yuyv => Some("YUYV image width"),
                PixelLayout::Nv12 => Some("NV12 image width"),
                PixelLayout::Rgb24 => None,
            };
            if let Some(what) = what {
                return Err(KernelError::InvalidValue {
                    what,
                    reason: "expected an even width (two pixels share one U and one V \
                             sample), found an odd one",
                });
            }
        }
        if layout == PixelLayout::Nv12 && !self.height.is_multiple_of(2) {
            return Err(KernelError::InvalidValue {
                what: "NV12 image height",
                reason: "expected an even height (two rows share one row of U and V \
                         samples), found an odd one",
            });
        }
        let row_bytes = layout.row_bytes(self.width);
        if self.stride_bytes < row_bytes {
            return Err(KernelError::TooSmall {
                what: match layout {
                    PixelLayout::Yuyv => "YUYV row stride in bytes (2 x width)",
                    PixelLayout::Nv12 => "NV12 row stride in bytes (width)",
                    PixelLayout::Rgb24 => "RGB24 row stride in bytes (3 x width)",
                },
                minimum: row_bytes,
                found: self.stride_bytes,
            });
        }
        let min_len = layout.min_len(self.width, self.height, self.stride_bytes);
        if self.data.len() < min_len {
            return Err(KernelError::TooSmall {
                what: match layout {
                    PixelLayout::Yuyv => "YUYV buffer bytes",
                    PixelLayout::Nv12 => "NV12 buffer bytes (Y plane, then U V plane)",
                    PixelLayout::Rgb24 => "RGB24 buffer bytes",
                },
                minimum: min_len,
                found: self.data.len(),
            });
        }
        Ok(())
    }

    /// Values in the converted image: `3 * width * height` (saturating).
    pub fn output_len(&self) -> usize {
        self.width.saturating_mul(self.height).saturating_mul(3)
    }
}

/// The checks of both conversions: the frame, then the output's length (`3 * width *
/// height` values). Shared with the CUDA twin so that both refuse the same input alike.
pub(crate) fn check_conversion(
    src: &PackedImage<'_>,
    what: &'static str,
    out_len: usize,
) -> Result<(), KernelError> {
    src.validate()?;
    if out_len != src.output_len() {
        return Err(KernelError::SizeMismatch {
            what,
            expected: src.output_len(),
            found: out_len,
        });
    }
    Ok(())
}

/// What [`to_rgb8`] calls its output in errors.
pub(crate) const RGB8_OUTPUT: &str = "RGB8 output bytes (3 x width x height)";
/// What [`to_normalized_planar`] calls its output in errors.
pub(crate) const PLANAR_OUTPUT: &str = "normalised planar RGB floats (3 x width x height)";

/// One BT.601 limited-range YUV sample as 8-bit RGB, in the module's fixed point: the
/// per-pixel specification both twins follow.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = i32::from(y) - 16;
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    [
        clamp_to_u8((298 * c + 409 * e + 128) >> 8),
        clamp_to_u8((298 * c - 100 * d - 208 * e + 128) >> 8),
        clamp_to_u8((298 * c + 516 * d + 128) >> 8),
    ]
}

/// Two pixels that share U and V: [`yuv_to_rgb`] of each, with the chroma terms computed
/// once (integer sums in another grouping: the same values).
#[inline(always)]
fn yuv_pair_to_rgb(y0: u8, y1: u8, u: u8, v: u8) -> [[u8; 3]; 2] {
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    let red = 409 * e + 128;
    let green = -100 * d - 208 * e + 128;
    let blue = 516 * d + 128;
    [y0, y1].map(|y| {
        let luma = 298 * (i32::from(y) - 16);
        [
            clamp_to_u8((luma + red) >> 8),
            clamp_to_u8((luma + green) >> 8),
            clamp_to_u8((luma + blue) >> 8),
        ]
    })
}

/// `value.clamp(0, 255)` as a byte, without branches: with `clamp` LLVM emits branches
/// here, which noisy chroma mispredicts (3x slower on random frames).
#[inline(always)]
fn clamp_to_u8(value: i32) -> u8 {
    // Negative -> 0 (the shift is arithmetic: all ones for a negative value).
    let non_negative = value & !(value >> 31);
    // Above 255 -> all ones; no overflow, the value is non-negative here.
    let saturated = non_negative | ((255 - non_negative) >> 31);
    // In 0..=255 after the mask: the cast is exact.
    (saturated & 255) as u8
}

/// Converts `src` into 8-bit RGB: `dst` is row-major, 3 bytes per pixel, exactly
/// `3 * width * height` bytes. RGB24 is copied row by row (padding dropped).
///
/// # Errors
/// Those of [`PackedImage::validate`]; [`KernelError::SizeMismatch`] for a `dst` of
/// another length. Then `dst` is left untouched.
pub fn to_rgb8(src: &PackedImage<'_>, dst: &mut [u8]) -> Result<(), KernelError> {
    check_conversion(src, RGB8_OUTPUT, dst.len())?;
    let row_len = 3 * src.width;
    if src.layout == PixelLayout::Rgb24 {
        for (row, out) in dst.chunks_exact_mut(row_len).enumerate() {
            let start = row * src.stride_bytes;
            out.copy_from_slice(&src.data[start..start + row_len]);
        }
        return Ok(());
    }
    convert(src, &mut Rgb8Sink { out: dst, row_len });
    Ok(())
}

/// Converts `src` into normalised planar RGB: `dst` holds the red plane, then green, then
/// blue, each `width * height` values row-major, exactly `3 * width * height` in all.
/// Each value is `f32::from(byte) / 255.0` of the byte [`to_rgb8`] gives, the expression
/// of [`crate::cosypose::crop::normalize_rgb8`]: the same bits as normalising the RGB8
/// image, planar instead of interleaved.
///
/// # Errors
/// Those of [`PackedImage::validate`]; [`KernelError::SizeMismatch`] for a `dst` of
/// another length. Then `dst` is left untouched.
pub fn to_normalized_planar(src: &PackedImage<'_>, dst: &mut [f32]) -> Result<(), KernelError> {
    check_conversion(src, PLANAR_OUTPUT, dst.len())?;
    let plane = src.width * src.height;
    let (red, rest) = dst.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    convert(
        src,
        &mut PlanarSink {
            red,
            green,
            blue,
            width: src.width,
        },
    );
    Ok(())
}

/// Where [`convert`] puts the pixels.
trait PixelSink {
    /// Takes row `row`'s pixels, left to right (exactly `width` of them).
    fn row(&mut self, row: usize, pixels: impl Iterator<Item = [u8; 3]>);
    /// Takes row `row`'s pixels in pairs, left to right (exactly `width / 2` pairs): the
    /// 4:2:x layouts, converted two pixels at a time.
    fn row_pairs(&mut self, row: usize, pairs: impl Iterator<Item = [[u8; 3]; 2]>);
}

struct Rgb8Sink<'a> {
    out: &'a mut [u8],
    row_len: usize,
}

impl PixelSink for Rgb8Sink<'_> {
    #[inline]
    fn row(&mut self, row: usize, pixels: impl Iterator<Item = [u8; 3]>) {
        let start = row * self.row_len;
        let out = &mut self.out[start..start + self.row_len];
        for (out, pixel) in out.chunks_exact_mut(3).zip(pixels) {
            out.copy_from_slice(&pixel);
        }
    }

    #[inline]
    fn row_pairs(&mut self, row: usize, pairs: impl Iterator<Item = [[u8; 3]; 2]>) {
        let start = row * self.row_len;
        let out = &mut self.out[start..start + self.row_len];
        for (out, pair) in out.chunks_exact_mut(6).zip(pairs) {
            out.copy_from_slice(pair.as_flattened());
        }
    }
}

struct PlanarSink<'a> {
    red: &'a mut [f32],
    green: &'a mut [f32],
    blue: &'a mut [f32],
    width: usize,
}

impl PixelSink for PlanarSink<'_> {
    #[inline]
    fn row(&mut self, row: usize, pixels: impl Iterator<Item = [u8; 3]>) {
        let start = row * self.width;
        let end = start + self.width;
        let planes = self.red[start..end]
            .iter_mut()
            .zip(&mut self.green[start..end])
            .zip(&mut self.blue[start..end]);
        for (((red, green), blue), [r, g, b]) in planes.zip(pixels) {
            // normalize_rgb8's expression, for the same bits.
            *red = f32::from(r) / 255.0;
            *green = f32::from(g) / 255.0;
            *blue = f32::from(b) / 255.0;
        }
    }

    #[inline]
    fn row_pairs(&mut self, row: usize, pairs: impl Iterator<Item = [[u8; 3]; 2]>) {
        let start = row * self.width;
        let end = start + self.width;
        let planes = self.red[start..end]
            .chunks_exact_mut(2)
            .zip(self.green[start..end].chunks_exact_mut(2))
            .zip(self.blue[start..end].chunks_exact_mut(2));
        for (((red, green), blue), pair) in planes.zip(pairs) {
            for (k, [r, g, b]) in pair.into_iter().enumerate() {
                // normalize_rgb8's expression, for the same bits.
                red[k] = f32::from(r) / 255.0;
                green[k] = f32::from(g) / 255.0;
                blue[k] = f32::from(b) / 255.0;
            }
        }
    }
}

/// Feeds every row of a validated `src` to `sink`.
fn convert(src: &PackedImage<'_>, sink: &mut impl PixelSink) {
    let (width, height, stride) = (src.width, src.height, src.stride_bytes);
    let row_bytes = src.layout.row_bytes(width);
    // Validated: every row (and NV12's U V rows) lies inside `data`.
    let line = |row: usize| &src.data[row * stride..row * stride + row_bytes];
    match src.layout {
        PixelLayout::Yuyv => {
            for row in 0..height {
                let pairs = line(row)
                    .chunks_exact(4)
                    .map(|q| yuv_pair_to_rgb(q[0], q[2], q[1], q[3]));
                sink.row_pairs(row, pairs);
            }
        }
        PixelLayout::Nv12 => {
            let uv_plane = stride * height;
            for row in 0..height {
                let uv_start = uv_plane + (row / 2) * stride;
                let uv = &src.data[uv_start..uv_start + width];
                let pairs = line(row)
                    .chunks_exact(2)
                    .zip(uv.chunks_exact(2))
                    .map(|(y, uv)| yuv_pair_to_rgb(y[0], y[1], uv[0], uv[1]));
                sink.row_pairs(row, pairs);
            }
        }
        PixelLayout::Rgb24 => {
            for row in 0..height {
                let pixels = line(row).chunks_exact(3).map(|p| [p[0], p[1], p[2]]);
                sink.row(row, pixels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cosypose::crop::normalize_rgb8;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const LAYOUTS: [PixelLayout; 3] = [PixelLayout::Yuyv, PixelLayout::Nv12, PixelLayout::Rgb24];

    fn image(layout: PixelLayout, data: &[u8], width: usize, height: usize) -> PackedImage<'_> {
        PackedImage {
            layout,
            data,
            width,
            height,
            stride_bytes: layout.row_bytes(width),
        }
    }

    fn rgb8(src: &PackedImage<'_>) -> Vec<u8> {
        let mut out = vec![0u8; src.output_len()];
        to_rgb8(src, &mut out).expect("conversion");
        out
    }

    fn close(found: [u8; 3], expected: [u8; 3], tolerance: u8) -> bool {
        found
            .iter()
            .zip(&expected)
            .all(|(f, e)| f.abs_diff(*e) <= tolerance)
    }

    #[test]
    fn the_branchless_clamp_is_clamp() {
        let edges = [i32::MIN, i32::MIN + 1, -1 << 20, i32::MAX - 1, i32::MAX];
        for value in (-70_000..140_000).chain(edges) {
            assert_eq!(clamp_to_u8(value), value.clamp(0, 255) as u8, "{value}");
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        // Out of the limited range: clamped, not wrapped.
        assert_eq!(yuv_to_rgb(0, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(255, 128, 128), [255, 255, 255]);
        assert_eq!(yuv_to_rgb(255, 255, 255), [255, 125, 255]);
        assert_eq!(yuv_to_rgb(0, 0, 0), [0, 135, 0]);
        // BT.601 limited-range YUV of the primaries, rounded: 16 + 219 * (0.299, 0.587,
        // 0.114) and 128 + 224 * the colour differences.
        for (yuv, rgb) in [
            ([81, 90, 240], [255, 0, 0]),
            ([145, 54, 34], [0, 255, 0]),
            ([41, 240, 110], [0, 0, 255]),
        ] {
            let found = yuv_to_rgb(yuv[0], yuv[1], yuv[2]);
            assert!(
                close(found, rgb, 1),
                "{yuv:?} -> {found:?}, expected {rgb:?}"
            );
        }
        // Greys: 255 / 219 per level of Y (298 / 256 in fixed point), within one level of
        // the exact value, and never darker for a brighter Y.
        let mut previous = 0;
        for y in 16..=235u8 {
            let exact = f64::from(y - 16) * 255.0 / 219.0;
            let [r, g, b] = yuv_to_rgb(y, 128, 128);
            assert!((r == g) && (g == b), "{y}");
            assert!((f64::from(r) - exact).abs() < 1.0, "{y}: {r} vs {exact}");
            assert!(r >= previous, "{y}");
            previous = r;
        }
        // The same pixel through each layout.
        let yuyv = [81, 90, 145, 240];
        assert_eq!(
            rgb8(&image(PixelLayout::Yuyv, &yuyv, 2, 1)),
            [yuv_to_rgb(81, 90, 240), yuv_to_rgb(145, 90, 240)].as_flattened()
        );
        let nv12 = [16, 235, 81, 41, 90, 240];
        assert_eq!(
            rgb8(&image(PixelLayout::Nv12, &nv12, 2, 2)),
            [16, 235, 81, 41]
                .map(|y| yuv_to_rgb(y, 90, 240))
                .as_flattened()
        );
        let rgb = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(rgb8(&image(PixelLayout::Rgb24, &rgb, 3, 1)), rgb);
        assert_eq!(PixelLayout::Yuyv.fourcc(), *b"YUYV");
        assert_eq!(PixelLayout::Nv12.fourcc(), *b"NV12");
        assert_eq!(PixelLayout::Rgb24.fourcc(), *b"RGB3");
    }

    /// BT.601 limited range, RGB to YUV in f64 (the forward transform of what the module
    /// inverts).
    fn rgb_to_yuv(rgb: [u8; 3]) -> [f64; 3] {
        let [r, g, b] = rgb.map(f64::from);
        [
            16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0,
            128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0,
            128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0,
        ]
    }

    fn to_byte(value: f64) -> u8 {
        value.round().clamp(0.0, 255.0) as u8
    }

    /// A smooth test picture, as a camera sees a scene: every channel changes by about a
    /// level per pixel, and the whole cube of colours is crossed.
    fn smooth_rgb(width: usize, height: usize) -> Vec<u8> {
        let mut rgb = Vec::with_capacity(3 * width * height);
        for i in 0..height {
            for j in 0..width {
                let (x, y) = (j as f64 / width as f64, i as f64 / height as f64);
                rgb.extend([
                    to_byte(255.0 * x),
                    to_byte(255.0 * y),
                    to_byte(127.5 + 127.5 * (2.0 * x + 1.5 * y).sin()),
                ]);
            }
        }
        rgb
    }

    /// `rgb` as YUYV with rows `stride` bytes apart, padding bytes `pad`.
    fn encode_yuyv(rgb: &[u8], width: usize, height: usize, stride: usize, pad: u8) -> Vec<u8> {
        let mut data = vec![pad; stride * height];
        for i in 0..height {
            for j in (0..width).step_by(2) {
                let at = |j: usize| {
                    let p = 3 * (i * width + j);
                    rgb_to_yuv([rgb[p], rgb[p + 1], rgb[p + 2]])
                };
                let (a, b) = (at(j), at(j + 1));
                let out = &mut data[i * stride + 2 * j..i * stride + 2 * j + 4];
                out.copy_from_slice(&[
                    to_byte(a[0]),
                    to_byte((a[1] + b[1]) / 2.0),
                    to_byte(b[0]),
                    to_byte((a[2] + b[2]) / 2.0),
                ]);
            }
        }
        data
    }

    /// `rgb` as NV12 with rows `stride` bytes apart, padding bytes `pad`.
    fn encode_nv12(rgb: &[u8], width: usize, height: usize, stride: usize, pad: u8) -> Vec<u8> {
        let mut data = vec![pad; stride * height * 3 / 2];
        let at = |i: usize, j: usize| {
            let p = 3 * (i * width + j);
            rgb_to_yuv([rgb[p], rgb[p + 1], rgb[p + 2]])
        };
        for i in 0..height {
            for j in 0..width {
                data[i * stride + j] = to_byte(at(i, j)[0]);
            }
        }
        for i in (0..height).step_by(2) {
            for j in (0..width).step_by(2) {
                let quad = [at(i, j), at(i, j + 1), at(i + 1, j), at(i + 1, j + 1)];
                let mean = |c: usize| quad.iter().map(|q| q[c]).sum::<f64>() / 4.0;
                let uv = stride * height + (i / 2) * stride + j;
                data[uv] = to_byte(mean(1));
                data[uv + 1] = to_byte(mean(2));
            }
        }
        data
    }

    fn encode_rgb24(rgb: &[u8], width: usize, height: usize, stride: usize, pad: u8) -> Vec<u8> {
        let mut data = vec![pad; stride * height];
        for (i, row) in rgb.chunks_exact(3 * width).enumerate() {
            data[i * stride..i * stride + 3 * width].copy_from_slice(row);
        }
        data
    }

    fn encode(
        layout: PixelLayout,
        rgb: &[u8],
        width: usize,
        height: usize,
        stride: usize,
        pad: u8,
    ) -> Vec<u8> {
        match layout {
            PixelLayout::Yuyv => encode_yuyv(rgb, width, height, stride, pad),
            PixelLayout::Nv12 => encode_nv12(rgb, width, height, stride, pad),
            PixelLayout::Rgb24 => encode_rgb24(rgb, width, height, stride, pad),
        }
    }

    #[test]
    fn yuyv_and_nv12_round_trip_close_to_the_rgb_image() {
        let (width, height) = (256, 192);
        let rgb = smooth_rgb(width, height);
        // What is lost: Y, U and V rounded to bytes (half a level each, scaled by up to
        // 2.02 on the way back) and, for YUYV and NV12, the chroma shared by 2 or 4 pixels
        // of a picture that changes by about a level per pixel. RGB24 is exact.
        for (layout, max_allowed, mean_allowed) in [
            (PixelLayout::Yuyv, 3, 0.6),
            (PixelLayout::Nv12, 4, 0.75),
            (PixelLayout::Rgb24, 0, 0.0),
        ] {
            let stride = layout.row_bytes(width) + 8;
            let data = encode(layout, &rgb, width, height, stride, 0);
            let src = PackedImage {
                layout,
                data: &data,
                width,
                height,
                stride_bytes: stride,
            };
            let back = rgb8(&src);
            let diffs: Vec<u8> = back.iter().zip(&rgb).map(|(a, b)| a.abs_diff(*b)).collect();
            let max = diffs.iter().copied().max().unwrap_or(0);
            let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
            eprintln!("{layout:?}: largest difference {max}, mean {mean:.3}");
            assert!(
                max <= max_allowed && mean <= mean_allowed,
                "{layout:?}: largest difference {max}, mean {mean:.3}"
            );
        }
    }

    #[test]
    fn stride_padding_is_never_read() {
        let mut rng = ChaCha8Rng::seed_from_u64(0xc0_104);
        for layout in LAYOUTS {
            for (width, height) in [(2, 2), (6, 4), (38, 22), (64, 48)] {
                let rgb: Vec<u8> = (0..3 * width * height).map(|_| rng.random()).collect();
                let tight = layout.row_bytes(width);
                let reference = {
                    let data = encode(layout, &rgb, width, height, tight, 0);
                    rgb8(&image(layout, &data, width, height))
                };
                for stride in [tight + 1, tight + 13, tight.next_multiple_of(64) + 64] {
                    for pad in [0x00, 0xff] {
                        let data = encode(layout, &rgb, width, height, stride, pad);
                        let src = PackedImage {
                            layout,
                            data: &data,
                            width,
                            height,
                            stride_bytes: stride,
                        };
                        assert_eq!(
                            rgb8(&src),
                            reference,
                            "{layout:?} {width}x{height} {stride}"
                        );
                        // Without the padding after the last row: still enough.
                        let min_len = layout.min_len(width, height, stride);
                        assert!(min_len < data.len());
                        let src = PackedImage {
                            data: &data[..min_len],
                            ..src
                        };
                        assert_eq!(
                            rgb8(&src),
                            reference,
                            "{layout:?} {width}x{height} {stride}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn min_len_counts_every_row_but_the_last_with_its_padding() {
        assert_eq!(PixelLayout::Yuyv.min_len(640, 480, 1280), 1280 * 480);
        assert_eq!(PixelLayout::Yuyv.min_len(640, 480, 1344), 1344 * 479 + 1280);
        assert_eq!(PixelLayout::Nv12.min_len(640, 480, 640), 640 * 720);
        assert_eq!(PixelLayout::Nv12.min_len(640, 480, 704), 704 * 719 + 640);
        assert_eq!(PixelLayout::Rgb24.min_len(5, 3, 16), 16 * 2 + 15);
        assert_eq!(PixelLayout::Rgb24.min_len(0, 3, 16), 0);
        assert_eq!(PixelLayout::Nv12.min_len(4, 0, 16), 0);
        assert_eq!(
            PixelLayout::Yuyv.min_len(usize::MAX, 2, usize::MAX),
            usize::MAX
        );
    }

    #[test]
    fn every_bad_input_is_refused_with_what_was_expected() {
        let data = vec![0u8; 10_000];
        let mut rgb = vec![0u8; 3 * 8 * 6];
        let mut planes = vec![0.0f32; 3 * 8 * 6];
        let src = |layout, width, height, stride_bytes, len: usize| PackedImage {
            layout,
            data: &data[..len],
            width,
            height,
            stride_bytes,
        };
        let zero = KernelError::InvalidValue {
            what: "camera image size",
            reason: "expected a width and height of at least 1 pixel, found 0",
        };
        let odd_width = |what| KernelError::InvalidValue {
            what,
            reason: "expected an even width (two pixels share one U and one V sample), \
                     found an odd one",
        };
        let cases: Vec<(PackedImage<'_>, KernelError)> = vec![
            (src(PixelLayout::Yuyv, 0, 6, 16, 1000), zero.clone()),
            (src(PixelLayout::Nv12, 8, 0, 16, 1000), zero.clone()),
            (src(PixelLayout::Rgb24, 0, 0, 0, 0), zero),
            (
                src(PixelLayout::Yuyv, 7, 6, 16, 1000),
                odd_width("YUYV image width"),
            ),
            (
                src(PixelLayout::Nv12, 7, 6, 16, 1000),
                odd_width("NV12 image width"),
            ),
            (
                src(PixelLayout::Nv12, 8, 5, 16, 1000),
                KernelError::InvalidValue {
                    what: "NV12 image height",
                    reason: "expected an even height (two rows share one row of U and V \
                             samples), found an odd one",
                },
            ),
            (
                src(PixelLayout::Yuyv, 8, 6, 15, 1000),
                KernelError::TooSmall {
                    what: "YUYV row stride in bytes (2 x width)",
                    minimum: 16,
                    found: 15,
                },
            ),
            (
                src(PixelLayout::Nv12, 8, 6, 7, 1000),
                KernelError::TooSmall {
                    what: "NV12 row stride in bytes (width)",
                    minimum: 8,
                    found: 7,
                },
            ),
            (
                src(PixelLayout::Rgb24, 8, 6, 0, 1000),
                KernelError::TooSmall {
                    what: "RGB24 row stride in bytes (3 x width)",
                    minimum: 24,
                    found: 0,
                },
            ),
            (
                src(PixelLayout::Yuyv, 8, 6, 20, 20 * 5 + 15),
                KernelError::TooSmall {
                    what: "YUYV buffer bytes",
                    minimum: 20 * 5 + 16,
                    found: 20 * 5 + 15,
                },
            ),
            (
                src(PixelLayout::Nv12, 8, 6, 8, 8 * 9 - 1),
                KernelError::TooSmall {
                    what: "NV12 buffer bytes (Y plane, then U V plane)",
                    minimum: 8 * 9,
                    found: 8 * 9 - 1,
                },
            ),
            (
                src(PixelLayout::Rgb24, 8, 6, 24, 0),
                KernelError::TooSmall {
                    what: "RGB24 buffer bytes",
                    minimum: 24 * 6,
                    found: 0,
                },
            ),
            (
                src(PixelLayout::Yuyv, usize::MAX - 1, 2, usize::MAX, 1000),
                KernelError::TooSmall {
                    what: "YUYV buffer bytes",
                    minimum: usize::MAX,
                    found: 1000,
                },
            ),
        ];
        for (image, expected) in &cases {
            rgb.fill(7);
            planes.fill(7.0);
            assert_eq!(image.validate().as_ref(), Err(expected), "{image:?}");
            assert_eq!(to_rgb8(image, &mut rgb).as_ref(), Err(expected));
            assert_eq!(
                to_normalized_planar(image, &mut planes).as_ref(),
                Err(expected)
            );
            assert!(rgb.iter().all(|&v| v == 7), "output written on error");
            assert!(planes.iter().all(|&v| v == 7.0), "output written on error");
        }
        let message = cases[9].1.to_string();
        assert_eq!(
            message,
            "YUYV buffer bytes: expected at least 116, found 115"
        );

        // The output's length, after the frame.
        for layout in LAYOUTS {
            let good = src(layout, 8, 6, 32, 1000);
            for len in [0, 3 * 8 * 6 - 1, 3 * 8 * 6 + 1] {
                assert_eq!(
                    to_rgb8(&good, &mut vec![0u8; len]),
                    Err(KernelError::SizeMismatch {
                        what: RGB8_OUTPUT,
                        expected: 144,
                        found: len,
                    })
                );
                assert_eq!(
                    to_normalized_planar(&good, &mut vec![0.0f32; len]),
                    Err(KernelError::SizeMismatch {
                        what: PLANAR_OUTPUT,
                        expected: 144,
                        found: len,
                    })
                );
            }
            to_rgb8(&good, &mut rgb).expect("right length");
            to_normalized_planar(&good, &mut planes).expect("right length");
        }
        assert_eq!(
            to_rgb8(&src(PixelLayout::Yuyv, 8, 6, 16, 1000), &mut [0u8; 5]),
            Err(KernelError::SizeMismatch {
                what: RGB8_OUTPUT,
                expected: 144,
                found: 5
            })
        );
        // Odd sizes are fine where nothing is shared.
        let mut out = vec![0u8; 3 * 7 * 5];
        to_rgb8(&src(PixelLayout::Rgb24, 7, 5, 21, 105), &mut out).expect("RGB24 7 x 5");
        let mut out = vec![0u8; 3 * 8 * 5];
        to_rgb8(&src(PixelLayout::Yuyv, 8, 5, 16, 80), &mut out).expect("YUYV 8 x 5");
    }

    #[test]
    fn the_planar_output_is_normalize_rgb8_of_the_rgb8_output_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x9_1a4a);
        for layout in LAYOUTS {
            for (width, height, padding) in [(2, 2, 0), (10, 6, 3), (64, 48, 64)] {
                let stride = layout.row_bytes(width) + padding;
                let len = layout.min_len(width, height, stride) + 5;
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let src = PackedImage {
                    layout,
                    data: &data,
                    width,
                    height,
                    stride_bytes: stride,
                };
                let rgb = rgb8(&src);
                let mut normalized = vec![0.0f32; rgb.len()];
                normalize_rgb8(&rgb, &mut normalized).expect("normalise");
                let mut planes = vec![f32::NAN; rgb.len()];
                to_normalized_planar(&src, &mut planes).expect("planar");
                let plane = width * height;
                for p in 0..plane {
                    for c in 0..3 {
                        assert_eq!(
                            planes[c * plane + p].to_bits(),
                            normalized[3 * p + c].to_bits(),
                            "{layout:?} pixel {p} channel {c}"
                        );
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn no_input_panics(
            layout in prop::sample::select(LAYOUTS.to_vec()),
            width in 0usize..12,
            height in 0usize..12,
            stride in 0usize..48,
            len in 0usize..700,
            out_delta in -2i64..3,
        ) {
            let data = vec![0x5au8; len];
            let src = PackedImage { layout, data: &data, width, height, stride_bytes: stride };
            let out_len = (src.output_len() as i64 + out_delta).max(0) as usize;
            let mut rgb = vec![0u8; out_len];
            let mut planes = vec![0.0f32; out_len];
            let expect_ok = width > 0
                && height > 0
                && (layout == PixelLayout::Rgb24 || width % 2 == 0)
                && (layout != PixelLayout::Nv12 || height % 2 == 0)
                && stride >= layout.row_bytes(width)
                && len >= layout.min_len(width, height, stride)
                && out_delta == 0;
            prop_assert_eq!(to_rgb8(&src, &mut rgb).is_ok(), expect_ok);
            prop_assert_eq!(to_normalized_planar(&src, &mut planes).is_ok(), expect_ok);
        }
    }
}
