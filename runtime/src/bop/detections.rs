//! BOP 2D-detection files: a JSON list of
//! `{"scene_id", "image_id", "category_id", "score", "bbox": [x, y, w, h], "time"}`, the
//! format of the BOP challenge's default detections. `category_id` is the BOP object id,
//! the box is in pixels and `time` (seconds) is optional. Other keys (`segmentation`) are
//! ignored.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::json::{invalid, parse_json};
use crate::{Error, Result};

/// One 2D detection (BOP 2D-detection format, as the BOP challenge's default detections).
#[derive(Debug, Clone, PartialEq)]
pub struct Detection2d {
    /// Scene id.
    pub scene_id: u32,
    /// Image id.
    pub im_id: u32,
    /// BOP object id (`category_id` in the file).
    pub obj_id: u32,
    /// Confidence; higher is better.
    pub score: f64,
    /// `[x, y, w, h]` in pixels, `(x, y)` the top-left corner; `w, h >= 0`.
    pub bbox_xywh: [f64; 4],
    /// Time spent detecting on the image, seconds; -1 when unknown.
    pub time_s: f64,
}

impl Detection2d {
    /// The box as `[x1, y1, x2, y2]` = `(x, y, x + w, y + h)`, pixels.
    pub fn bbox_xyxy(&self) -> [f64; 4] {
        let [x, y, w, h] = self.bbox_xywh;
        [x, y, x + w, y + h]
    }
}

/// One entry as it is in the file.
#[derive(Debug, Deserialize, Serialize)]
struct Entry {
    scene_id: u32,
    image_id: u32,
    category_id: u32,
    score: f64,
    bbox: [f64; 4],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<f64>,
}

/// Reads a BOP 2D-detection JSON file. Every malformed entry is an error naming its index
/// and field; no entry is skipped.
pub fn read_detections(path: &Path) -> Result<Vec<Detection2d>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_detections(&text, path)
}

/// Parses BOP 2D-detection JSON text; `path` only names the source in errors.
pub fn parse_detections(text: &str, path: &Path) -> Result<Vec<Detection2d>> {
    let entries: Vec<Entry> = parse_json(text.as_bytes(), path)?;
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| convert(path, index, entry))
        .collect()
}

fn convert(path: &Path, index: usize, entry: Entry) -> Result<Detection2d> {
    let context = |field: &str| {
        format!(
            "at `[{index}].{field}` (scene_id {}, image_id {}, category_id {})",
            entry.scene_id, entry.image_id, entry.category_id
        )
    };
    if !entry.score.is_finite() {
        return Err(invalid(
            path,
            format!(
                "{}: expected a finite number, found {}",
                context("score"),
                entry.score
            ),
        ));
    }
    let [x, y, w, h] = entry.bbox;
    if !(x.is_finite() && y.is_finite() && w.is_finite() && h.is_finite() && w >= 0.0 && h >= 0.0) {
        return Err(invalid(
            path,
            format!(
                "{}: expected [x, y, w, h] with finite values and w, h >= 0, found {:?}",
                context("bbox"),
                entry.bbox
            ),
        ));
    }
    let time_s = entry.time.unwrap_or(-1.0);
    if !time_s.is_finite() {
        return Err(invalid(
            path,
            format!(
                "{}: expected a finite number of seconds, found {time_s}",
                context("time")
            ),
        ));
    }
    Ok(Detection2d {
        scene_id: entry.scene_id,
        im_id: entry.image_id,
        obj_id: entry.category_id,
        score: entry.score,
        bbox_xywh: entry.bbox,
        time_s,
    })
}

/// Writes detections as a BOP 2D-detection JSON file (one entry per line, `time` always
/// written), atomically: the text goes to a temporary file beside `path`, which then
/// replaces `path`, so a crash never leaves half a file. Numbers are written as the
/// shortest text naming the same f64, and read back exactly (serde_json's
/// `float_roundtrip`).
pub fn write_detections(path: &Path, detections: &[Detection2d]) -> Result<()> {
    super::atomic::write_atomically(path, |out| format_detections(out, detections))
}

/// Formats detections as BOP 2D-detection JSON (see [`write_detections`]).
fn format_detections(out: &mut dyn Write, detections: &[Detection2d]) -> std::io::Result<()> {
    if detections.is_empty() {
        return writeln!(out, "[]");
    }
    writeln!(out, "[")?;
    for (index, d) in detections.iter().enumerate() {
        let entry = Entry {
            scene_id: d.scene_id,
            image_id: d.im_id,
            category_id: d.obj_id,
            score: d.score,
            bbox: d.bbox_xywh,
            time: Some(d.time_s),
        };
        write!(out, "  ")?;
        serde_json::to_writer(&mut *out, &entry).map_err(std::io::Error::other)?;
        let separator = if index + 1 < detections.len() {
            ","
        } else {
            ""
        };
        writeln!(out, "{separator}")?;
    }
    writeln!(out, "]")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/bop/testdata/detections")
            .join(name)
    }

    /// Asserts that reading fixture `name` fails with a JSON error whose message names
    /// the file and contains every fragment.
    fn assert_error(name: &str, fragments: &[&str]) {
        let message = match read_detections(&fixture(name)) {
            Ok(value) => panic!("{name}: expected an error, got {value:?}"),
            Err(err @ Error::Json { .. }) => err.to_string(),
            Err(err) => panic!("{name}: expected Error::Json, got {err:?}"),
        };
        assert!(
            message.contains(name),
            "{name}: the message does not name the file: {message}"
        );
        for fragment in fragments {
            assert!(
                message.contains(fragment),
                "{name}: {message:?} lacks {fragment:?}"
            );
        }
    }

    #[test]
    fn broken_files_name_entry_and_field() {
        assert_error(
            "wrong_type.json",
            &["`[1].score`", "invalid type: string", "expected f64"],
        );
        assert_error(
            "missing_field.json",
            &["`[2]`", "missing field `category_id`"],
        );
        assert_error(
            "negative_width.json",
            &[
                "`[1].bbox`",
                "scene_id 48, image_id 1, category_id 5",
                "w, h >= 0",
                "[10.0, 20.0, -3.0, 40.0]",
            ],
        );
        assert_error(
            "not_a_list.json",
            &["invalid type: map", "expected a sequence"],
        );
        assert_error(
            "bbox_three_values.json",
            &["`[0].bbox`", "invalid length 3"],
        );
        assert_error("score_overflow.json", &["`[0].score`", "out of range"]);
        assert_error("negative_image_id.json", &["`[0].image_id`", "u32"]);
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let path = fixture("no_such_file.json");
        assert!(matches!(read_detections(&path), Err(Error::Io { .. })));
    }

    #[test]
    fn parses_the_bop_layout() {
        let text = r#"[
            {"scene_id": 48, "image_id": 1, "category_id": 5, "score": 0.75,
             "bbox": [10.5, 20, 30, 40.25], "time": 0.125,
             "segmentation": {"counts": "abc", "size": [480, 640]}},
            {"scene_id": 49, "image_id": 7, "category_id": 21, "score": 1,
             "bbox": [0, 0, 0, 0]}
        ]"#;
        let detections = parse_detections(text, Path::new("inline.json")).expect("valid");
        assert_eq!(
            detections,
            vec![
                Detection2d {
                    scene_id: 48,
                    im_id: 1,
                    obj_id: 5,
                    score: 0.75,
                    bbox_xywh: [10.5, 20.0, 30.0, 40.25],
                    time_s: 0.125,
                },
                Detection2d {
                    scene_id: 49,
                    im_id: 7,
                    obj_id: 21,
                    score: 1.0,
                    bbox_xywh: [0.0; 4],
                    time_s: -1.0,
                },
            ]
        );
        assert_eq!(detections[0].bbox_xyxy(), [10.5, 20.0, 40.5, 60.25]);
        assert!(parse_detections("[]", Path::new("empty.json"))
            .expect("valid")
            .is_empty());
    }

    #[test]
    fn round_trip_exactly_and_atomically() {
        let detections = vec![
            Detection2d {
                scene_id: 1,
                im_id: 0,
                obj_id: 3,
                score: 0.9,
                bbox_xywh: [221.37, 90.5, 137.0, 207.125],
                time_s: -1.0,
            },
            Detection2d {
                scene_id: 2,
                im_id: 11,
                obj_id: 21,
                score: 0.123456789,
                bbox_xywh: [-4.25, 0.0, 1e-3, 639.999],
                time_s: 0.042,
            },
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("detections.json");
        write_detections(&out, &detections).expect("writes");
        assert_eq!(read_detections(&out).expect("re-reads"), detections);
        // Only the target is left: the temporary file was renamed onto it.
        assert_eq!(std::fs::read_dir(dir.path()).expect("lists").count(), 1);
        // Overwriting replaces the whole file.
        write_detections(&out, &detections[..1]).expect("overwrites");
        assert_eq!(read_detections(&out).expect("re-reads"), detections[..1]);
        write_detections(&out, &[]).expect("writes an empty list");
        assert!(read_detections(&out).expect("re-reads").is_empty());

        let unwritable = dir.path().join("no/such/dir/detections.json");
        assert!(matches!(
            write_detections(&unwritable, &detections),
            Err(Error::Write { .. })
        ));
    }
}
