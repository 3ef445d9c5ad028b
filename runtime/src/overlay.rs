//! Overlays of rendered objects on a camera image, as CosyPose draws its predictions
//! (`cosypose/visualization/plotter.py`, `Plotter.plot_overlay`): the image is washed
//! towards white where no object is rendered, and the render replaces it, lightly washed,
//! where one is. Optionally the outline of each object's visible mask is drawn on top.
//!
//! Also here: choosing the objects to draw (ground truth or a results file's estimates
//! for one image) and turning a rendered depth into the values of a BOP depth PNG.

use std::path::Path;

use posed_kernels::render::RenderTarget;
use posed_kernels::Pose;

use crate::bop::dataset::{BopDataset, ImageAnnotations};
use crate::bop::images::{DepthImage, RgbImage};
use crate::bop::results::EstimateRow;
use crate::{Error, Result};

/// The colour [`draw_contours`] uses by default (the `posed render --contours` outline).
pub const CONTOUR_RGB: [u8; 3] = [0, 255, 0];

/// The largest value a 16-bit depth PNG holds; deeper pixels saturate to it.
pub const MAX_DEPTH_PNG_VALUE: u16 = u16::MAX;

/// An image and a render of different sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the image is {image_width}x{image_height} pixels but the render is \
     {render_width}x{render_height}: expected the same size"
)]
pub struct SizeMismatch {
    /// Image width, pixels.
    pub image_width: usize,
    /// Image height, pixels.
    pub image_height: usize,
    /// Render width, pixels.
    pub render_width: usize,
    /// Render height, pixels.
    pub render_height: usize,
}

fn check_size(image: &RgbImage, render: &RenderTarget) -> Result<(), SizeMismatch> {
    let (image_width, image_height) = (image.width as usize, image.height as usize);
    if image_width == render.width()
        && image_height == render.height()
        && image.pixels.len() == image_width * image_height
    {
        Ok(())
    } else {
        Err(SizeMismatch {
            image_width,
            image_height,
            render_width: render.width(),
            render_height: render.height(),
        })
    }
}

/// One overlay pixel, per channel: `0.6 * image + 0.4 * 255` outside the rendered objects,
/// `0.8 * render + 0.2 * 255` inside, rounded to the nearest integer.
///
/// Computed exactly in integers: `(6 x + 1020) / 10` and `(8 x + 510) / 10`, which never
/// fall half-way between two integers, so there are no ties to break. CosyPose's numpy
/// assignment into a `uint8` array truncates instead, so its pixels can be 1 lower.
#[inline]
pub fn blend_pixel(image_rgb: [u8; 3], render_rgb: [u8; 3], inside: bool) -> [u8; 3] {
    // At most (6 * 255 + 1020 + 5) / 10 = 255 and (8 * 255 + 510 + 5) / 10 = 255, so
    // the narrowing casts below never truncate.
    if inside {
        render_rgb.map(|x| ((8 * u32::from(x) + 510 + 5) / 10) as u8)
    } else {
        image_rgb.map(|x| ((6 * u32::from(x) + 1020 + 5) / 10) as u8)
    }
}

/// The CosyPose overlay of `render` on `image` ([`blend_pixel`] at every pixel). A pixel
/// is inside when the render's instance mask is nonzero there; CosyPose tests the
/// rendered colour for black instead, which differs only on objects rendered pure black.
///
/// # Errors
/// [`SizeMismatch`] when the image and the render differ in size.
pub fn blend_overlay(image: &RgbImage, render: &RenderTarget) -> Result<RgbImage, SizeMismatch> {
    check_size(image, render)?;
    let pixels = image
        .pixels
        .iter()
        .zip(render.rgb())
        .zip(render.mask())
        .map(|((&image_rgb, &render_rgb), &instance)| {
            blend_pixel(image_rgb, render_rgb, instance != 0)
        })
        .collect();
    Ok(RgbImage {
        width: image.width,
        height: image.height,
        pixels,
    })
}

/// The boundary pixels of every object in an instance mask (row-major, `width` pixels
/// per row, 0 = background): an object pixel (value != 0) whose left, right, upper or
/// lower neighbour has a different value, background or another object. Neighbours
/// outside the image do not count, so the image border is no boundary. The outline lies
/// inside each object, one pixel wide; where two objects touch, both sides are marked.
pub fn contour_pixels(mask: &[u8], width: usize) -> Vec<bool> {
    let len = mask.len();
    (0..len)
        .map(|i| {
            let value = mask[i];
            if value == 0 || width == 0 {
                return false;
            }
            let column = i % width;
            let differs = |j: usize| mask[j] != value;
            (column > 0 && differs(i - 1))
                || (column + 1 < width && i + 1 < len && differs(i + 1))
                || (i >= width && differs(i - width))
                || (i + width < len && differs(i + width))
        })
        .collect()
}

/// Paints the boundary pixels of the render's objects ([`contour_pixels`] of its mask)
/// in `rgb` on `overlay`.
///
/// # Errors
/// [`SizeMismatch`] when the overlay and the render differ in size.
pub fn draw_contours(
    overlay: &mut RgbImage,
    render: &RenderTarget,
    rgb: [u8; 3],
) -> Result<(), SizeMismatch> {
    check_size(overlay, render)?;
    for (pixel, on_contour) in overlay
        .pixels
        .iter_mut()
        .zip(contour_pixels(render.mask(), render.width()))
    {
        if on_contour {
            *pixel = rgb;
        }
    }
    Ok(())
}

/// The rendered depth ready for [`crate::bop::images::write_depth_png_u16`] at
/// `depth_scale_mm`: depths too large for 16 bits (`65535 * depth_scale_mm` mm and
/// beyond) are clamped so that they are written as 65535. Returns the depth and how many
/// pixels were clamped. 0 (no object) stays 0.
pub fn depth_for_png(render: &RenderTarget, depth_scale_mm: f64) -> (DepthImage, usize) {
    let max_m = f64::from(MAX_DEPTH_PNG_VALUE) * depth_scale_mm * 0.001;
    // f32 holds max_m to a relative 6e-8, so the writer's rounding of it still gives 65535.
    let max_m_f32 = max_m as f32;
    let mut saturated = 0;
    let depth_m = render
        .depth_m()
        .iter()
        .map(|&d| {
            if f64::from(d) > max_m {
                saturated += 1;
                max_m_f32
            } else {
                d
            }
        })
        .collect();
    (
        DepthImage {
            width: render.width() as u32,
            height: render.height() as u32,
            depth_m,
        },
        saturated,
    )
}

/// The annotations of image `im_id` of scene `scene_id`.
///
/// # Errors
/// [`Error::Dataset`] naming the split folder and listing the scene ids (for an unknown
/// scene) or the image ids of the scene (for an unknown image).
pub fn find_image<'d>(
    dataset: &'d BopDataset,
    split: &str,
    scene_id: u32,
    im_id: u32,
) -> Result<&'d ImageAnnotations> {
    let split_dir = dataset.root.join(split);
    let list = |ids: &mut dyn Iterator<Item = &u32>| {
        ids.map(u32::to_string).collect::<Vec<_>>().join(", ")
    };
    let scene = dataset
        .scenes
        .get(&scene_id)
        .ok_or_else(|| Error::Dataset {
            path: split_dir.clone(),
            detail: format!(
                "no scene {scene_id}; the scenes are {}",
                list(&mut dataset.scenes.keys())
            ),
        })?;
    scene.images.get(&im_id).ok_or_else(|| Error::Dataset {
        path: scene.dir.join("scene_camera.json"),
        detail: format!(
            "scene {scene_id} has no image {im_id}; its images are {}",
            list(&mut scene.images.keys())
        ),
    })
}

/// The objects of the ground truth of an image, `(obj_id, camera_from_object)` in
/// `scene_gt.json` order (so mask value `1 + gt_idx`).
pub fn ground_truth_objects(image: &ImageAnnotations) -> Vec<(u32, Pose)> {
    image
        .gt
        .iter()
        .map(|gt| (gt.obj_id, gt.camera_from_object))
        .collect()
}

/// The estimates of image `im_id` of scene `scene_id` in a results file, in file order,
/// keeping those with `score >= min_score` when a minimum is given.
///
/// # Errors
/// [`Error::Csv`] naming `results_path` and the line of an estimate whose object the
/// dataset has no model for; [`Error::Dataset`] naming `results_path` when no estimate of
/// the image is left (none at all, or none at the minimum score).
pub fn estimated_objects(
    dataset: &BopDataset,
    rows: &[EstimateRow],
    results_path: &Path,
    scene_id: u32,
    im_id: u32,
    min_score: Option<f64>,
) -> Result<Vec<(u32, Pose)>> {
    let of_image: Vec<_> = rows
        .iter()
        .filter(|row| row.estimate.scene_id == scene_id && row.estimate.im_id == im_id)
        .collect();
    let mut objects = Vec::with_capacity(of_image.len());
    for row in &of_image {
        let estimate = &row.estimate;
        if dataset.models.get(estimate.obj_id).is_none() {
            return Err(Error::Csv {
                path: results_path.to_path_buf(),
                line: row.line,
                detail: format!(
                    "obj_id {} has no model in {}",
                    estimate.obj_id,
                    dataset.root.join("models").display()
                ),
            });
        }
        if min_score.is_none_or(|min| estimate.score >= min) {
            objects.push((estimate.obj_id, estimate.camera_from_object));
        }
    }
    if objects.is_empty() {
        let detail = match min_score {
            Some(min) if !of_image.is_empty() => format!(
                "none of the {} estimates of scene {scene_id} image {im_id} has a score >= {min}",
                of_image.len()
            ),
            _ => format!("no estimates for scene {scene_id} image {im_id}"),
        };
        return Err(Error::Dataset {
            path: results_path.to_path_buf(),
            detail,
        });
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use posed_kernels::render::{Camera, CpuRenderer, Instance, Mesh, RenderItem, Shading};
    use posed_kernels::Intrinsics;

    /// The formula in floating point, rounded: the reference the integer version must match.
    fn reference(x: u8, weight: f64, offset: f64) -> u8 {
        (f64::from(x) * weight + offset).round() as u8
    }

    #[test]
    fn blend_follows_cosypose_weights_on_hand_made_pixels() {
        // Outside: 0.6 * image + 102.
        assert_eq!(blend_pixel([0, 0, 0], [9, 9, 9], false), [102, 102, 102]);
        assert_eq!(blend_pixel([255, 255, 255], [0, 0, 0], false), [255; 3]);
        // 0.6 * 10 + 102 = 108; 0.6 * 1 + 102 = 102.6 -> 103; 0.6 * 200 + 102 = 222.
        assert_eq!(blend_pixel([10, 1, 200], [0, 0, 0], false), [108, 103, 222]);
        // Inside: 0.8 * render + 51; the image does not show through.
        assert_eq!(blend_pixel([1, 2, 3], [0, 0, 0], true), [51, 51, 51]);
        assert_eq!(blend_pixel([1, 2, 3], [255, 255, 255], true), [255; 3]);
        // 0.8 * 100 + 51 = 131; 0.8 * 1 + 51 = 51.8 -> 52; 0.8 * 7 + 51 = 56.6 -> 57.
        assert_eq!(blend_pixel([0, 0, 0], [100, 1, 7], true), [131, 52, 57]);
        for x in 0..=255u8 {
            assert_eq!(
                blend_pixel([x; 3], [0; 3], false),
                [reference(x, 0.6, 102.0); 3]
            );
            assert_eq!(
                blend_pixel([0; 3], [x; 3], true),
                [reference(x, 0.8, 51.0); 3]
            );
        }
    }

    #[test]
    fn contours_mark_object_pixels_next_to_other_values() {
        // 5 x 4: object 1 is a 3x3 block at the top-left corner, object 2 a column
        // touching it, background elsewhere.
        #[rustfmt::skip]
        let mask = [
            1, 1, 1, 2, 0,
            1, 1, 1, 2, 0,
            1, 1, 1, 2, 0,
            0, 0, 0, 0, 0,
        ];
        #[rustfmt::skip]
        let expected = [
            false, false, true,  true,  false,
            false, false, true,  true,  false,
            true,  true,  true,  true,  false,
            false, false, false, false, false,
        ];
        assert_eq!(contour_pixels(&mask, 5), expected);
        // A mask filling the image has no boundary: the border does not count.
        assert!(contour_pixels(&[3; 12], 4).iter().all(|&c| !c));
        // A single pixel is its own contour; degenerate widths do not panic.
        assert!(contour_pixels(&[0, 0, 0, 0, 7, 0, 0, 0, 0], 3)[4]);
        assert!(contour_pixels(&[1, 2], 0).iter().all(|&c| !c));
        assert_eq!(contour_pixels(&[1, 2, 2], 2), [true, true, true]);
    }

    /// A render of one red square (two triangles) 1 m in front of a 16 x 12 camera.
    fn square_render() -> RenderTarget {
        let half = 0.004_f32;
        let mesh = Mesh::new(
            vec![
                [-half, -half, 0.0],
                [half, -half, 0.0],
                [half, half, 0.0],
                [-half, half, 0.0],
            ],
            vec![[0, 1, 2], [0, 2, 3]],
            None,
            Some(&[[200, 10, 10]; 4]),
        )
        .expect("mesh");
        let mut renderer = CpuRenderer::new(vec![mesh], 1);
        let mut pose = Pose::identity();
        pose.translation_m.z = 1.0;
        let instances = [Instance {
            mesh: 0,
            camera_from_object: pose,
        }];
        let camera = Camera {
            intrinsics: Intrinsics::from_row_major(&[
                500.0, 0.0, 7.5, 0.0, 500.0, 5.5, 0.0, 0.0, 1.0,
            ]),
            width: 16,
            height: 12,
        };
        let mut targets = [RenderTarget::new(16, 12)];
        renderer
            .render(
                &[RenderItem {
                    camera,
                    instances: &instances,
                }],
                &mut targets,
                &Shading::Albedo,
            )
            .expect("render");
        let [target] = targets;
        target
    }

    #[test]
    fn overlay_blends_every_pixel_and_contours_outline_the_mask() {
        let render = square_render();
        let inside = render.mask().iter().filter(|&&m| m != 0).count();
        assert!(inside > 4 && inside < 16 * 12, "{inside} pixels rendered");
        let image = RgbImage {
            width: 16,
            height: 12,
            pixels: (0..16 * 12).map(|i| [i as u8, 50, 255 - i as u8]).collect(),
        };
        let mut overlay = blend_overlay(&image, &render).expect("same size");
        for (i, pixel) in overlay.pixels.iter().enumerate() {
            let inside = render.mask()[i] != 0;
            let expected = if inside {
                render.rgb()[i].map(|x| reference(x, 0.8, 51.0))
            } else {
                image.pixels[i].map(|x| reference(x, 0.6, 102.0))
            };
            assert_eq!(*pixel, expected, "pixel {i}");
        }
        let before = overlay.clone();
        draw_contours(&mut overlay, &render, CONTOUR_RGB).expect("same size");
        let contour = contour_pixels(render.mask(), 16);
        assert!(contour.iter().any(|&c| c));
        assert!(contour
            .iter()
            .zip(render.mask())
            .all(|(&c, &m)| !c || m != 0));
        for (i, pixel) in overlay.pixels.iter().enumerate() {
            let expected = if contour[i] {
                CONTOUR_RGB
            } else {
                before.pixels[i]
            };
            assert_eq!(*pixel, expected, "pixel {i}");
        }
        let small = RgbImage {
            width: 8,
            height: 12,
            pixels: vec![[0; 3]; 96],
        };
        let err = blend_overlay(&small, &render).expect_err("sizes differ");
        assert_eq!(
            err.to_string(),
            "the image is 8x12 pixels but the render is 16x12: expected the same size"
        );
        assert!(draw_contours(&mut small.clone(), &render, CONTOUR_RGB).is_err());
    }

    #[test]
    fn depth_for_png_saturates_past_16_bits() {
        let render = square_render();
        // 1 m at 0.1 mm per unit is 10000: fits.
        let (depth, saturated) = depth_for_png(&render, 0.1);
        assert_eq!(saturated, 0);
        assert_eq!(depth.depth_m, render.depth_m());
        // At 0.01 mm per unit 1 m would be 100000: clamped to 65535 units.
        let (depth, saturated) = depth_for_png(&render, 0.01);
        let inside = render.mask().iter().filter(|&&m| m != 0).count();
        assert_eq!(saturated, inside);
        for (&d, &m) in depth.depth_m.iter().zip(render.mask()) {
            if m == 0 {
                assert_eq!(d, 0.0);
            } else {
                assert_eq!((f64::from(d) * 1000.0 / 0.01).round(), 65535.0);
            }
        }
    }
}
