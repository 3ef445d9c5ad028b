//! Image sequences: a BOP split or scene folder, a folder of images, or a glob, played at
//! a configured rate or as fast as the pipeline takes them, looping for demos.
//!
//! Every image is decoded once, when the source opens, and kept in memory (up to
//! [`MAX_PRELOAD_BYTES`]): playing a frame is then one copy into the daemon's [`Frame`],
//! with no decoding and no allocation, so that a sequence measures the pipeline and not
//! the PNG decoder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use posed_kernels::cosypose::BoxXyxy;
use posed_kernels::Intrinsics;

use super::{monotonic_ns, wall_ns, Captured, Frame, FrameSource, SourceInfo};
use crate::bop::images::read_rgb;
use crate::bop::scene::{read_scene_camera, read_scene_gt, read_scene_gt_info};
use crate::config::SourceConfig;
use crate::{Error, Result};

/// Decoded images a sequence may hold in memory, bytes (1 GiB: about 1,100 VGA images).
pub const MAX_PRELOAD_BYTES: usize = 1 << 30;

/// One decoded image of the sequence.
#[derive(Debug, Clone)]
struct SequenceImage {
    rgb: Vec<u8>,
    width: usize,
    height: usize,
    intrinsics: Intrinsics,
    bop_image: Option<(u32, u32)>,
}

/// Images from disk, as a [`FrameSource`].
#[derive(Debug)]
pub struct SequenceSource {
    info: SourceInfo,
    images: Vec<SequenceImage>,
    next: usize,
    period: Option<Duration>,
    looping: bool,
    next_due: Option<Instant>,
    /// The CUDA device frames are mapped into (see [`SequenceSource::map_frames_into`]).
    #[cfg(feature = "cuda")]
    mapped_into: Option<posed_kernels::cuda::CudaDevice>,
}

/// An image file to load, with what is known about it.
struct Entry {
    path: PathBuf,
    intrinsics: Option<Intrinsics>,
    bop_image: Option<(u32, u32)>,
}

impl SequenceSource {
    /// Lists and decodes the sequence `config` names (`path` or `glob`).
    ///
    /// # Errors
    /// A folder or glob with no images, an image that does not decode, images without
    /// intrinsics (a plain folder or glob needs `source.intrinsics`), a sequence larger
    /// than [`MAX_PRELOAD_BYTES`] decoded.
    pub fn open(config: &SourceConfig) -> Result<Self> {
        let given_k = config.intrinsics.as_ref().map(Intrinsics::from_row_major);
        let (name, entries) = match (&config.path, &config.glob) {
            (Some(path), _) => (path.display().to_string(), list_folder(path)?),
            (None, Some(pattern)) => (pattern.clone(), list_glob(pattern)?),
            (None, None) => {
                return Err(Error::Invalid {
                    what: "the image sequence".to_owned(),
                    reason: "source.path or source.glob is needed".to_owned(),
                })
            }
        };
        let mut images = Vec::with_capacity(entries.len());
        let mut total_bytes = 0usize;
        for entry in entries {
            let Some(intrinsics) = entry.intrinsics.or(given_k) else {
                return Err(Error::Invalid {
                    what: format!("image {}", entry.path.display()),
                    reason: "no intrinsics: give source.intrinsics (K, 9 numbers, row-major) \
                             for images outside a BOP scene"
                        .to_owned(),
                });
            };
            let rgb = read_rgb(&entry.path)?;
            // Frames are allocated once for the sequence's size: one size for all, as a
            // camera's.
            if let Some(first) = images.first() {
                let first: &SequenceImage = first;
                if (rgb.width as usize, rgb.height as usize) != (first.width, first.height) {
                    return Err(Error::Invalid {
                        what: format!("image {}", entry.path.display()),
                        reason: format!(
                            "it is {} x {}, the sequence's first image {} x {}: every image \
                             of a sequence must have the same size",
                            rgb.width, rgb.height, first.width, first.height
                        ),
                    });
                }
            }
            total_bytes += rgb.pixels.len() * 3;
            if total_bytes > MAX_PRELOAD_BYTES {
                return Err(Error::Invalid {
                    what: format!("the image sequence {name}"),
                    reason: format!(
                        "its decoded images exceed {} MiB, the most posed preloads; \
                         play a shorter sequence",
                        MAX_PRELOAD_BYTES >> 20
                    ),
                });
            }
            images.push(SequenceImage {
                width: rgb.width as usize,
                height: rgb.height as usize,
                rgb: rgb.pixels.into_flattened(),
                intrinsics,
                bop_image: entry.bop_image,
            });
        }
        let first = images.first().ok_or_else(|| Error::Invalid {
            what: format!("the image sequence {name}"),
            reason: "no PNG or JPEG images found".to_owned(),
        })?;
        let info = SourceInfo {
            name,
            width: first.width,
            height: first.height,
            intrinsics: first.intrinsics,
            format: "PNG/JPEG".to_owned(),
        };
        let period = (config.rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / config.rate_hz));
        Ok(Self {
            info,
            images,
            next: 0,
            period,
            looping: config.looping,
            next_due: None,
            #[cfg(feature = "cuda")]
            mapped_into: None,
        })
    }

    /// Number of images in one pass.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when the sequence has no images (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Waits until the next frame is due, keeping a steady rate; a pipeline that fell
    /// behind by more than a period restarts the clock instead of bursting.
    fn pace(&mut self) {
        let Some(period) = self.period else {
            return;
        };
        let now = Instant::now();
        let due = match self.next_due {
            Some(due) if due + period > now => due,
            _ => now,
        };
        if due > now {
            std::thread::sleep(due - now);
        }
        self.next_due = Some(due + period);
    }
}

#[cfg(feature = "cuda")]
impl SequenceSource {
    /// Frames from [`FrameSource::allocate_frame`] in host memory mapped into `device`,
    /// as a camera's are when the loop runs there: the crops read them in place on an
    /// integrated GPU.
    pub fn map_frames_into(mut self, device: &posed_kernels::cuda::CudaDevice) -> Self {
        self.mapped_into = Some(device.clone());
        self
    }
}

impl FrameSource for SequenceSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn allocate_frame(&self) -> Result<Frame> {
        #[cfg(feature = "cuda")]
        let cuda = self.mapped_into.as_ref();
        #[cfg(not(feature = "cuda"))]
        let cuda = None;
        Ok(super::frame_for(cuda, &self.info))
    }

    fn capture(&mut self, frame: &mut Frame) -> Result<Captured> {
        if self.next == self.images.len() {
            if !self.looping {
                return Ok(Captured::End);
            }
            self.next = 0;
        }
        self.pace();
        let started_ns = monotonic_ns();
        let image = &self.images[self.next];
        let capacity = frame.rgb.capacity();
        let Some(dst) = frame.rgb.set_len(image.rgb.len()) else {
            return Err(Error::Invalid {
                what: format!("image {} of {}", self.next, self.info.name),
                reason: format!(
                    "{} x {} does not fit the frame buffers ({capacity} bytes)",
                    image.width, image.height,
                ),
            });
        };
        dst.copy_from_slice(&image.rgb);
        frame.width = image.width;
        frame.height = image.height;
        frame.intrinsics = image.intrinsics;
        frame.bop_image = image.bop_image;
        frame.t_capture_ns = started_ns;
        frame.t_capture_wall_ns = wall_ns();
        frame.capture_latency_ns = monotonic_ns().saturating_sub(started_ns);
        self.next += 1;
        Ok(Captured::Frame)
    }

    fn paced(&self) -> bool {
        self.period.is_some()
    }

    fn reopen(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Object id and box of each annotated instance, by (scene id, image id).
pub type BoxesByImage = BTreeMap<(u32, u32), Vec<(u32, BoxXyxy)>>;

/// The annotated boxes of a BOP split or scene folder, by (scene id, image id): each
/// visible instance's object id and the box of its visible part (x1, y1, x2, y2, pixels,
/// from `scene_gt_info.json`'s `bbox_visib`), in `scene_gt.json` order. They stand in for a
/// detector's output in demos and tests (`pipeline.objects = "dataset-boxes"`).
///
/// # Errors
/// A folder that is not a BOP split or scene, or whose scenes lack `scene_gt.json` /
/// `scene_gt_info.json` or disagree on the instances of an image.
pub fn bop_boxes(path: &Path) -> Result<BoxesByImage> {
    let scenes = bop_scene_folders(path)?;
    if scenes.is_empty() {
        return Err(Error::Dataset {
            path: path.to_owned(),
            detail: "expected a BOP split folder (scene folders inside) or a scene folder \
                     (scene_camera.json, scene_gt.json, scene_gt_info.json, rgb/)"
                .to_owned(),
        });
    }
    let mut boxes = BTreeMap::new();
    for (scene_id, dir) in scenes {
        let gt = read_scene_gt(&dir.join("scene_gt.json"))?;
        let info_path = dir.join("scene_gt_info.json");
        let info = read_scene_gt_info(&info_path)?;
        for (im_id, instances) in gt {
            let infos = info.get(&im_id).ok_or_else(|| Error::Dataset {
                path: info_path.clone(),
                detail: format!("no entry for image {im_id}, which scene_gt.json annotates"),
            })?;
            if infos.len() != instances.len() {
                return Err(Error::Dataset {
                    path: info_path.clone(),
                    detail: format!(
                        "image {im_id}: {} entries, scene_gt.json has {} instances",
                        infos.len(),
                        instances.len()
                    ),
                });
            }
            let visible = instances
                .iter()
                .zip(infos)
                .filter(|(_, info)| info.bbox_visib[2] > 0.0 && info.bbox_visib[3] > 0.0)
                .map(|(instance, info)| {
                    let [x, y, w, h] = info.bbox_visib;
                    (instance.obj_id, [x, y, x + w, y + h])
                })
                .collect();
            boxes.insert((scene_id, im_id), visible);
        }
    }
    Ok(boxes)
}

/// The BOP scene folders of `path`: itself when it is one, else its numbered
/// sub-folders that are; sorted by scene id.
fn bop_scene_folders(path: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let scene_id_of = |dir: &Path| -> Option<u32> {
        dir.join("scene_camera.json").is_file().then_some(())?;
        dir.file_name()?.to_str()?.parse::<u32>().ok()
    };
    if let Some(scene_id) = scene_id_of(path) {
        return Ok(vec![(scene_id, path.to_owned())]);
    }
    let mut scenes = Vec::new();
    for entry in read_dir(path)? {
        if let Some(scene_id) = scene_id_of(&entry) {
            scenes.push((scene_id, entry));
        }
    }
    scenes.sort();
    Ok(scenes)
}

/// The images of a BOP split / scene folder (with their K), or of a plain image folder.
fn list_folder(path: &Path) -> Result<Vec<Entry>> {
    let scenes = bop_scene_folders(path)?;
    if scenes.is_empty() {
        let mut files: Vec<PathBuf> = read_dir(path)?
            .into_iter()
            .filter(|p| is_image(p))
            .collect();
        files.sort();
        return Ok(files
            .into_iter()
            .map(|path| Entry {
                path,
                intrinsics: None,
                bop_image: None,
            })
            .collect());
    }
    let mut entries = Vec::new();
    for (scene_id, dir) in scenes {
        let cameras = read_scene_camera(&dir.join("scene_camera.json"))?;
        for (im_id, camera) in cameras {
            let png = dir.join("rgb").join(format!("{im_id:06}.png"));
            let jpg = png.with_extension("jpg");
            let path = if png.is_file() || !jpg.is_file() {
                png
            } else {
                jpg
            };
            entries.push(Entry {
                path,
                intrinsics: Some(camera.intrinsics),
                bop_image: Some((scene_id, im_id)),
            });
        }
    }
    Ok(entries)
}

/// The PNG / JPEG files matching a glob, sorted.
fn list_glob(pattern: &str) -> Result<Vec<Entry>> {
    let invalid = |reason: String| Error::Invalid {
        what: format!("source.glob \"{pattern}\""),
        reason,
    };
    let paths = glob::glob(pattern).map_err(|e| invalid(e.to_string()))?;
    let mut files = Vec::new();
    for path in paths {
        let path = path.map_err(|e| invalid(e.to_string()))?;
        if is_image(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files
        .into_iter()
        .map(|path| Entry {
            path,
            intrinsics: None,
            bop_image: None,
        })
        .collect())
}

fn read_dir(path: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::read_dir(path)
        .map_err(io)?
        .map(|entry| entry.map(|e| e.path()).map_err(io))
        .collect()
}

fn is_image(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceKind;

    fn ycbv_test() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/ycbv-mini/test")
    }

    fn sequence(path: Option<PathBuf>, glob: Option<String>) -> SourceConfig {
        SourceConfig {
            kind: SourceKind::Sequence,
            path,
            glob,
            rate_hz: 0.0,
            looping: false,
            ..SourceConfig::default()
        }
    }

    fn play(source: &mut SequenceSource) -> Vec<Option<(u32, u32)>> {
        let mut frame = Frame::with_capacity(640, 480);
        let mut seen = Vec::new();
        while source.capture(&mut frame).expect("capture") == Captured::Frame {
            assert_eq!(frame.rgb.len(), frame.width * frame.height * 3);
            seen.push(frame.bop_image);
            assert!(seen.len() < 100, "a non-looping sequence must end");
        }
        seen
    }

    #[test]
    fn a_bop_split_plays_every_scene_in_order_with_its_camera() {
        let mut source = SequenceSource::open(&sequence(Some(ycbv_test()), None)).expect("open");
        assert_eq!(source.len(), 16);
        assert_eq!((source.info().width, source.info().height), (640, 480));
        let seen = play(&mut source);
        let expected: Vec<_> = [1u32, 2]
            .iter()
            .flat_map(|s| (0..8).map(move |i| Some((*s, i))))
            .collect();
        assert_eq!(seen, expected);
        // The camera of the bundled scenes (BOP's YCB-V test K).
        let k = source.info().intrinsics.k;
        assert!((k[(0, 0)] - 1066.778).abs() < 1e-3, "{k}");
    }

    #[test]
    fn a_scene_folder_and_a_glob_play_too() {
        let scene = ycbv_test().join("000002");
        let mut source = SequenceSource::open(&sequence(Some(scene.clone()), None)).expect("open");
        assert_eq!(play(&mut source).len(), 8);

        let mut config = sequence(
            None,
            Some(format!("{}/rgb/00000[0-2].png", scene.display())),
        );
        config.intrinsics = Some([500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]);
        let mut source = SequenceSource::open(&config).expect("open glob");
        assert_eq!(play(&mut source), vec![None, None, None]);
        assert_eq!(source.info().intrinsics.k[(0, 0)], 500.0);
    }

    #[test]
    fn a_looping_sequence_starts_again() {
        let mut config = sequence(Some(ycbv_test().join("000001")), None);
        config.looping = true;
        let mut source = SequenceSource::open(&config).expect("open");
        let mut frame = Frame::with_capacity(640, 480);
        let mut images = Vec::new();
        for _ in 0..10 {
            assert_eq!(
                source.capture(&mut frame).expect("capture"),
                Captured::Frame
            );
            images.push(frame.bop_image.map(|(_, im)| im));
        }
        let expected: Vec<_> = (0..8).chain(0..2).map(Some).collect();
        assert_eq!(images, expected);
    }

    #[test]
    fn bad_sequences_are_clear_errors() {
        let empty = tempfile::tempdir().expect("tempdir");
        let message = SequenceSource::open(&sequence(Some(empty.path().to_owned()), None))
            .expect_err("empty folder")
            .to_string();
        assert!(message.contains("no PNG or JPEG images"), "{message}");

        let message = SequenceSource::open(&sequence(
            None,
            Some(format!("{}/000001/rgb/*.png", ycbv_test().display())),
        ))
        .expect_err("no K")
        .to_string();
        assert!(message.contains("source.intrinsics"), "{message}");

        let missing = empty.path().join("missing");
        let message = SequenceSource::open(&sequence(Some(missing.clone()), None))
            .expect_err("missing folder")
            .to_string();
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );

        let broken = empty.path().join("broken.png");
        std::fs::write(&broken, b"not a png").expect("write");
        let mut config = sequence(Some(empty.path().to_owned()), None);
        config.intrinsics = Some([500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]);
        let message = SequenceSource::open(&config)
            .expect_err("broken png")
            .to_string();
        assert!(message.contains("broken.png"), "{message}");

        // Images of two sizes: frames are sized once, so the second is refused by name.
        let mixed = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, width: u32, height: u32| {
            let image = crate::bop::images::RgbImage {
                width,
                height,
                pixels: vec![[0, 0, 0]; (width * height) as usize],
            };
            crate::bop::images::write_rgb_png(&mixed.path().join(name), &image).expect("write");
        };
        write("a.png", 8, 6);
        write("b.png", 6, 8);
        let mut config = sequence(Some(mixed.path().to_owned()), None);
        config.intrinsics = Some([500.0, 0.0, 4.0, 0.0, 500.0, 3.0, 0.0, 0.0, 1.0]);
        let message = SequenceSource::open(&config)
            .expect_err("mixed sizes")
            .to_string();
        assert!(
            message.contains("b.png") && message.contains("6 x 8") && message.contains("8 x 6"),
            "{message}"
        );

        // A frame buffer too small for the images is an error, not a reallocation.
        let mut source = SequenceSource::open(&sequence(Some(ycbv_test()), None)).expect("open");
        let mut small = Frame::with_capacity(320, 240);
        let message = source.capture(&mut small).expect_err("small").to_string();
        assert!(message.contains("does not fit"), "{message}");
    }

    #[test]
    fn bop_boxes_are_the_visible_boxes_of_scene_gt_info() {
        let boxes = bop_boxes(&ycbv_test()).expect("boxes");
        assert_eq!(boxes.len(), 16);
        let first = &boxes[&(1, 0)];
        assert!(!first.is_empty());
        for (obj_id, [x1, y1, x2, y2]) in first {
            assert!((1..=21).contains(obj_id));
            assert!(x1 < x2 && y1 < y2, "{x1} {y1} {x2} {y2}");
        }
        let message = bop_boxes(&ycbv_test().join("000001/rgb"))
            .expect_err("not a BOP folder")
            .to_string();
        assert!(message.contains("BOP split folder"), "{message}");
    }
}
