//! `posed watch`: a pose stream subscriber that prints what it receives.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Print the raw JSON lines.
    pub json: bool,
    /// Stop after this many frames.
    pub count: Option<u64>,
}

/// What a watch saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchReport {
    /// Frames received.
    pub frames: u64,
    /// Frames the server dropped for this subscriber (the last `dropped` seen).
    pub dropped: u64,
}

/// Connects to the pose stream at `socket` and prints every message to `out` until the
/// stream ends or `options.count` frames arrived.
///
/// # Errors
/// [`Error::Stream`] when nothing listens at `socket`, the connection breaks, a line is
/// not JSON, or the server sends an error message.
pub fn watch(socket: &Path, options: WatchOptions, out: &mut dyn Write) -> Result<WatchReport> {
    let peer = socket.display().to_string();
    let error = |detail: String| Error::Stream {
        peer: peer.clone(),
        detail,
    };
    let stream = UnixStream::connect(socket).map_err(|e| {
        error(format!(
            "cannot connect ({e}); is posed running? (`systemctl status posed`, or \
             `posed run --demo --socket {}`)",
            socket.display()
        ))
    })?;
    let mut report = WatchReport::default();
    let write_error = |e: std::io::Error| error(format!("cannot print: {e}"));
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| error(format!("connection broken: {e}")))?;
        let message: Value = serde_json::from_str(&line)
            .map_err(|e| error(format!("sent a line that is not JSON ({e}): {line}")))?;
        match message["type"].as_str() {
            Some("error") => {
                return Err(error(format!(
                    "the server refused us: {}",
                    message["reason"].as_str().unwrap_or("(no reason given)")
                )))
            }
            Some("poses") => {
                report.frames += 1;
                report.dropped = message["dropped"].as_u64().unwrap_or(report.dropped);
            }
            _ => {}
        }
        if options.json {
            writeln!(out, "{line}").map_err(write_error)?;
        } else {
            print_human(&message, out).map_err(write_error)?;
        }
        if options.count.is_some_and(|count| report.frames >= count) {
            break;
        }
    }
    Ok(report)
}

fn print_human(message: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    match message["type"].as_str() {
        Some("hello") => writeln!(
            out,
            "connected: posed protocol {}, source {}, camera {} x {}, {} objects known",
            message["version"],
            message["source"].as_str().unwrap_or("?"),
            message["camera"]["width"],
            message["camera"]["height"],
            message["labels"].as_array().map_or(0, Vec::len)
        ),
        Some("poses") => {
            let ms = |key: &str| message["latency_ns"][key].as_f64().unwrap_or(0.0) / 1e6;
            let objects = message["objects"].as_array().map_or(&[][..], Vec::as_slice);
            writeln!(
                out,
                "frame {:>6}  {:>7.1} ms (infer {:.1} ms)  {} object(s)  dropped {} (pipeline {})",
                message["frame"],
                ms("total"),
                ms("detect")
                    + ms("init")
                    + ms("crop")
                    + ms("render")
                    + ms("coarse")
                    + ms("refiner")
                    + ms("update"),
                objects.len(),
                message["dropped"],
                message["pipeline_dropped"],
            )?;
            for object in objects {
                let t = |i: usize| object["t_m"][i].as_f64().unwrap_or(f64::NAN);
                writeln!(
                    out,
                    "  {:<12} score {:.3}  t = ({:+.3}, {:+.3}, {:+.3}) m",
                    object["label"].as_str().unwrap_or("?"),
                    object["score"].as_f64().unwrap_or(f64::NAN),
                    t(0),
                    t(1),
                    t(2)
                )?;
            }
            Ok(())
        }
        _ => writeln!(out, "{message}"),
    }
}
