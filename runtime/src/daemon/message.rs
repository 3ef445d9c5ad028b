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
//!
//! A subscriber may instead ask for the compact binary encoding with its first line
//! (`{"encoding":"binary","version":1}`, parsed by [`parse_encoding_request`]). The hello
//! stays JSON; the switch is acknowledged by one more JSON line ([`BINARY_SWITCH_LINE`]),
//! after which every message is a little-endian, length-prefixed binary message
//! ([`encode_poses_binary`], read back by [`decode_binary`]). The layout is documented
//! byte by byte in `docs/pose-stream-binary.md`; the constants below are that document's.

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

/// Version of the binary layout (the `version` field of every binary message, and the
/// `version` a client names when it asks for the binary encoding).
pub const BINARY_VERSION: u16 = 1;

/// Binary message kind: one frame's poses.
pub const BINARY_KIND_POSES: u16 = 1;

/// Binary message kind: an error; the connection is closed after it.
pub const BINARY_KIND_ERROR: u16 = 2;

/// Bytes of the length prefix that starts every binary message (u32: the bytes after it).
pub const BINARY_PREFIX_BYTES: usize = 4;

/// Bytes of a version-1 poses message before its first object (the `header_bytes` it
/// carries; a later version may grow it, and readers skip what they do not know).
pub const BINARY_HEADER_BYTES: usize = 160;

/// Bytes of one object record in version 1 (the `object_bytes` a message carries).
pub const BINARY_OBJECT_BYTES: usize = 144;

/// Offset of the per-subscriber `dropped` (u64) in a binary poses message: the one field
/// each subscriber's writer patches in place, so that the frame is encoded once.
pub const BINARY_DROPPED_OFFSET: usize = 144;

/// Bytes of the largest binary poses message.
pub const BINARY_MAX_BYTES: usize = BINARY_HEADER_BYTES + MAX_OBJECTS * BINARY_OBJECT_BYTES;

// Subscriber queues hold buffers of MAX_MESSAGE_BYTES: a binary frame must fit them too.
const _: () = assert!(BINARY_MAX_BYTES <= MAX_MESSAGE_BYTES);

/// The JSON line that tells a subscriber that every later message is binary.
pub const BINARY_SWITCH_LINE: &[u8] =
    b"{\"type\":\"encoding\",\"encoding\":\"binary\",\"version\":1}\n";

/// How a subscriber's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// One JSON line per message (the default).
    #[default]
    Ndjson,
    /// Length-prefixed little-endian messages, version [`BINARY_VERSION`].
    Binary,
}

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
            "{{\"type\":\"hello\",\"version\":{PROTOCOL_VERSION},\"encoding\":\"ndjson\",\
             \"encodings\":[\"ndjson\",\"binary\"],\"source\":"
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

/// What a subscriber's first line asks for: an encoding, or a reason to disconnect it.
///
/// Accepted (surrounding blanks ignored): an empty line, `ndjson`, `json`, `binary`, or a
/// JSON object with `"encoding"` (`"ndjson"` or `"binary"`) and optionally `"version"`
/// (1: protocol version 1 for NDJSON, layout version [`BINARY_VERSION`] for binary).
///
/// # Errors
/// The reason, for the error message the subscriber gets before it is disconnected:
/// what it sent and what is accepted.
pub fn parse_encoding_request(line: &str) -> std::result::Result<Encoding, String> {
    const ACCEPTED: &str = "a subscriber may only send one first line naming the encoding: \
                            \"ndjson\" (the default) or {\"encoding\":\"binary\",\"version\":1}";
    let line = line.trim();
    match line {
        "" | "ndjson" | "json" => return Ok(Encoding::Ndjson),
        "binary" => return Ok(Encoding::Binary),
        _ => {}
    }
    if !line.starts_with('{') {
        return Err(format!("sent \"{}\"; {ACCEPTED}", line.escape_debug()));
    }
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line).map_err(|e| {
            format!(
                "sent \"{}\", not a JSON object ({e}); {ACCEPTED}",
                line.escape_debug()
            )
        })?;
    if let Some(key) = object.keys().find(|k| *k != "encoding" && *k != "version") {
        return Err(format!(
            "sent the unknown key \"{}\" in its encoding line; {ACCEPTED}",
            key.escape_debug()
        ));
    }
    let encoding = match object.get("encoding") {
        Some(serde_json::Value::String(name)) if name == "ndjson" || name == "json" => {
            Encoding::Ndjson
        }
        Some(serde_json::Value::String(name)) if name == "binary" => Encoding::Binary,
        Some(serde_json::Value::String(name)) => {
            return Err(format!(
                "asked for the encoding \"{}\"; posed offers \"ndjson\" and \"binary\"",
                name.escape_debug()
            ))
        }
        Some(other) => {
            return Err(format!(
                "sent \"encoding\": {other}, not a string; {ACCEPTED}"
            ))
        }
        None => {
            return Err(format!(
                "sent no \"encoding\" in its encoding line; {ACCEPTED}"
            ))
        }
    };
    let supported = match encoding {
        Encoding::Ndjson => u64::from(PROTOCOL_VERSION),
        Encoding::Binary => u64::from(BINARY_VERSION),
    };
    match object.get("version") {
        None => Ok(encoding),
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(supported) => Ok(encoding),
        Some(other) => Err(format!(
            "asked for {} version {other}; this posed speaks version {supported}",
            match encoding {
                Encoding::Ndjson => "ndjson",
                Encoding::Binary => "binary",
            }
        )),
    }
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_f64(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Writes a binary poses message (layout version [`BINARY_VERSION`], length prefix
/// included) into `out`, cleared first, with `dropped` 0: each subscriber's writer sets
/// its own with [`set_binary_dropped`]. f64 values are written bit for bit (a NaN stays a
/// NaN where the JSON has `null`). Allocates nothing while `out` has
/// [`BINARY_MAX_BYTES`] of capacity.
pub fn encode_poses_binary(frame: &PoseFrame, out: &mut Vec<u8>) {
    out.clear();
    let count = frame.objects.len();
    // At most MAX_OBJECTS (64) objects: every size below fits its field.
    let total = BINARY_HEADER_BYTES + count * BINARY_OBJECT_BYTES;
    put_u32(out, (total - BINARY_PREFIX_BYTES) as u32);
    put_u16(out, BINARY_KIND_POSES);
    put_u16(out, BINARY_VERSION);
    put_u64(out, frame.frame);
    put_u64(out, frame.t_capture_ns);
    put_u64(out, frame.t_publish_ns);
    put_u64(out, frame.t_capture_wall_ns);
    put_u64(out, frame.t_publish_wall_ns);
    for (_, ns) in frame.latency_ns.named() {
        put_u64(out, ns);
    }
    put_u64(out, frame.pipeline_dropped);
    put_u64(out, 0); // dropped, set per subscriber
    put_u16(out, BINARY_HEADER_BYTES as u16);
    put_u16(out, BINARY_OBJECT_BYTES as u16);
    put_u16(out, count as u16);
    put_u16(out, 0);
    for object in &frame.objects {
        put_u32(out, object.obj_id);
        put_u32(out, 0);
        put_f64(out, object.score);
        for v in object.camera_from_object.rotation_row_major() {
            put_f64(out, v);
        }
        for v in object.camera_from_object.translation_m.iter() {
            put_f64(out, *v);
        }
        for v in object.bbox_xyxy {
            put_f64(out, v);
        }
    }
}

/// Sets the per-subscriber `dropped` of a message from [`encode_poses_binary`].
pub fn set_binary_dropped(message: &mut [u8], dropped: u64) {
    if let Some(field) = message.get_mut(BINARY_DROPPED_OFFSET..BINARY_DROPPED_OFFSET + 8) {
        field.copy_from_slice(&dropped.to_le_bytes());
    }
}

/// A binary error message (length prefix included): `reason` as UTF-8.
pub fn encode_binary_error(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + reason.len());
    put_u32(&mut out, (4 + reason.len()) as u32);
    put_u16(&mut out, BINARY_KIND_ERROR);
    put_u16(&mut out, BINARY_VERSION);
    out.extend_from_slice(reason.as_bytes());
    out
}

/// A binary message, decoded.
#[derive(Debug, Clone)]
pub enum BinaryMessage {
    /// A frame's poses, and this subscriber's `dropped`.
    Poses {
        /// The frame (`t_inferred_ns` is not sent: 0).
        frame: Box<PoseFrame>,
        /// Frames this subscriber lost.
        dropped: u64,
    },
    /// The server's error; it closes the connection.
    Error(String),
    /// A kind this reader does not know (a later server); skipped.
    Unknown(u16),
}

fn get_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn get_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn get_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn get_f64(bytes: &[u8], at: usize) -> Option<f64> {
    get_u64(bytes, at).map(f64::from_bits)
}

/// Decodes one binary message: `message` is the whole message, length prefix included
/// (exactly `4 + length` bytes). Fields a later layout appends (a larger `header_bytes`
/// or `object_bytes`) are skipped.
///
/// # Errors
/// What is wrong with the message: its length, version, or sizes (by field name).
pub fn decode_binary(message: &[u8]) -> std::result::Result<BinaryMessage, String> {
    let short = |field: &str| {
        format!(
            "binary message of {} bytes ends inside {field}",
            message.len()
        )
    };
    let length = get_u32(message, 0).ok_or_else(|| short("length"))? as usize;
    if message.len() != BINARY_PREFIX_BYTES + length {
        return Err(format!(
            "binary message: length says {length} bytes after the prefix, {} given",
            message.len().saturating_sub(BINARY_PREFIX_BYTES)
        ));
    }
    let kind = get_u16(message, 4).ok_or_else(|| short("kind"))?;
    let version = get_u16(message, 6).ok_or_else(|| short("version"))?;
    if version != BINARY_VERSION {
        return Err(format!(
            "binary message: version {version}, this reader knows {BINARY_VERSION}"
        ));
    }
    match kind {
        BINARY_KIND_POSES => {}
        BINARY_KIND_ERROR => {
            let text = message.get(8..).unwrap_or_default();
            return Ok(BinaryMessage::Error(
                String::from_utf8_lossy(text).into_owned(),
            ));
        }
        other => return Ok(BinaryMessage::Unknown(other)),
    }
    let header_bytes = usize::from(get_u16(message, 152).ok_or_else(|| short("header_bytes"))?);
    let object_bytes = usize::from(get_u16(message, 154).ok_or_else(|| short("object_bytes"))?);
    let count = usize::from(get_u16(message, 156).ok_or_else(|| short("object_count"))?);
    if header_bytes < BINARY_HEADER_BYTES || object_bytes < BINARY_OBJECT_BYTES {
        return Err(format!(
            "binary poses message: header_bytes {header_bytes} / object_bytes {object_bytes}, \
             at least {BINARY_HEADER_BYTES} / {BINARY_OBJECT_BYTES} in version {BINARY_VERSION}"
        ));
    }
    if count > MAX_OBJECTS {
        return Err(format!(
            "binary poses message: object_count {count}, at most {MAX_OBJECTS}"
        ));
    }
    if message.len() < header_bytes + count * object_bytes {
        return Err(format!(
            "binary poses message: {count} objects of {object_bytes} bytes after a header of \
             {header_bytes} need {} bytes, the message has {}",
            header_bytes + count * object_bytes,
            message.len()
        ));
    }
    let u64_at = |at: usize| get_u64(message, at).ok_or_else(|| short("the header"));
    let mut frame = Box::<PoseFrame>::default();
    frame.frame = u64_at(8)?;
    frame.t_capture_ns = u64_at(16)?;
    frame.t_publish_ns = u64_at(24)?;
    frame.t_capture_wall_ns = u64_at(32)?;
    frame.t_publish_wall_ns = u64_at(40)?;
    let l: [u64; 11] = {
        let mut l = [0u64; 11];
        for (i, v) in l.iter_mut().enumerate() {
            *v = u64_at(48 + 8 * i)?;
        }
        l
    };
    frame.latency_ns = StageLatencies {
        capture: l[0],
        queue: l[1],
        detect: l[2],
        init: l[3],
        crop: l[4],
        render: l[5],
        coarse: l[6],
        refiner: l[7],
        update: l[8],
        publish: l[9],
        total: l[10],
    };
    frame.pipeline_dropped = u64_at(136)?;
    let dropped = u64_at(BINARY_DROPPED_OFFSET)?;
    for i in 0..count {
        let at = header_bytes + i * object_bytes;
        let f = |offset: usize| get_f64(message, at + offset).ok_or_else(|| short("an object"));
        let obj_id = get_u32(message, at).ok_or_else(|| short("an object"))?;
        let mut rotation = [0f64; 9];
        for (j, v) in rotation.iter_mut().enumerate() {
            *v = f(16 + 8 * j)?;
        }
        let object = PosedObject {
            obj_id,
            score: f(8)?,
            camera_from_object: Pose::from_row_major(&rotation, [f(88)?, f(96)?, f(104)?]),
            bbox_xyxy: [f(112)?, f(120)?, f(128)?, f(136)?],
        };
        // Capacity: count <= MAX_OBJECTS was checked above.
        let _ = frame.objects.push(object);
    }
    Ok(BinaryMessage::Poses { frame, dropped })
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
    fn a_binary_message_round_trips_bit_for_bit_at_the_documented_offsets() {
        let mut frame = frame_with(3);
        frame.latency_ns.capture = 11;
        frame.latency_ns.publish = 99;
        frame.objects[2].score = f64::NAN;
        let mut out = Vec::with_capacity(BINARY_MAX_BYTES);
        encode_poses_binary(&frame, &mut out);
        assert_eq!(out.len(), BINARY_HEADER_BYTES + 3 * BINARY_OBJECT_BYTES);
        assert_eq!(out.capacity(), BINARY_MAX_BYTES, "no reallocation");
        // The offsets docs/pose-stream-binary.md gives.
        let u64_at = |at: usize| u64::from_le_bytes(out[at..at + 8].try_into().expect("8"));
        assert_eq!(
            u32::from_le_bytes(out[0..4].try_into().expect("4")) as usize,
            out.len() - 4
        );
        assert_eq!(u16::from_le_bytes([out[4], out[5]]), BINARY_KIND_POSES);
        assert_eq!(u16::from_le_bytes([out[6], out[7]]), BINARY_VERSION);
        assert_eq!(u64_at(8), 42);
        assert_eq!(u64_at(32), 1_700_000_000_000_000_000);
        assert_eq!(u64_at(48), 11, "latency_ns.capture");
        assert_eq!(u64_at(48 + 9 * 8), 99, "latency_ns.publish");
        assert_eq!(u64_at(48 + 10 * 8), 2_000, "latency_ns.total");
        assert_eq!(u64_at(136), 3, "pipeline_dropped");
        let second = BINARY_HEADER_BYTES + BINARY_OBJECT_BYTES;
        assert_eq!(
            u32::from_le_bytes(out[second..second + 4].try_into().expect("4")),
            2
        );
        assert_eq!(f64::from_bits(u64_at(second + 16 + 8)), -1.0, "R[0][1]");
        assert_eq!(f64::from_bits(u64_at(second + 88)), -0.1, "t_m[0]");
        assert_eq!(f64::from_bits(u64_at(second + 112)), -12.5, "bbox[0]");

        set_binary_dropped(&mut out, 5);
        match decode_binary(&out).expect("decodes") {
            BinaryMessage::Poses {
                frame: decoded,
                dropped,
            } => {
                assert_eq!(dropped, 5);
                assert_eq!(decoded.frame, frame.frame);
                assert_eq!(decoded.t_publish_wall_ns, frame.t_publish_wall_ns);
                assert_eq!(decoded.latency_ns, frame.latency_ns);
                assert_eq!(decoded.pipeline_dropped, 3);
                assert_eq!(decoded.objects.len(), 3);
                for (a, b) in decoded.objects.iter().zip(&frame.objects) {
                    assert_eq!(a.obj_id, b.obj_id);
                    assert_eq!(a.score.to_bits(), b.score.to_bits());
                    assert_eq!(a.camera_from_object, b.camera_from_object);
                    assert_eq!(a.bbox_xyxy, b.bbox_xyxy);
                }
            }
            other => panic!("expected poses, got {other:?}"),
        }
    }

    #[test]
    fn broken_binary_messages_are_errors_not_panics() {
        let mut out = Vec::with_capacity(BINARY_MAX_BYTES);
        encode_poses_binary(&frame_with(2), &mut out);
        // Every truncation.
        for len in 0..out.len() {
            assert!(decode_binary(&out[..len]).is_err(), "{len} bytes");
        }
        let mut wrong_version = out.clone();
        wrong_version[6] = 9;
        let message = decode_binary(&wrong_version).expect_err("version");
        assert!(message.contains("version 9"), "{message}");
        let mut too_many = out.clone();
        too_many[156] = 200;
        let message = decode_binary(&too_many).expect_err("count");
        assert!(message.contains("object_count 200"), "{message}");
        let mut small_header = out.clone();
        small_header[152] = 8;
        assert!(decode_binary(&small_header).is_err());
        // A later layout's longer header and records are skipped.
        let error = encode_binary_error("too slow");
        assert!(matches!(decode_binary(&error), Ok(BinaryMessage::Error(r)) if r == "too slow"));
        let mut unknown = error.clone();
        unknown[4] = 77;
        assert!(matches!(
            decode_binary(&unknown),
            Ok(BinaryMessage::Unknown(77))
        ));
    }

    #[test]
    fn the_first_line_names_an_encoding_or_is_refused_with_what_is_accepted() {
        for line in ["", "  ", "ndjson", "json\r", "{\"encoding\":\"ndjson\"}"] {
            assert_eq!(
                parse_encoding_request(line),
                Ok(Encoding::Ndjson),
                "{line:?}"
            );
        }
        for line in [
            "binary",
            "{\"encoding\":\"binary\"}",
            " {\"encoding\": \"binary\", \"version\": 1} ",
        ] {
            assert_eq!(
                parse_encoding_request(line),
                Ok(Encoding::Binary),
                "{line:?}"
            );
        }
        for (line, expected) in [
            ("GET / HTTP/1.1", "GET"),
            ("{\"encoding\":\"binary\",\"version\":2}", "version 2"),
            (
                "{\"encoding\":\"binary\",\"version\":\"1\"}",
                "version \"1\"",
            ),
            ("{\"encoding\":\"xml\"}", "xml"),
            ("{\"encoding\":null}", "not a string"),
            ("{\"format\":\"binary\"}", "unknown key \"format\""),
            ("{}", "no \"encoding\""),
            ("{\"encoding\":", "not a JSON object"),
            ("[1]", "sent"),
        ] {
            let reason = parse_encoding_request(line).expect_err(line);
            assert!(reason.contains(expected), "{line}: {reason}");
        }
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
