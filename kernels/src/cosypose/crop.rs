//! The crop around the current estimate (spec A.2): robust projection, the crop box,
//! `K_crop`, and RoIAlign of the camera image into the network's 240 x 320 input.

use nalgebra::{Matrix3, Vector3};

use super::{
    BoxXyxy, CROP_HEIGHT, CROP_SCALE, CROP_WIDTH, PROJECTION_MIN_DEPTH_M, ROI_ALIGN_SAMPLING_RATIO,
};
use crate::{Intrinsics, KernelError, Pose};

/// `[su, sv, s] = K (R p + t)`, `(u, v) = (su, sv) / max(s, 0.1)`: CosyPose's
/// `project_points_robust`. The clamp keeps points behind the camera from flipping sign.
pub fn project_robust(
    k: &Intrinsics,
    camera_from_object: &Pose,
    point_m: &Vector3<f64>,
) -> [f64; 2] {
    let p = camera_from_object.rotation * point_m + camera_from_object.translation_m;
    let s = k.k * p;
    let depth = s.z.max(PROJECTION_MIN_DEPTH_M);
    [s.x / depth, s.y / depth]
}

/// The box (min u, min v, max u, max v) of the robustly projected points: CosyPose's
/// rendered box, around which the crop is placed. Infinite bounds for no points.
pub fn projected_box(k: &Intrinsics, camera_from_object: &Pose, points_m: &[[f32; 3]]) -> BoxXyxy {
    let mut bbox = [
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    ];
    for p in points_m {
        let point = Vector3::new(f64::from(p[0]), f64::from(p[1]), f64::from(p[2]));
        let [u, v] = project_robust(k, camera_from_object, &point);
        bbox = [
            bbox[0].min(u),
            bbox[1].min(v),
            bbox[2].max(u),
            bbox[3].max(v),
        ];
    }
    bbox
}

/// The crop box of `deepim_boxes` with CosyPose's inputs: the box of the projected model
/// points, centred on the projected object origin, enlarged by lambda = 1.4 and given the
/// aspect ratio of the full input image (`r = max(H, W) / min(H, W)`). Not clamped: it may
/// leave the image.
pub fn crop_box(
    k: &Intrinsics,
    camera_from_object: &Pose,
    points_m: &[[f32; 3]],
    image_width: usize,
    image_height: usize,
) -> Result<BoxXyxy, KernelError> {
    if points_m.is_empty() {
        return Err(KernelError::Empty {
            what: "model points for the crop",
        });
    }
    if image_width == 0 || image_height == 0 {
        return Err(KernelError::InvalidValue {
            what: "image size",
            reason: "width and height must be positive",
        });
    }
    let [x1, y1, x2, y2] = projected_box(k, camera_from_object, points_m);
    let [xc, yc] = project_robust(k, camera_from_object, &Vector3::zeros());
    let (w, h) = (image_width as f64, image_height as f64);
    let r = w.max(h) / w.min(h);
    // The rendered box and the observed box are the same box here (the detection never
    // enters the crop), so the maxima run over its two edges.
    let dx = (x1 - xc).abs().max((x2 - xc).abs());
    let dy = (y1 - yc).abs().max((y2 - yc).abs());
    let crop_w = 2.0 * CROP_SCALE * dx.max(r * dy);
    let crop_h = 2.0 * CROP_SCALE * (dx / r).max(dy);
    let bbox = [
        xc - crop_w / 2.0,
        yc - crop_h / 2.0,
        xc + crop_w / 2.0,
        yc + crop_h / 2.0,
    ];
    if !bbox.iter().all(|v| v.is_finite()) {
        return Err(KernelError::NotFinite { what: "crop box" });
    }
    Ok(bbox)
}

/// The intrinsics of a crop box resized to 240 x 320 (`get_K_crop_resize`):
/// `fx' = sx fx`, `fy' = sy fy`, `cx' = (320 - 1)/2 + sx (cx - (x1 + x2)/2)`,
/// `cy' = (240 - 1)/2 + sy (cy - (y1 + y2)/2)`, with `sx = 320 / Wc`, `sy = 240 / Hc`;
/// the skew is copied unscaled, as CosyPose does.
pub fn k_crop(k: &Intrinsics, crop: &BoxXyxy) -> Result<Intrinsics, KernelError> {
    let crop_w = crop[2] - crop[0];
    let crop_h = crop[3] - crop[1];
    if !(crop_w > 0.0 && crop_h > 0.0 && crop_w.is_finite() && crop_h.is_finite()) {
        return Err(KernelError::InvalidValue {
            what: "crop box",
            reason: "width and height must be positive and finite",
        });
    }
    let sx = CROP_WIDTH as f64 / crop_w;
    let sy = CROP_HEIGHT as f64 / crop_h;
    let m = &k.k;
    let cx = (CROP_WIDTH as f64 - 1.0) / 2.0 + sx * (m[(0, 2)] - (crop[0] + crop[2]) / 2.0);
    let cy = (CROP_HEIGHT as f64 - 1.0) / 2.0 + sy * (m[(1, 2)] - (crop[1] + crop[3]) / 2.0);
    Ok(Intrinsics {
        k: Matrix3::new(
            sx * m[(0, 0)],
            m[(0, 1)],
            cx,
            0.0,
            sy * m[(1, 1)],
            cy,
            0.0,
            0.0,
            1.0,
        ),
    })
}

/// Where one RoIAlign sample falls along one axis: the two texels and their weights, or
/// nothing when the sample lies outside [-1, size] (it then contributes 0).
#[derive(Clone, Copy, Default)]
struct AxisSample {
    valid: bool,
    low: usize,
    high: usize,
    /// Weight of `high` (`l` in torchvision), `1 - l` goes to `low`.
    frac: f32,
}

/// torchvision's `bilinear_interpolate` along one axis, in f32.
fn axis_sample(coordinate: f32, size: usize) -> AxisSample {
    let size_f = size as f32;
    if coordinate < -1.0 || coordinate > size_f {
        return AxisSample::default();
    }
    let c = coordinate.max(0.0);
    // c is in [0, size]: the cast truncates like the C++ (int) cast.
    let mut low = c as usize;
    let (high, frac);
    if low >= size - 1 {
        low = size - 1;
        high = size - 1;
        frac = 0.0;
    } else {
        high = low + 1;
        frac = c - low as f32;
    }
    AxisSample {
        valid: true,
        low,
        high,
        frac,
    }
}

/// Per output index along one axis, the sample positions of torchvision's RoIAlign with
/// `aligned = False`: `start + i bin + (s + 0.5) bin / ratio`, `bin = max(len, 1) / out`.
fn axis_samples<const N: usize>(
    start: f32,
    end: f32,
    out: usize,
    size: usize,
    samples: &mut [AxisSample; N],
) {
    let length = (end - start).max(1.0);
    let bin = length / out as f32;
    let ratio = ROI_ALIGN_SAMPLING_RATIO;
    for i in 0..out {
        for s in 0..ratio {
            let coordinate = start + i as f32 * bin + (s as f32 + 0.5) * bin / ratio as f32;
            samples[i * ratio + s] = axis_sample(coordinate, size);
        }
    }
}

/// RoIAlign of an 8-bit RGB image (row-major, 3 bytes per pixel) over `crop` into the
/// network layout: three planes of 240 x 320 float values in [0, 1], written to
/// `out[..3 * 240 * 320]`. Semantics of `torchvision.ops.roi_align(image / 255, crop,
/// (240, 320), spatial_scale = 1, sampling_ratio = 4, aligned = False)`: each output pixel
/// is the mean of 4 x 4 bilinear samples; samples outside [-1, W] x [-1, H] count as 0,
/// coordinates below 0 clamp to 0 and past the last texel to the last texel. Computed in
/// f32 in torchvision's order. Allocates nothing.
pub fn roi_align_rgb8(
    rgb: &[u8],
    width: usize,
    height: usize,
    crop: &BoxXyxy,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_roi_align(rgb.len(), width, height, "RGB image bytes", out.len())?;
    roi_align(
        rgb,
        |byte| f32::from(byte) / 255.0,
        width,
        height,
        crop,
        out,
    )
}

/// [`roi_align_rgb8`] of an image already divided by 255 ([`normalize_rgb8`]): the same
/// values, bit for bit, without a division per texel read. For several crops of one
/// image, normalise it once.
pub fn roi_align_normalized(
    rgb: &[f32],
    width: usize,
    height: usize,
    crop: &BoxXyxy,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_roi_align(rgb.len(), width, height, "normalised RGB values", out.len())?;
    roi_align(rgb, |value| value, width, height, crop, out)
}

/// `out[i] = rgb[i] / 255` in f32, the texel values RoIAlign reads. `out` must hold
/// `rgb.len()` values.
pub fn normalize_rgb8(rgb: &[u8], out: &mut [f32]) -> Result<(), KernelError> {
    if out.len() != rgb.len() {
        return Err(KernelError::SizeMismatch {
            what: "normalised RGB values",
            expected: rgb.len(),
            found: out.len(),
        });
    }
    for (value, &byte) in out.iter_mut().zip(rgb) {
        *value = f32::from(byte) / 255.0;
    }
    Ok(())
}

fn check_roi_align(
    image_len: usize,
    width: usize,
    height: usize,
    what: &'static str,
    out_len: usize,
) -> Result<(), KernelError> {
    if width == 0 || height == 0 {
        return Err(KernelError::InvalidValue {
            what: "image size",
            reason: "width and height must be positive",
        });
    }
    if image_len != width * height * 3 {
        return Err(KernelError::SizeMismatch {
            what,
            expected: width * height * 3,
            found: image_len,
        });
    }
    let plane = CROP_HEIGHT * CROP_WIDTH;
    if out_len < 3 * plane {
        return Err(KernelError::SizeMismatch {
            what: "RoIAlign output",
            expected: 3 * plane,
            found: out_len,
        });
    }
    Ok(())
}

/// RoIAlign over the texels of a row-major RGB image, each read as `to_f32(texel)`
/// (checked sizes).
///
/// The arithmetic is torchvision's, operation for operation and in its order (the
/// CUDA twin does the same, and is checked bit for bit against this); what is hoisted
/// out of the loops is only where each sample's texels are (row and column offsets) and
/// its `1 - l` weights, which are the same values wherever they are computed.
fn roi_align<T: Copy>(
    texels: &[T],
    to_f32: impl Fn(T) -> f32,
    width: usize,
    height: usize,
    crop: &BoxXyxy,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let plane = CROP_HEIGHT * CROP_WIDTH;
    let (red, rest) = out[..3 * plane].split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    roi_align_rows(
        texels,
        to_f32,
        (width, height),
        crop,
        0..CROP_HEIGHT,
        [red, green, blue],
    )
}

/// [`roi_align_normalized`] of output rows `rows` only, into three planes of
/// `rows.len()` rows of 240 x 320's width each (red, green, blue): for splitting one crop
/// over threads. Each output pixel is computed exactly as by the whole crop.
///
/// # Errors
/// Bad sizes, rows beyond the crop's 240, planes of the wrong length, a crop box that is
/// not finite.
pub fn roi_align_normalized_rows(
    rgb: &[f32],
    width: usize,
    height: usize,
    crop: &BoxXyxy,
    rows: std::ops::Range<usize>,
    planes: [&mut [f32]; 3],
) -> Result<(), KernelError> {
    check_roi_align(
        rgb.len(),
        width,
        height,
        "normalised RGB values",
        3 * CROP_HEIGHT * CROP_WIDTH,
    )?;
    if rows.start > rows.end || rows.end > CROP_HEIGHT {
        return Err(KernelError::InvalidValue {
            what: "RoIAlign rows",
            reason: "expected a range within the crop's 240 rows",
        });
    }
    let expected = rows.len() * CROP_WIDTH;
    if let Some(plane) = planes.iter().find(|plane| plane.len() != expected) {
        return Err(KernelError::SizeMismatch {
            what: "RoIAlign output plane",
            expected,
            found: plane.len(),
        });
    }
    roi_align_rows(rgb, |value| value, (width, height), crop, rows, planes)
}

/// The RoIAlign of output rows `rows` into `planes` (checked sizes).
fn roi_align_rows<T: Copy>(
    texels: &[T],
    to_f32: impl Fn(T) -> f32,
    (width, height): (usize, usize),
    crop: &BoxXyxy,
    rows: std::ops::Range<usize>,
    mut planes: [&mut [f32]; 3],
) -> Result<(), KernelError> {
    let crop_f32 = crop.map(|v| v as f32);
    if !crop_f32.iter().all(|v| v.is_finite()) {
        return Err(KernelError::NotFinite { what: "crop box" });
    }
    const RATIO: usize = ROI_ALIGN_SAMPLING_RATIO;
    let mut xs = [AxisSample::default(); CROP_WIDTH * RATIO];
    let mut ys = [AxisSample::default(); CROP_HEIGHT * RATIO];
    axis_samples(crop_f32[0], crop_f32[2], CROP_WIDTH, width, &mut xs);
    axis_samples(crop_f32[1], crop_f32[3], CROP_HEIGHT, height, &mut ys);
    let mut columns = [TexelPair::default(); CROP_WIDTH * RATIO];
    let mut row_pairs = [TexelPair::default(); CROP_HEIGHT * RATIO];
    for (pair, sample) in columns.iter_mut().zip(&xs) {
        *pair = TexelPair::of(sample, 3);
    }
    for (pair, sample) in row_pairs.iter_mut().zip(&ys) {
        *pair = TexelPair::of(sample, width * 3);
    }
    let count = (RATIO * RATIO) as f32;
    let pixel = |offset: usize| -> [f32; 3] {
        let rgb = &texels[offset..offset + 3];
        [to_f32(rgb[0]), to_f32(rgb[1]), to_f32(rgb[2])]
    };
    let first_row = rows.start;
    for i in rows {
        let row_samples = &row_pairs[i * RATIO..(i + 1) * RATIO];
        for j in 0..CROP_WIDTH {
            let mut sums = [0.0f32; 3];
            for y in row_samples.iter().filter(|y| y.valid) {
                for x in columns[j * RATIO..(j + 1) * RATIO]
                    .iter()
                    .filter(|x| x.valid)
                {
                    let (w1, w2, w3, w4) = (
                        y.low_weight * x.low_weight,
                        y.low_weight * x.high_weight,
                        y.high_weight * x.low_weight,
                        y.high_weight * x.high_weight,
                    );
                    let v1 = pixel(y.low + x.low);
                    let v2 = pixel(y.low + x.high);
                    let v3 = pixel(y.high + x.low);
                    let v4 = pixel(y.high + x.high);
                    for (c, sum) in sums.iter_mut().enumerate() {
                        *sum += w1 * v1[c] + w2 * v2[c] + w3 * v3[c] + w4 * v4[c];
                    }
                }
            }
            for (plane, sum) in planes.iter_mut().zip(sums) {
                plane[(i - first_row) * CROP_WIDTH + j] = sum / count;
            }
        }
    }
    Ok(())
}

/// One RoIAlign sample along one axis, as offsets into the image's texels: the low and
/// high texels' offsets (`index * stride`) and their weights (`1 - l` and `l`).
#[derive(Clone, Copy, Default)]
struct TexelPair {
    valid: bool,
    low: usize,
    high: usize,
    low_weight: f32,
    high_weight: f32,
}

impl TexelPair {
    fn of(sample: &AxisSample, stride: usize) -> Self {
        Self {
            valid: sample.valid,
            low: sample.low * stride,
            high: sample.high * stride,
            low_weight: 1.0 - sample.frac,
            high_weight: sample.frac,
        }
    }
}

#[cfg(test)]
/// The loop as first written (torchvision's, texel by texel): the reference the
/// optimised one above must equal bit for bit.
pub(crate) fn roi_align_reference(
    texel_at: impl Fn(usize) -> f32,
    width: usize,
    height: usize,
    crop: &BoxXyxy,
    out: &mut [f32],
) {
    let plane = CROP_HEIGHT * CROP_WIDTH;
    let crop_f32 = crop.map(|v| v as f32);
    const RATIO: usize = ROI_ALIGN_SAMPLING_RATIO;
    let mut xs = [AxisSample::default(); CROP_WIDTH * RATIO];
    let mut ys = [AxisSample::default(); CROP_HEIGHT * RATIO];
    axis_samples(crop_f32[0], crop_f32[2], CROP_WIDTH, width, &mut xs);
    axis_samples(crop_f32[1], crop_f32[3], CROP_HEIGHT, height, &mut ys);
    let count = (RATIO * RATIO) as f32;
    let texel = |x: usize, y: usize, c: usize| texel_at((y * width + x) * 3 + c);
    for i in 0..CROP_HEIGHT {
        for j in 0..CROP_WIDTH {
            let mut sums = [0.0f32; 3];
            for ys_sample in &ys[i * RATIO..(i + 1) * RATIO] {
                for xs_sample in &xs[j * RATIO..(j + 1) * RATIO] {
                    if !(ys_sample.valid && xs_sample.valid) {
                        continue;
                    }
                    let (ly, lx) = (ys_sample.frac, xs_sample.frac);
                    let (hy, hx) = (1.0 - ly, 1.0 - lx);
                    let (w1, w2, w3, w4) = (hy * hx, hy * lx, ly * hx, ly * lx);
                    let (y0, y1) = (ys_sample.low, ys_sample.high);
                    let (x0, x1) = (xs_sample.low, xs_sample.high);
                    for (c, sum) in sums.iter_mut().enumerate() {
                        *sum += w1 * texel(x0, y0, c)
                            + w2 * texel(x1, y0, c)
                            + w3 * texel(x0, y1, c)
                            + w4 * texel(x1, y1, c);
                    }
                }
            }
            for (c, sum) in sums.iter().enumerate() {
                out[c * plane + i * CROP_WIDTH + j] = sum / count;
            }
        }
    }
}
