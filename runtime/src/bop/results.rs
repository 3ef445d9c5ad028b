//! BOP19 results CSV: `scene_id,im_id,obj_id,score,R,t,time`, with R as 9 row-major
//! floats and t as 3 floats in millimetres, each separated by spaces; time in seconds
//! (-1 when unknown).

use std::io::Write;
use std::path::Path;

use posed_kernels::Pose;

use super::json::check_rotation;
use super::models::MM_TO_M;
use super::scene::pose_from_file;
use crate::{Error, Result};

/// One pose estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Scene id.
    pub scene_id: u32,
    /// Image id.
    pub im_id: u32,
    /// Object id.
    pub obj_id: u32,
    /// Confidence; higher is better.
    pub score: f64,
    /// The estimated pose, metres.
    pub camera_from_object: Pose,
    /// Time spent on the image, seconds; -1 when unknown.
    pub time_s: f64,
}

/// An estimate read from a file, with its 1-based line number (the header is line 1).
#[derive(Debug, Clone, PartialEq)]
pub struct EstimateRow {
    /// Line of the row in the CSV file.
    pub line: u64,
    /// The estimate.
    pub estimate: Estimate,
}

/// The columns a results file must have (`time` may be absent).
const REQUIRED_COLUMNS: [&str; 6] = ["scene_id", "im_id", "obj_id", "score", "R", "t"];

/// Reads a BOP19 results CSV. Every malformed row is an error naming its line; no row is
/// skipped.
pub fn read_results(path: &Path) -> Result<Vec<EstimateRow>> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_results(std::io::BufReader::new(file), path)
}

/// Parses a BOP19 results CSV from a reader; `path` only names the source in errors.
pub fn parse_results(reader: impl std::io::Read, path: &Path) -> Result<Vec<EstimateRow>> {
    let csv_error = |line: u64, detail: String| Error::Csv {
        path: path.to_path_buf(),
        line,
        detail,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let header = reader
        .headers()
        .map_err(|err| csv_error(1, format!("cannot read the header: {err}")))?
        .clone();
    let column = |name: &str| header.iter().position(|h| h == name);
    let mut indices = [0usize; 6];
    for (slot, name) in indices.iter_mut().zip(REQUIRED_COLUMNS) {
        *slot = column(name).ok_or_else(|| {
            csv_error(
                1,
                format!(
                    "header has no column {name:?}; expected scene_id,im_id,obj_id,score,R,t,time, found {}",
                    header.iter().collect::<Vec<_>>().join(",")
                ),
            )
        })?;
    }
    let time_index = column("time");
    let [scene_col, im_col, obj_col, score_col, r_col, t_col] = indices;

    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|err| {
            let line = err.position().map_or(0, |p| p.line());
            csv_error(line, format!("malformed CSV row: {err}"))
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |index: usize, name: &str| {
            record
                .get(index)
                .ok_or_else(|| csv_error(line, format!("missing field {name:?}")))
        };
        let integer = |index: usize, name: &str| -> Result<u32> {
            let text = field(index, name)?;
            text.parse::<u32>().map_err(|_| {
                csv_error(
                    line,
                    format!("{name}: expected a non-negative integer, found {text:?}"),
                )
            })
        };
        let number = |index: usize, name: &str| -> Result<f64> {
            let text = field(index, name)?;
            text.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    csv_error(
                        line,
                        format!("{name}: expected a finite number, found {text:?}"),
                    )
                })
        };
        let scene_id = integer(scene_col, "scene_id")?;
        let im_id = integer(im_col, "im_id")?;
        let obj_id = integer(obj_col, "obj_id")?;
        let score = number(score_col, "score")?;
        let r_text = field(r_col, "R")?;
        let rotation: [f64; 9] = numbers(r_text).ok_or_else(|| {
            csv_error(
                line,
                format!(
                    "R: expected 9 space-separated finite numbers (row-major), found {r_text:?}"
                ),
            )
        })?;
        let t_text = field(t_col, "t")?;
        let translation_mm: [f64; 3] = numbers(t_text).ok_or_else(|| {
            csv_error(
                line,
                format!("t: expected 3 space-separated finite numbers (mm), found {t_text:?}"),
            )
        })?;
        let time_s = match time_index {
            Some(index) => number(index, "time")?,
            None => -1.0,
        };
        let camera_from_object = pose_from_file(&rotation, &translation_mm)
            .ok_or_else(|| csv_error(line, "pose values are not finite".into()))?;
        check_rotation(&camera_from_object).map_err(|why| csv_error(line, format!("R: {why}")))?;
        rows.push(EstimateRow {
            line,
            estimate: Estimate {
                scene_id,
                im_id,
                obj_id,
                score,
                camera_from_object,
                time_s,
            },
        });
    }
    Ok(rows)
}

/// Parses exactly `N` whitespace-separated finite numbers.
fn numbers<const N: usize>(text: &str) -> Option<[f64; N]> {
    let mut out = [0.0; N];
    let mut tokens = text.split_whitespace();
    for slot in &mut out {
        *slot = tokens
            .next()?
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())?;
    }
    tokens.next().is_none().then_some(out)
}

/// Writes estimates as a BOP19 results CSV, atomically: the rows go to a temporary file
/// beside `path`, which then replaces `path`, so a crash never leaves half a file.
pub fn write_results(path: &Path, estimates: &[Estimate]) -> Result<()> {
    super::atomic::write_atomically(path, |out| format_results(out, estimates))
}

/// Formats estimates as BOP19 CSV (header included). Numbers use the shortest text that
/// reads back to the same f64.
pub fn format_results(
    out: &mut (impl Write + ?Sized),
    estimates: &[Estimate],
) -> std::io::Result<()> {
    writeln!(out, "scene_id,im_id,obj_id,score,R,t,time")?;
    for e in estimates {
        let r = e.camera_from_object.rotation_row_major();
        let t = e.camera_from_object.translation_m / MM_TO_M;
        write!(out, "{},{},{},{},", e.scene_id, e.im_id, e.obj_id, e.score)?;
        for (i, v) in r.iter().enumerate() {
            write!(out, "{}{v}", if i == 0 { "" } else { " " })?;
        }
        writeln!(out, ",{} {} {},{}", t.x, t.y, t.z, e.time_s)?;
    }
    Ok(())
}
