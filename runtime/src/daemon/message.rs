//! The pose stream's messages (protocol version 1, newline-delimited JSON) and their
//! encoding without allocation.
//!
//! ```text
//! {"type":"hello","version":1,"encoding":"ndjson","source":"/dev/video0",
//!  "labels":["obj_000001",...],"camera":{"width":640,"height":480,"K":[9 numbers]}}
//! {"type":"poses","frame":N,"t_capture_ns":N,"t_publish_ns":N,"t_capture_wall_ns":N,
//!  "t_publish_wall_ns":N,"latency_ns":{"capture":N,"queue":N,"detect":N,"init":N,
//!  "crop":N,"render":N,"coarse":N,"refiner":N,"update":N,"publish":N,"total":N},
//!  "pipeline_dropped":N,"objects":[{"label":"obj_000001","obj_id":1,"score":0.9,
//!  "R":[9 numbers, row-major, camera_from_object],"t_m":[3 numbers],
//!  "bbox":[x1,y1,x2,y2]}],"dropped":N}
//! ```
//!
//! `t_*_ns` are CLOCK_MONOTONIC, `t_*_wall_ns` the wall clock (ns since the Unix epoch).
//! `pipeline_dropped` counts the frames the daemon skipped since it started (the camera
//! was faster than inference); `dropped` the frames this subscriber lost since it
//! connected because it read too slowly. The README documents the protocol for users.

use std::io::Write;

use posed_kernels::cosypose::BoxXyxy;
use posed_kernels::Pose;

use crate::source::SourceInfo;

/// Protocol version in the hello message.
pub const PROTOCOL_VERSION: u32 = 1;

/// Objects one frame can carry.
pub const MAX_OBJECTS: usize = 64;

/// Bytes one encoded poses message can take: the fixed part plus every object at its
/// longest (shortest-round-trip f64s are at most 24 characters).
pub const MAX_MESSAGE_BYTES: usize = 1024 + MAX_OBJECTS * 640;

/// Per-stage latencies of one frame, nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageLatencies {
    /// Getting the image: dequeue, decode, colour conversion.
    pub capture: u64,
    /// Waiting between capture and the start of inference.
    pub queue: u64,
    /// The detector (0 with dataset boxes).
    pub detect: u64,
    /// Initial poses from boxes.
    pub init: u64,
    /// Crops and RoIAlign.
    pub crop: u64,
    /// Rendering.
    pub render: u64,
    /// Coarse network passes.
    pub coarse: u64,
    /// Refiner network passes.
    pub refiner: u64,
    /// Pose updates.
    pub update: u64,
    /// From the end of inference to the message leaving for the subscribers.
    pub publish: u64,
    /// Capture to publish.
    pub total: u64,
}

impl StageLatencies {
    /// Stage names and values, in message order.
    pub fn named(&self) -> [(&'static str, u64); 11] {
        [
            ("capture", self.capture),
            ("queue", self.queue),
            ("detect", self.detect),
            ("init", self.init),
            ("crop", self.crop),
            ("render", self.render),
            ("coarse", self.coarse),
            ("refiner", self.refiner),
            ("update", self.update),
            ("publish", self.publish),
            ("total", self.total),
        ]
    }
}

/// One object's estimate in a published frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PosedObject {
    /// BOP object id.
    pub obj_id: u32,
    /// Detection score.
    pub score: f64,
    /// The estimate, metres.
    pub camera_from_object: Pose,
    /// The detection box, pixels.
    pub bbox_xyxy: BoxXyxy,
}

/// One processed frame, as published. Fixed capacity: reused for every frame.
#[derive(Debug, Clone, Default)]
pub struct PoseFrame {
    /// Frame number.
    pub frame: u64,
    /// Capture instant, CLOCK_MONOTONIC ns.
    pub t_capture_ns: u64,
    /// Capture instant, wall clock ns.
    pub t_capture_wall_ns: u64,
    /// Publish instant, CLOCK_MONOTONIC ns (set by the publisher).
    pub t_publish_ns: u64,
    /// Publish instant, wall clock ns.
    pub t_publish_wall_ns: u64,
    /// When inference finished, CLOCK_MONOTONIC ns.
    pub t_inferred_ns: u64,
    /// Per-stage latencies.
    pub latency_ns: StageLatencies,
    /// Frames skipped by the pipeline since start.
    pub pipeline_dropped: u64,
    /// The objects with a valid estimate.
    pub objects: heapless::Vec<PosedObject, MAX_OBJECTS>,
}

/// Writes `[a,b,...]`.
fn write_list(out: &mut Vec<u8>, values: &[f64]) -> std::io::Result<()> {
    out.push(b'[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_number(out, *v)?;
    }
    out.push(b']');
    Ok(())
}

/// JSON has no NaN or infinity: they are written as `null` (an estimate never has them;
/// this keeps the stream parseable if one slipped through).
/// Numbers are ryu's shortest round-trip form (as serde_json writes them): `1e-17`, not
/// the 17 zeros Rust's `Display` spells out.
fn write_number(out: &mut Vec<u8>, value: f64) -> std::io::Result<()> {
    if value.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
    Ok(())
}

/// Appends the JSON string of `text` (labels and paths: escapes quotes, backslashes and
/// control characters).
fn write_string(out: &mut Vec<u8>, text: &str) -> std::io::Result<()> {
    out.push(b'"');
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32)?,
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    out.push(b'"');
    Ok(())
}

/// The hello message, one line.
pub fn encode_hello(info: &SourceInfo, obj_ids: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + obj_ids.len() * 16);
    // Writing into a Vec cannot fail.
    let _ = (|| -> std::io::Result<()> {
        write!(
            out,
            "{{\"type\":\"hello\",\"version\":{PROTOCOL_VERSION},\"encoding\":\"ndjson\",\"source\":"
        )?;
        write_string(&mut out, &info.name)?;
        out.extend_from_slice(b",\"labels\":[");
        for (i, obj_id) in obj_ids.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write!(out, "\"obj_{obj_id:06}\"")?;
        }
        write!(
            out,
            "],\"camera\":{{\"width\":{},\"height\":{},\"K\":",
            info.width, info.height
        )?;
        let k = info.intrinsics.k;
        let row_major: [f64; 9] = std::array::from_fn(|i| k[(i / 3, i % 3)]);
        write_list(&mut out, &row_major)?;
        out.extend_from_slice(b"}}\n");
        Ok(())
    })();
    out
}

/// Writes a poses message into `out` (cleared first) up to and including `"dropped":`;
/// each subscriber's writer appends its own count and `}\n` ([`finish_for_subscriber`]).
/// Allocates nothing while `out` has [`MAX_MESSAGE_BYTES`] of capacity.
pub fn encode_poses_body(frame: &PoseFrame, out: &mut Vec<u8>) {
    out.clear();
    let _ = (|| -> std::io::Result<()> {
        write!(
            out,
            "{{\"type\":\"poses\",\"frame\":{},\"t_capture_ns\":{},\"t_publish_ns\":{},\
             \"t_capture_wall_ns\":{},\"t_publish_wall_ns\":{},\"latency_ns\":{{",
            frame.frame,
            frame.t_capture_ns,
            frame.t_publish_ns,
            frame.t_capture_wall_ns,
            frame.t_publish_wall_ns
        )?;
        for (i, (name, ns)) in frame.latency_ns.named().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write!(out, "\"{name}\":{ns}")?;
        }
        write!(
            out,
            "}},\"pipeline_dropped\":{},\"objects\":[",
            frame.pipeline_dropped
        )?;
        for (i, object) in frame.objects.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write!(
                out,
                "{{\"label\":\"obj_{:06}\",\"obj_id\":{},\"score\":",
                object.obj_id, object.obj_id
            )?;
            write_number(out, object.score)?;
            out.extend_from_slice(b",\"R\":");
            write_list(out, &object.camera_from_object.rotation_row_major())?;
            out.extend_from_slice(b",\"t_m\":");
            write_list(out, object.camera_from_object.translation_m.as_slice())?;
            out.extend_from_slice(b",\"bbox\":");
            write_list(out, &object.bbox_xyxy)?;
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"dropped\":");
        Ok(())
    })();
}

/// Completes a body from [`encode_poses_body`] for one subscriber: its dropped count and
/// the end of the line.
pub fn finish_for_subscriber(out: &mut Vec<u8>, dropped: u64) {
    let _ = writeln!(out, "{dropped}}}");
}

#[cfg(test)]
mod tests {
    use nalgebra::{Matrix3, Vector3};
    use posed_kernels::Intrinsics;

    use super::*;

    fn frame_with(objects: usize) -> PoseFrame {
        let mut frame = PoseFrame {
            frame: 42,
            t_capture_ns: 1_000,
            t_publish_ns: 3_000,
            t_capture_wall_ns: 1_700_000_000_000_000_000,
            t_publish_wall_ns: 1_700_000_000_000_002_000,
            pipeline_dropped: 3,
            ..PoseFrame::default()
        };
        frame.latency_ns.total = 2_000;
        for i in 0..objects {
            let rotation = Matrix3::new(0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0);
            let object = PosedObject {
                obj_id: i as u32 + 1,
                score: 0.123_456_789_012_345_67,
                camera_from_object: Pose {
                    rotation,
                    translation_m: Vector3::new(-0.1, 1e-17, 1.5),
                },
                bbox_xyxy: [-12.5, 3.0, 640.25, 480.0],
            };
            frame.objects.push(object).expect("capacity");
        }
        frame
    }

    #[test]
    fn a_poses_message_is_one_json_line_with_every_field() {
        let mut out = Vec::with_capacity(MAX_MESSAGE_BYTES);
        encode_poses_body(&frame_with(2), &mut out);
        finish_for_subscriber(&mut out, 7);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(value["type"], "poses");
        assert_eq!(value["frame"], 42);
        assert_eq!(value["dropped"], 7);
        assert_eq!(value["pipeline_dropped"], 3);
        assert_eq!(value["latency_ns"]["total"], 2000);
        assert_eq!(value["latency_ns"].as_object().expect("object").len(), 11);
        let object = &value["objects"][1];
        assert_eq!(object["label"], "obj_000002");
        assert_eq!(object["obj_id"], 2);
        assert_eq!(object["score"].as_f64(), Some(0.123_456_789_012_345_67));
        let r: Vec<f64> = serde_json::from_value(object["R"].clone()).expect("R");
        assert_eq!(r, vec![0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        let t: Vec<f64> = serde_json::from_value(object["t_m"].clone()).expect("t");
        assert_eq!(t, vec![-0.1, 1e-17, 1.5]);
        assert_eq!(object["bbox"][0].as_f64(), Some(-12.5));
    }

    #[test]
    fn the_largest_frame_fits_the_message_budget() {
        let mut frame = frame_with(MAX_OBJECTS);
        for object in &mut frame.objects {
            // The longest numbers there are.
            object.score = -1.234_567_890_123_456_7e-300;
            object.camera_from_object.translation_m =
                Vector3::repeat(-1.234_567_890_123_456_7e-300);
            object.bbox_xyxy = [-1.234_567_890_123_456_7e-300; 4];
        }
        frame.frame = u64::MAX;
        frame.latency_ns = StageLatencies {
            total: u64::MAX,
            ..StageLatencies::default()
        };
        let mut out = Vec::with_capacity(MAX_MESSAGE_BYTES);
        encode_poses_body(&frame, &mut out);
        finish_for_subscriber(&mut out, u64::MAX);
        assert!(out.len() <= MAX_MESSAGE_BYTES, "{} bytes", out.len());
        serde_json::from_slice::<serde_json::Value>(&out).expect("valid JSON");
    }

    #[test]
    fn non_finite_numbers_become_null() {
        let mut frame = frame_with(1);
        frame.objects[0].score = f64::NAN;
        let mut out = Vec::new();
        encode_poses_body(&frame, &mut out);
        finish_for_subscriber(&mut out, 0);
        let value: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert!(value["objects"][0]["score"].is_null());
    }

    #[test]
    fn the_hello_names_labels_and_camera() {
        let info = SourceInfo {
            name: "/data/\"quoted\"\\scene".to_owned(),
            width: 640,
            height: 480,
            intrinsics: Intrinsics::from_row_major(&[
                600.0, 0.0, 320.0, 0.0, 601.0, 240.0, 0.0, 0.0, 1.0,
            ]),
            format: "PNG".to_owned(),
        };
        let hello = encode_hello(&info, &[1, 21]);
        assert_eq!(hello.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&hello).expect("valid JSON");
        assert_eq!(value["type"], "hello");
        assert_eq!(value["version"], 1);
        assert_eq!(value["source"], "/data/\"quoted\"\\scene");
        assert_eq!(
            value["labels"],
            serde_json::json!(["obj_000001", "obj_000021"])
        );
        assert_eq!(value["camera"]["width"], 640);
        assert_eq!(value["camera"]["K"][4].as_f64(), Some(601.0));
    }
}
