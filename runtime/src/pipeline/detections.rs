//! Detections: the detector network's outputs turned into objects with boxes, and the
//! filters CosyPose applies before the pose loop (spec A.1).

use posed_engines::contract::DetectorLayout;
use posed_engines::{EngineError, Outputs, Session, Sidecar};
use posed_kernels::color::{to_normalized_planar, PackedImage, PixelLayout};

use super::obj_id_of_label;
use super::single_view::{ImageView, ObjectEstimate};
use crate::{Error, Result};

/// Which detections go on to the pose loop.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DetectionFilter {
    /// Keep detections scoring strictly above this (`detection_th`; BOP runner: 0).
    pub threshold: f64,
    /// Keep only the best-scoring detection of each object in an image.
    pub one_instance_per_class: bool,
    /// Keep only these objects (empty: all).
    pub obj_ids: Vec<u32>,
}

impl DetectionFilter {
    /// Filters one image's objects in place, keeping their order. Ties for
    /// one-instance-per-class go to the earlier detection. Allocates nothing.
    pub fn apply(&self, objects: &mut Vec<ObjectEstimate>) {
        objects.retain(|o| {
            o.score > self.threshold
                && (self.obj_ids.is_empty() || self.obj_ids.contains(&o.obj_id))
        });
        if self.one_instance_per_class {
            // "Beaten" is a strict order (score, then position), so comparing against
            // already-beaten objects too still leaves exactly the best of each object.
            for i in 0..objects.len() {
                let beaten = (0..objects.len()).any(|j| {
                    j != i
                        && objects[j].obj_id == objects[i].obj_id
                        && (objects[j].score > objects[i].score
                            || (objects[j].score == objects[i].score && j < i))
                });
                objects[i].valid = !beaten;
            }
            objects.retain(|o| o.valid);
        }
    }
}

/// A detector network with its input and output buffers.
pub struct Detector {
    session: Box<dyn Session>,
    outputs: Outputs,
    layout: DetectorLayout,
    input: Vec<f32>,
    max_hw: (usize, usize),
    first_category_id: i64,
    /// BOP object id of each category, from `first_category_id` on; `None` for a label
    /// that names no BOP object.
    obj_id_of_category: Vec<Option<u32>>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("layout", &self.layout)
            .field("max_hw", &self.max_hw)
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// Wraps a detector session; `sidecar` maps its category ids to labels.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the session is not a detector.
    pub fn new(session: Box<dyn Session>, sidecar: &Sidecar) -> Result<Self> {
        let contract = session.contract();
        let Some(layout) = contract.layout else {
            return Err(Error::Invalid {
                what: "the detector network".to_string(),
                reason: format!("expected a detector, found a {} network", contract.role),
            });
        };
        let first_category_id = sidecar.detector.as_ref().map_or(1, |d| d.first_category_id);
        let obj_id_of_category = sidecar.labels.iter().map(|l| obj_id_of_label(l)).collect();
        let options = session.options();
        let (h, w) = options.max_image_hw;
        let outputs = session.allocate_outputs();
        Ok(Self {
            session,
            outputs,
            layout,
            input: vec![0.0; 3 * h * w],
            max_hw: (h, w),
            first_category_id,
            obj_id_of_category,
        })
    }

    /// Runs the detector on one image and appends its detections (boxes in pixels, x1
    /// y1 x2 y2) to `out`. Returns how many detections had a category that names no BOP
    /// object (they are left out).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an image larger than the detector was prepared for;
    /// [`Error::Engine`] when the run fails or its outputs are malformed.
    pub fn detect(
        &mut self,
        image: &ImageView<'_>,
        out: &mut Vec<ObjectEstimate>,
    ) -> Result<usize> {
        let (h, w) = (image.height, image.width);
        if h > self.max_hw.0 || w > self.max_hw.1 || image.rgb.len() != h * w * 3 {
            return Err(Error::Invalid {
                what: format!("a {w} x {h} image for the detector"),
                reason: format!(
                    "the detector takes images up to {} x {} (engines.max_image) with 3 bytes \
                     per pixel",
                    self.max_hw.1, self.max_hw.0
                ),
            });
        }
        let plane = h * w;
        // The camera conversion's planar output is exactly the detector's [3, H, W] input.
        let packed = PackedImage {
            layout: PixelLayout::Rgb24,
            data: image.rgb,
            width: w,
            height: h,
            stride_bytes: 3 * w,
        };
        to_normalized_planar(&packed, &mut self.input[..3 * plane]).map_err(|source| {
            Error::Kernel {
                context: format!("the {w} x {h} detector input"),
                source,
            }
        })?;
        let batched = [1, 3, h, w];
        let shape: &[usize] = match self.layout {
            DetectorLayout::Batched => &batched,
            DetectorLayout::Torchvision => &batched[1..],
        };
        self.session
            .run(&self.input[..3 * plane], shape, &mut self.outputs)?;
        let output = |name: &str| {
            self.outputs.get(name).ok_or_else(|| EngineError::Output {
                tensor: name.to_string(),
                reason: "the detector wrote no such output".to_string(),
            })
        };
        let boxes = output("boxes")?.f32s().unwrap_or(&[]);
        let scores = output("scores")?.f32s().unwrap_or(&[]);
        let labels = output("labels")?.i64s().unwrap_or(&[]);
        let n = scores.len();
        if boxes.len() != 4 * n || labels.len() != n {
            return Err(EngineError::Output {
                tensor: "boxes".to_string(),
                reason: format!(
                    "expected 4 box values and one label per score, found {} scores, {} box \
                     values, {} labels",
                    n,
                    boxes.len(),
                    labels.len()
                ),
            }
            .into());
        }
        Ok(append_detections(
            self.first_category_id,
            &self.obj_id_of_category,
            (boxes, scores, labels),
            out,
        ))
    }
}

/// Appends the detections whose category names a BOP object (and whose box and score are
/// finite) to `out`; returns how many were left out.
fn append_detections(
    first_category_id: i64,
    obj_id_of_category: &[Option<u32>],
    (boxes, scores, labels): (&[f32], &[f32], &[i64]),
    out: &mut Vec<ObjectEstimate>,
) -> usize {
    let mut unknown = 0;
    for ((bbox, &score), &category) in boxes.chunks_exact(4).zip(scores).zip(labels) {
        // checked: both come from files (the network's output, the sidecar).
        let obj_id = category
            .checked_sub(first_category_id)
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|i| obj_id_of_category.get(i).copied().flatten());
        let bbox = [bbox[0], bbox[1], bbox[2], bbox[3]].map(f64::from);
        match obj_id {
            Some(obj_id) if bbox.iter().all(|v| v.is_finite()) && score.is_finite() => {
                out.push(ObjectEstimate::from_box(obj_id, f64::from(score), bbox));
            }
            _ => unknown += 1,
        }
    }
    unknown
}

#[cfg(test)]
mod tests {
    use posed_kernels::Pose;

    use super::*;

    fn object(obj_id: u32, score: f64) -> ObjectEstimate {
        ObjectEstimate::from_pose(obj_id, score, Pose::identity())
    }

    #[test]
    fn categories_far_from_the_first_are_unknown_not_a_panic() {
        let boxes = [
            1.0,
            2.0,
            30.0,
            40.0,
            1.0,
            2.0,
            30.0,
            40.0,
            1.0,
            2.0,
            3.0,
            f32::NAN,
        ];
        let labels = [i64::MAX, 1, 1];
        let mut out = Vec::new();
        // A sidecar's first_category_id of i64::MIN: category - first overflows.
        let unknown = append_detections(
            i64::MIN,
            &[Some(5)],
            (&boxes, &[0.9, 0.8, 0.7], &labels),
            &mut out,
        );
        assert_eq!((unknown, out.len()), (3, 0));
        let unknown =
            append_detections(1, &[Some(5)], (&boxes, &[0.9, 0.8, 0.7], &labels), &mut out);
        // Category 1 is object 5; the box with a NaN is left out.
        assert_eq!((unknown, out.len()), (2, 1));
        assert_eq!(out[0].obj_id, 5);
    }

    #[test]
    fn filter_keeps_what_cosypose_keeps() {
        let all = vec![
            object(1, 0.9),
            object(2, 0.5),
            object(1, 0.95),
            object(3, 0.7),
            object(2, 0.5),
            object(4, 0.7),
        ];
        let ids = |objects: &[ObjectEstimate]| {
            objects
                .iter()
                .map(|o| (o.obj_id, o.score))
                .collect::<Vec<_>>()
        };

        // Strictly above the threshold: the 0.7 detections go.
        let mut objects = all.clone();
        DetectionFilter {
            threshold: 0.7,
            ..Default::default()
        }
        .apply(&mut objects);
        assert_eq!(ids(&objects), [(1, 0.9), (1, 0.95)]);

        // One per class: the best, the earlier one on a tie, order kept.
        let mut objects = all.clone();
        DetectionFilter {
            one_instance_per_class: true,
            ..Default::default()
        }
        .apply(&mut objects);
        assert_eq!(ids(&objects), [(2, 0.5), (1, 0.95), (3, 0.7), (4, 0.7)]);
        assert!(objects.iter().all(|o| o.valid));

        let mut objects = all;
        DetectionFilter {
            obj_ids: vec![3, 4],
            ..Default::default()
        }
        .apply(&mut objects);
        assert_eq!(ids(&objects), [(3, 0.7), (4, 0.7)]);
    }
}
