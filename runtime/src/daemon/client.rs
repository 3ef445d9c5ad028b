//! `posed watch`: a pose stream subscriber that prints what it receives.
//!
//! What comes from the socket is checked before anything of it is printed: lines are
//! bounded ([`MAX_LINE_BYTES`]), the first message must be a hello of protocol version
//! [`PROTOCOL_VERSION`], and every hello and poses message must have the fields of the
//! protocol with their types (an error names the field). Text from the server is printed
//! escaped: no control character or terminal escape sequence it sends reaches the
//! terminal.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::message::{StageLatencies, MAX_MESSAGE_BYTES, PROTOCOL_VERSION};
use super::unix;
use crate::{Error, Result};

/// Longest line accepted from the server: far above the longest message posed sends
/// ([`MAX_MESSAGE_BYTES`]), small enough that a server sending an endless line cannot
/// make the client hold much.
pub const MAX_LINE_BYTES: usize = 1 << 20;

const _: () = assert!(MAX_MESSAGE_BYTES < MAX_LINE_BYTES);

/// How long connecting and the hello may take together. posed accepts and sends its hello
/// at once; a server that takes longer is hung, or is not posed. After the hello there is
/// no limit: frames may pause for as long as a camera takes to come back.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Characters of a server's text quoted in an error message.
const QUOTED_CHARS: usize = 200;

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Print each JSON line as received (characters a terminal would act on as `\u`
    /// escapes: the same JSON).
    pub json: bool,
    /// Stop after this many frames.
    pub count: Option<u64>,
    /// Keep watching across posed restarts: when posed is not there (yet), hangs, refuses
    /// the subscriber or closes the stream, try again (after [`RETRY_MIN`], doubling up
    /// to [`RETRY_MAX`]) instead of ending. A stream that breaks the protocol still ends
    /// the watch: trying again would not mend it.
    pub follow: bool,
}

/// First delay before connecting again, with [`WatchOptions::follow`].
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest delay between attempts to connect again.
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// What a watch saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchReport {
    /// Frames received.
    pub frames: u64,
    /// Frames the server dropped for this subscriber (the last `dropped` seen).
    pub dropped: u64,
}

/// Connects to the pose stream at `socket` and prints every message to `out` until the
/// stream ends or `options.count` frames arrived (with `options.follow`, until the count
/// only: see there; each retry is announced on `notes`, once per new reason). Connecting
/// and the hello must take less than [`HELLO_TIMEOUT`]; frames may then take as long as
/// they take.
///
/// # Errors
/// [`Error::Stream`] naming `socket` when nothing listens there, the connection or the
/// hello takes too long, the connection breaks or closes before the hello, a line is
/// longer than [`MAX_LINE_BYTES`], not UTF-8 or not JSON, a message lacks a field of the
/// protocol or has it of another type, the hello is of another protocol version, or the
/// server sends an error message. With `options.follow`, only the protocol errors (and
/// failing to print).
pub fn watch(
    socket: &Path,
    options: WatchOptions,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<WatchReport> {
    watch_within(socket, options, HELLO_TIMEOUT, out, notes)
}

/// Why one connection's watch ended without an error.
enum Ended {
    /// `options.count` frames were received.
    Counted,
    /// The server closed the stream.
    Closed,
}

/// Why one connection's watch failed.
enum Failure {
    /// posed is not there, hangs, refused the subscriber, or the connection broke: posed
    /// may be back later.
    Lost(String),
    /// The stream broke the protocol, or printing failed: trying again would not help.
    Fatal(String),
}

/// [`watch`], with the time connecting and the hello may take.
fn watch_within(
    socket: &Path,
    options: WatchOptions,
    hello_timeout: Duration,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<WatchReport> {
    let error = |detail: String| Error::Stream {
        peer: socket.display().to_string(),
        detail,
    };
    let mut report = WatchReport::default();
    let mut attempt = 0u32;
    let mut last_note = String::new();
    loop {
        let mut greeted = false;
        let watched = watch_connection(
            socket,
            options,
            hello_timeout,
            &mut report,
            &mut greeted,
            out,
        );
        let reason = match watched {
            Ok(Ended::Counted) => return Ok(report),
            Ok(Ended::Closed) if !options.follow => return Ok(report),
            Ok(Ended::Closed) => "posed closed the stream".to_owned(),
            Err(Failure::Lost(detail)) if options.follow => detail,
            Err(Failure::Lost(detail) | Failure::Fatal(detail)) => return Err(error(detail)),
        };
        if greeted {
            // A new outage: the backoff starts again, and its reason is said even when
            // it is the last one's.
            attempt = 0;
            last_note.clear();
        }
        let delay = super::reopen_delay(attempt, RETRY_MIN, RETRY_MAX);
        attempt = attempt.saturating_add(1);
        // Once per reason: a posed stopped for an hour is one line, not 1,800.
        if reason != last_note {
            writeln!(
                notes,
                "posed watch: {}: {reason}; trying again every {} s at most",
                socket.display(),
                RETRY_MAX.as_secs()
            )
            .map_err(|e| error(format!("cannot print: {e}")))?;
            last_note = reason;
        }
        std::thread::sleep(delay);
    }
}

/// One connection: connects, checks the hello (then sets `greeted`) and prints what
/// comes, adding its frames to `report`.
fn watch_connection(
    socket: &Path,
    options: WatchOptions,
    hello_timeout: Duration,
    report: &mut WatchReport,
    greeted: &mut bool,
    out: &mut dyn Write,
) -> std::result::Result<Ended, Failure> {
    let started = Instant::now();
    let stream = unix::connect(socket, Some(hello_timeout)).map_err(|e| {
        Failure::Lost(if e.kind() == ErrorKind::WouldBlock {
            format!(
                "nothing accepted the connection within {} ms: whatever listens there has \
                 stopped accepting (is posed hung? `systemctl status posed`)",
                hello_timeout.as_millis()
            )
        } else {
            format!(
                "cannot connect ({e}); is posed running? (`systemctl status posed`, or \
                 `posed run --demo --socket {}`)",
                socket.display()
            )
        })
    })?;
    let mut lines = LineReader::new(stream);
    // For the whole hello, however the server dribbles it.
    lines.deadline = Some(started + hello_timeout);
    let print_error = |e: std::io::Error| Failure::Fatal(format!("cannot print: {e}"));
    let fatal = Failure::Fatal;

    let hello = match lines.next_line() {
        Ok(Some(line)) => parse_line(line).map_err(fatal)?,
        Ok(None) => {
            return Err(Failure::Lost(
                "closed the connection without sending a hello".to_owned(),
            ))
        }
        Err(LineError::TimedOut) => {
            return Err(Failure::Lost(format!(
                "sent no hello within {} ms of connecting (posed sends it at once: is this \
                 a posed socket?)",
                hello_timeout.as_millis()
            )))
        }
        Err(e) => return Err(e.into_failure()),
    };
    match hello.kind.as_str() {
        "hello" => check_hello(&hello.value).map_err(fatal)?,
        "error" => return Err(Failure::Lost(refusal(&hello.value))),
        other => {
            return Err(fatal(format!(
                "sent a message of type \"{}\" before its hello",
                quote(other)
            )))
        }
    }
    *greeted = true;
    print_message(&hello, options, out).map_err(print_error)?;
    // Frames may pause for as long as the camera takes to come back.
    lines.deadline = None;
    lines
        .reader
        .get_ref()
        .set_read_timeout(None)
        .map_err(|e| Failure::Lost(format!("cannot clear the read timeout: {e}")))?;

    // The server counts drops per connection.
    let dropped_before = report.dropped;
    while options.count.is_none_or(|count| report.frames < count) {
        let message = match lines.next_line() {
            Ok(Some(line)) => parse_line(line).map_err(fatal)?,
            Ok(None) => return Ok(Ended::Closed),
            Err(e) => return Err(e.into_failure()),
        };
        match message.kind.as_str() {
            "error" => return Err(Failure::Lost(refusal(&message.value))),
            "hello" => return Err(fatal("sent a second hello".to_owned())),
            // What follows would be binary, which this client never asks for.
            "encoding" => {
                return Err(fatal(
                    "switched encodings, which posed watch did not ask for (it reads NDJSON)"
                        .to_owned(),
                ))
            }
            "poses" => {
                check_poses(&message.value).map_err(fatal)?;
                report.frames += 1;
                if let Some(dropped) = message.value["dropped"].as_u64() {
                    report.dropped = dropped_before + dropped;
                }
            }
            // A message type of a later server: shown, not understood.
            _ => {}
        }
        print_message(&message, options, out).map_err(print_error)?;
    }
    Ok(Ended::Counted)
}

/// Reads lines of at most [`MAX_LINE_BYTES`].
struct LineReader {
    reader: BufReader<UnixStream>,
    line: Vec<u8>,
    /// When reading must have ended (the read timeout is set from it before each read);
    /// `None`: no limit, or the stream's own read timeout.
    deadline: Option<Instant>,
}

/// Why no line could be read.
#[derive(Debug)]
enum LineError {
    /// The read timeout passed.
    TimedOut,
    /// More than [`MAX_LINE_BYTES`] without a newline.
    TooLong,
    /// The connection ended inside a line.
    Truncated(usize),
    /// The connection broke.
    Broken(std::io::Error),
}

impl LineError {
    /// A line too long breaks the protocol; the others are a connection lost.
    fn into_failure(self) -> Failure {
        match self {
            Self::TooLong => Failure::Fatal(self.describe()),
            _ => Failure::Lost(self.describe()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::TimedOut => "the connection timed out".to_owned(),
            Self::TooLong => format!("a line longer than {MAX_LINE_BYTES} bytes"),
            Self::Truncated(bytes) => {
                format!("the connection ended inside a line ({bytes} bytes without a newline)")
            }
            Self::Broken(e) => format!("connection broken: {e}"),
        }
    }
}

impl LineReader {
    fn new(stream: UnixStream) -> Self {
        Self {
            reader: BufReader::new(stream),
            line: Vec::new(),
            deadline: None,
        }
    }

    /// The next line without its newline; `None` at the end of the stream.
    fn next_line(&mut self) -> std::result::Result<Option<&[u8]>, LineError> {
        self.line.clear();
        loop {
            if let (Some(deadline), true) = (self.deadline, self.reader.buffer().is_empty()) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(LineError::TimedOut);
                }
                self.reader
                    .get_ref()
                    .set_read_timeout(Some(left))
                    .map_err(LineError::Broken)?;
            }
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(LineError::TimedOut)
                }
                Err(e) => return Err(LineError::Broken(e)),
            };
            if available.is_empty() {
                return if self.line.is_empty() {
                    Ok(None)
                } else {
                    Err(LineError::Truncated(self.line.len()))
                };
            }
            let (taken, complete) = match available.iter().position(|b| *b == b'\n') {
                Some(newline) => (newline, true),
                None => (available.len(), false),
            };
            if self.line.len() + taken > MAX_LINE_BYTES {
                return Err(LineError::TooLong);
            }
            self.line.extend_from_slice(&available[..taken]);
            self.reader.consume(taken + usize::from(complete));
            if complete {
                return Ok(Some(&self.line));
            }
        }
    }
}

/// A line parsed: its JSON, its `type`, and the line itself for `--json`.
struct Message {
    value: Value,
    kind: String,
    line: String,
}

/// Parses one line into a JSON object with a string `type`.
fn parse_line(line: &[u8]) -> std::result::Result<Message, String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "sent a line that is not UTF-8 (byte {} of {}): {}",
            e.valid_up_to(),
            line.len(),
            quote(&String::from_utf8_lossy(line))
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "sent a line that is not JSON ({e}): \"{}\"",
            quote(text.trim_end_matches('\r'))
        )
    })?;
    let kind = match value.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(other) => {
            return Err(format!(
                "sent a message whose field `type` is {}, expected a string",
                describe(other)
            ))
        }
        None if value.is_object() => {
            return Err(format!(
                "sent a message without a `type`: \"{}\"",
                quote(text)
            ))
        }
        None => {
            return Err(format!(
                "sent {}, expected a JSON object (a message)",
                describe(&value)
            ))
        }
    };
    Ok(Message {
        value,
        kind,
        line: terminal_safe_json(text),
    })
}

/// A JSON line that prints as it is: the same JSON, with carriage returns and tabs
/// (whitespace between tokens: inside strings JSON has them escaped) dropped or made
/// spaces, and the characters a
/// terminal could act on that JSON allows raw inside strings (C1 controls, DEL, bidi and
/// other invisible format characters) written as `\u` escapes, which mean the same.
fn terminal_safe_json(text: &str) -> String {
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\r' => {}
            // Likewise only whitespace between tokens, where `\u0009` would not be JSON.
            '\t' => safe.push(' '),
            c if needs_escape(c) => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    safe.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => safe.push(c),
        }
    }
    safe
}

/// True for a character that is not printable as it is (Rust's `escape_debug` would
/// escape it), quotes and backslashes aside.
fn needs_escape(c: char) -> bool {
    !matches!(c, '"' | '\'' | '\\') && c.escape_debug().len() > 1
}

/// The error a server's error message gives.
fn refusal(message: &Value) -> String {
    format!(
        "the server refused us: {}",
        message["reason"]
            .as_str()
            .map_or_else(|| "(no reason given)".to_owned(), quote)
    )
}

/// `text` for a terminal and for quoting: what is not printable escaped (`\\u{1b}`), quotes
/// and backslashes too, at most [`QUOTED_CHARS`] characters.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len().min(4 * QUOTED_CHARS));
    for c in text.chars().take(QUOTED_CHARS) {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            c if needs_escape(c) => quoted.extend(c.escape_debug()),
            c => quoted.push(c),
        }
    }
    let total = text.chars().count();
    if total > QUOTED_CHARS {
        quoted.push_str(&format!("... ({total} characters)"));
    }
    quoted
}

/// A short description of a JSON value, for errors: its kind, and a scalar's value.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string \"{}\"", quote(s)),
        Value::Array(items) => format!("an array of {}", items.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// What a field must hold.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// An integer from 0 to 2^64 - 1.
    Unsigned,
    /// A number, or null (posed writes NaN and infinities as null).
    NumberOrNull,
    /// A string.
    Text,
    /// An array of this many numbers or nulls.
    Numbers(usize),
    /// An array.
    Array,
    /// An object.
    Object,
}

impl Kind {
    fn accepts(self, value: &Value) -> bool {
        match self {
            Self::Unsigned => value.is_u64(),
            Self::NumberOrNull => value.is_number() || value.is_null(),
            Self::Text => value.is_string(),
            Self::Numbers(n) => value.as_array().is_some_and(|items| {
                items.len() == n && items.iter().all(|v| Self::NumberOrNull.accepts(v))
            }),
            Self::Array => value.is_array(),
            Self::Object => value.is_object(),
        }
    }

    fn name(self) -> String {
        match self {
            Self::Unsigned => "an unsigned integer".to_owned(),
            Self::NumberOrNull => "a number or null".to_owned(),
            Self::Text => "a string".to_owned(),
            Self::Numbers(n) => format!("an array of {n} numbers"),
            Self::Array => "an array".to_owned(),
            Self::Object => "an object".to_owned(),
        }
    }
}

/// `object[key]`, of `kind`. `path` names the object in errors (`""` for the message,
/// `"camera."`, `"objects[2]."`), `message` the message ("hello", "poses").
fn field<'v>(
    message: &str,
    object: &'v Value,
    path: &str,
    key: &str,
    kind: Kind,
) -> std::result::Result<&'v Value, String> {
    match object.get(key) {
        Some(value) if kind.accepts(value) => Ok(value),
        Some(value) => Err(format!(
            "sent a {message} whose field `{path}{key}` is {}, expected {}",
            describe(value),
            kind.name()
        )),
        None => Err(format!(
            "sent a {message} without the field `{path}{key}` ({})",
            kind.name()
        )),
    }
}

/// The hello of protocol version [`PROTOCOL_VERSION`] in NDJSON, with its fields.
fn check_hello(hello: &Value) -> std::result::Result<(), String> {
    let version = field("hello", hello, "", "version", Kind::Unsigned)?;
    if version.as_u64() != Some(u64::from(PROTOCOL_VERSION)) {
        return Err(format!(
            "speaks pose stream protocol version {version}; this posed watch speaks version \
             {PROTOCOL_VERSION} (use the posed watch of the daemon's version)"
        ));
    }
    let encoding = field("hello", hello, "", "encoding", Kind::Text)?;
    if encoding != "ndjson" {
        return Err(format!(
            "announced the encoding {}; posed watch reads \"ndjson\"",
            describe(encoding)
        ));
    }
    field("hello", hello, "", "source", Kind::Text)?;
    let labels = field("hello", hello, "", "labels", Kind::Array)?;
    for (i, label) in labels.as_array().into_iter().flatten().enumerate() {
        if !label.is_string() {
            return Err(format!(
                "sent a hello whose field `labels[{i}]` is {}, expected a string",
                describe(label)
            ));
        }
    }
    let camera = field("hello", hello, "", "camera", Kind::Object)?;
    field("hello", camera, "camera.", "width", Kind::Unsigned)?;
    field("hello", camera, "camera.", "height", Kind::Unsigned)?;
    field("hello", camera, "camera.", "K", Kind::Numbers(9))?;
    Ok(())
}

/// A poses message with every field of protocol version [`PROTOCOL_VERSION`].
fn check_poses(poses: &Value) -> std::result::Result<(), String> {
    for key in [
        "frame",
        "t_capture_ns",
        "t_publish_ns",
        "t_capture_wall_ns",
        "t_publish_wall_ns",
        "pipeline_dropped",
        "dropped",
    ] {
        field("poses message", poses, "", key, Kind::Unsigned)?;
    }
    let latency = field("poses message", poses, "", "latency_ns", Kind::Object)?;
    for (stage, _) in StageLatencies::default().named() {
        field(
            "poses message",
            latency,
            "latency_ns.",
            stage,
            Kind::Unsigned,
        )?;
    }
    let objects = field("poses message", poses, "", "objects", Kind::Array)?;
    for (i, object) in objects.as_array().into_iter().flatten().enumerate() {
        let path = format!("objects[{i}].");
        if !object.is_object() {
            return Err(format!(
                "sent a poses message whose field `objects[{i}]` is {}, expected an object",
                describe(object)
            ));
        }
        for (key, kind) in [
            ("label", Kind::Text),
            ("obj_id", Kind::Unsigned),
            ("score", Kind::NumberOrNull),
            ("R", Kind::Numbers(9)),
            ("t_m", Kind::Numbers(3)),
            ("bbox", Kind::Numbers(4)),
        ] {
            field("poses message", object, &path, key, kind)?;
        }
    }
    Ok(())
}

fn print_message(
    message: &Message,
    options: WatchOptions,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if options.json {
        writeln!(out, "{}", message.line)
    } else {
        print_human(message, out)
    }
}

/// One checked message for people. Every string from the server goes through [`quote`].
fn print_human(message: &Message, out: &mut dyn Write) -> std::io::Result<()> {
    let value = &message.value;
    match message.kind.as_str() {
        "hello" => writeln!(
            out,
            "connected: posed protocol {}, source {}, camera {} x {}, {} objects known",
            value["version"],
            quote(value["source"].as_str().unwrap_or("?")),
            value["camera"]["width"],
            value["camera"]["height"],
            value["labels"].as_array().map_or(0, Vec::len)
        ),
        "poses" => {
            let ms = |key: &str| value["latency_ns"][key].as_f64().unwrap_or(0.0) / 1e6;
            let objects = value["objects"].as_array().map_or(&[][..], Vec::as_slice);
            writeln!(
                out,
                "frame {:>6}  {:>7.1} ms (infer {:.1} ms)  {} object(s)  dropped {} (pipeline {})",
                value["frame"],
                ms("total"),
                ms("detect")
                    + ms("init")
                    + ms("crop")
                    + ms("render")
                    + ms("coarse")
                    + ms("refiner")
                    + ms("update"),
                objects.len(),
                value["dropped"],
                value["pipeline_dropped"],
            )?;
            for object in objects {
                let t = |i: usize| object["t_m"][i].as_f64().unwrap_or(f64::NAN);
                writeln!(
                    out,
                    "  {:<12} score {:.3}  t = ({:+.3}, {:+.3}, {:+.3}) m",
                    quote(object["label"].as_str().unwrap_or("?")),
                    object["score"].as_f64().unwrap_or(f64::NAN),
                    t(0),
                    t(1),
                    t(2)
                )?;
            }
            Ok(())
        }
        _ => writeln!(out, "{}", terminal_safe_json(&value.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::thread::JoinHandle;

    use super::*;

    const HELLO: &str = "{\"type\":\"hello\",\"version\":1,\"encoding\":\"ndjson\",\
        \"encodings\":[\"ndjson\",\"binary\"],\"source\":\"/dev/video0\",\"labels\":[\"obj_000001\"],\
        \"camera\":{\"width\":640,\"height\":480,\"K\":[615.0,0.0,320.0,0.0,615.0,240.0,0.0,0.0,1.0]}}\n";

    fn poses(frame: u64) -> String {
        format!(
            "{{\"type\":\"poses\",\"frame\":{frame},\"t_capture_ns\":1,\"t_publish_ns\":2,\
             \"t_capture_wall_ns\":3,\"t_publish_wall_ns\":4,\"latency_ns\":{{\"capture\":1,\
             \"queue\":1,\"detect\":1,\"init\":1,\"crop\":1,\"render\":1,\"coarse\":1,\
             \"refiner\":1,\"update\":1,\"publish\":1,\"total\":9}},\"pipeline_dropped\":0,\
             \"objects\":[{{\"label\":\"obj_000001\",\"obj_id\":1,\"score\":null,\
             \"R\":[1,0,0,0,1,0,0,0,1],\"t_m\":[0.1,0.2,1.5],\"bbox\":[1,2,3,4]}}],\"dropped\":2}}\n"
        )
    }

    /// A fake server on a real socket: accepts one subscriber, lets `script` talk to it,
    /// then closes the connection.
    struct FakeServer {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeServer {
        fn start(script: impl FnOnce(UnixStream) + Send + 'static) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let socket = dir.path().join("poses.sock");
            let listener = UnixListener::bind(&socket).expect("bind");
            let thread = std::thread::spawn(move || {
                if let Ok((stream, _)) = listener.accept() {
                    script(stream);
                }
            });
            Self {
                _dir: dir,
                socket,
                thread: Some(thread),
            }
        }

        /// A server that sends `bytes`, then waits for the client to hang up.
        fn sending(bytes: impl Into<Vec<u8>>) -> Self {
            let bytes = bytes.into();
            Self::start(move |mut stream| {
                let _ = stream.write_all(&bytes);
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = stream.read(&mut [0u8; 1]);
            })
        }

        fn watch(&self, json: bool, count: Option<u64>) -> (Result<WatchReport>, String) {
            let mut out = Vec::new();
            let result = watch_within(
                &self.socket,
                WatchOptions {
                    json,
                    count,
                    follow: false,
                },
                Duration::from_millis(300),
                &mut out,
                &mut Vec::new(),
            );
            (result, String::from_utf8(out).expect("UTF-8 output"))
        }

        fn error(&self) -> String {
            let (result, _) = self.watch(false, None);
            let message = result.expect_err("an error").to_string();
            assert!(
                message.contains(&*self.socket.to_string_lossy()),
                "the error names the socket: {message}"
            );
            message
        }
    }

    impl Drop for FakeServer {
        fn drop(&mut self) {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    #[test]
    fn a_valid_stream_is_printed_and_counted() {
        let server = FakeServer::sending(format!("{HELLO}{}{}", poses(1), poses(2)));
        let (report, out) = server.watch(false, None);
        assert_eq!(
            report.expect("valid"),
            WatchReport {
                frames: 2,
                dropped: 2
            }
        );
        assert!(
            out.starts_with("connected: posed protocol 1, source /dev/video0"),
            "{out}"
        );
        assert!(out.contains("obj_000001"), "{out}");

        let server = FakeServer::sending(format!("{HELLO}{}{}", poses(1), poses(2)));
        let (report, out) = server.watch(true, Some(1));
        assert_eq!(report.expect("valid").frames, 1);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(format!("{}\n", lines[0]), HELLO);
    }

    #[test]
    fn an_endless_line_is_refused_once_it_passes_the_limit() {
        let server = FakeServer::start(|mut stream| {
            let _ = stream.write_all(HELLO.as_bytes());
            let chunk = vec![b'A'; 64 * 1024];
            // Until the client gives up and the writes fail.
            for _ in 0..1024 {
                if stream.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        let message = server.error();
        assert!(
            message.contains(&format!("a line longer than {MAX_LINE_BYTES} bytes")),
            "{message}"
        );
    }

    #[test]
    fn a_server_that_sends_no_hello_or_accepts_nobody_times_out() {
        // The server's silence outlasts the bound by far: a generous limit still tells
        // "gave up" from "waited for the server" on a busy machine or under qemu.
        let server = FakeServer::start(|mut stream| {
            // Silent until the client hangs up (a read of 0 bytes), or 30 s.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = stream.read(&mut [0u8; 1]);
        });
        let started = Instant::now();
        let message = server.error();
        assert!(message.contains("no hello within 300 ms"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(10));

        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("full.sock");
        let (_listener, _queued) = unix::tests::full_listener(&socket);
        let started = Instant::now();
        let message = watch_within(
            &socket,
            WatchOptions {
                json: true,
                count: None,
                follow: false,
            },
            Duration::from_millis(300),
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .expect_err("a full queue")
        .to_string();
        assert!(
            message.contains("full.sock") && message.contains("stopped accepting"),
            "{message}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// Serves one connection per script, in order, on a socket that appears only after
    /// `absent_for` (a posed starting after its client).
    fn serve_in_turn(
        socket: PathBuf,
        absent_for: Duration,
        scripts: Vec<Box<dyn FnOnce(UnixStream) + Send>>,
    ) -> JoinHandle<()> {
        let bind = move || UnixListener::bind(&socket).expect("bind");
        let listening = absent_for.is_zero().then(&bind);
        std::thread::spawn(move || {
            let listener = listening.unwrap_or_else(|| {
                std::thread::sleep(absent_for);
                bind()
            });
            for script in scripts {
                if let Ok((stream, _)) = listener.accept() {
                    script(stream);
                }
            }
        })
    }

    fn follow(socket: &Path, count: u64) -> (Result<WatchReport>, String, String) {
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        let options = WatchOptions {
            json: true,
            count: Some(count),
            follow: true,
        };
        let result = watch_within(
            socket,
            options,
            Duration::from_secs(2),
            &mut out,
            &mut notes,
        );
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8");
        (result, text(out), text(notes))
    }

    #[test]
    fn follow_waits_for_posed_and_reconnects_after_it_stops_or_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("poses.sock");
        let send = |text: String| -> Box<dyn FnOnce(UnixStream) + Send> {
            Box::new(move |mut stream| {
                let _ = stream.write_all(text.as_bytes());
            })
        };
        let server = serve_in_turn(
            socket.clone(),
            Duration::from_millis(300),
            vec![
                // Two frames, then posed stops.
                send(format!("{HELLO}{}{}", poses(1), poses(2))),
                // A posed with no room for another subscriber.
                send("{\"type\":\"error\",\"reason\":\"too many subscribers\"}\n".into()),
                // posed again (its frame numbers start over), which stops again...
                send(format!("{HELLO}{}", poses(0))),
                // ... and comes back.
                send(format!("{HELLO}{}", poses(0))),
            ],
        );
        let (result, out, notes) = follow(&socket, 4);
        server.join().expect("server");
        let report = result.expect("followed");
        // Each connection's server dropped 2 for this subscriber.
        assert_eq!(
            report,
            WatchReport {
                frames: 4,
                dropped: 6
            }
        );
        assert_eq!(out.matches("\"type\":\"hello\"").count(), 3, "{out}");
        assert_eq!(out.matches("\"type\":\"poses\"").count(), 4, "{out}");
        // Once per outage, however many attempts it took: the second stop is said again.
        for (reason, times) in [
            ("cannot connect", 1),
            ("posed closed the stream", 2),
            ("too many subscribers", 1),
        ] {
            assert_eq!(
                notes.matches(reason).count(),
                times,
                "{reason:?} {times} time(s) in {notes}"
            );
        }
        assert!(notes.contains("poses.sock"), "{notes}");
    }

    #[test]
    fn follow_still_ends_on_a_stream_that_breaks_the_protocol() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("poses.sock");
        let server = serve_in_turn(
            socket.clone(),
            Duration::ZERO,
            vec![Box::new(|mut stream| {
                let _ = stream.write_all(format!("{HELLO}{{\"type\":\"poses\"}}\n").as_bytes());
            })],
        );
        let (result, _, notes) = follow(&socket, 4);
        server.join().expect("server");
        let message = result
            .expect_err("a poses message without its fields")
            .to_string();
        assert!(
            message.contains("poses.sock") && message.contains("frame"),
            "{message}"
        );
        assert!(notes.is_empty(), "{notes}");
    }

    #[test]
    fn a_hello_dribbled_a_byte_at_a_time_is_still_bounded() {
        let server = FakeServer::start(|mut stream| {
            for byte in HELLO.bytes().take(20) {
                if stream.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let started = Instant::now();
        let message = server.error();
        assert!(message.contains("no hello within 300 ms"), "{message}");
        // The dribble takes 20 s: well under that is bounded.
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn silence_between_frames_is_not_a_timeout() {
        let frame = poses(1);
        let server = FakeServer::start(move |mut stream| {
            let _ = stream.write_all(HELLO.as_bytes());
            // Longer than the hello's time limit.
            std::thread::sleep(Duration::from_millis(800));
            let _ = stream.write_all(frame.as_bytes());
        });
        let (report, _) = server.watch(false, Some(1));
        assert_eq!(report.expect("a frame after a pause").frames, 1);
    }

    #[test]
    fn bad_hellos_and_messages_are_refused_naming_what_is_wrong() {
        let good = poses(1);
        let cases: Vec<(String, &str)> = vec![
            (
                HELLO.replace("\"version\":1", "\"version\":99"),
                "version 99",
            ),
            ("{\"type\":\"hello\"}\n".to_owned(), "`version`"),
            (
                HELLO.replace("\"version\":1", "\"version\":\"1\""),
                "`version` is the string \"1\"",
            ),
            (
                HELLO.replace("\"width\":640", "\"width\":-640"),
                "`camera.width`",
            ),
            (HELLO.replace(",1.0]}", "]}"), "`camera.K` is an array of 8"),
            (HELLO.replace("[\"obj_000001\"]", "[7]"), "`labels[0]`"),
            (
                HELLO.replace("\"ndjson\",\"encodings", "\"binary\",\"encodings"),
                "encoding",
            ),
            (good.clone(), "type \"poses\" before its hello"),
            (String::new(), "without sending a hello"),
            (
                format!("{HELLO}{}", good.replace("\"frame\":1", "\"frame\":\"1\"")),
                "`frame` is the string \"1\"",
            ),
            (
                format!(
                    "{HELLO}{}",
                    good.replace("\"objects\":[", "\"objects\":7,\"x\":[")
                ),
                "`objects` is the number 7",
            ),
            (
                format!(
                    "{HELLO}{}",
                    good.replace("\"t_m\":[0.1,0.2,1.5]", "\"t_m\":\"x\"")
                ),
                "`objects[0].t_m`",
            ),
            (
                format!("{HELLO}{}", good.replace(",\"dropped\":2", "")),
                "`dropped`",
            ),
            (
                format!("{HELLO}{}", good.replace("\"total\":9", "\"total\":-1")),
                "`latency_ns.total`",
            ),
            (
                format!("{HELLO}[1,2,3]\n"),
                "an array of 3, expected a JSON object",
            ),
            (format!("{HELLO}{{\"frame\":1}}\n"), "without a `type`"),
            (format!("{HELLO}{HELLO}"), "second hello"),
            (
                format!("{HELLO}{{\"type\":\"encoding\",\"encoding\":\"binary\",\"version\":1}}\n"),
                "switched encodings",
            ),
            (
                format!("{HELLO}{{\"type\":\"poses\",\"fra"),
                "ended inside a line",
            ),
            (
                format!("{HELLO}{{\"type\":\"poses\",\"x\":\"\u{0}\"}}\n"),
                "not JSON",
            ),
            (
                "{\"type\":\"error\",\"reason\":\"too many subscribers (64)\"}\n".to_owned(),
                "refused us: too many subscribers",
            ),
        ];
        for (sent, expected) in cases {
            let server = FakeServer::sending(sent.clone());
            let message = server.error();
            assert!(
                message.contains(expected),
                "{sent:?}\nexpected {expected:?} in: {message}"
            );
        }
    }

    #[test]
    fn nothing_the_server_sends_reaches_the_terminal_raw() {
        let mut not_utf8 = HELLO.as_bytes().to_vec();
        not_utf8.extend_from_slice(b"{\"type\":\"poses\",\"x\":\"\xff\xfe\x1b[2J\"}\n");
        let server = FakeServer::sending(not_utf8);
        let message = server.error();
        assert!(message.contains("not UTF-8 (byte 21 of"), "{message}");
        assert!(!message.contains('\u{1b}'), "{message:?}");

        let server = FakeServer::sending(format!(
            "{HELLO}{{\"type\":\"error\",\"reason\":\"\\u001b[2J\\u001b[31mPWNED\\u0007{}\"}}\n",
            "x".repeat(1000)
        ));
        let message = server.error();
        assert!(
            message.contains("\\u{1b}[2J") && message.contains("PWNED"),
            "{message}"
        );
        assert!(message.contains("(1015 characters)"), "{message}");
        assert!(!message.chars().any(char::is_control), "{message:?}");

        let evil = HELLO
            .replace("/dev/video0", "\\u001b]0;title\\u0007\\u001b[2Jevil")
            .replace("[\"obj_000001\"]", "[\"\\u001b[31mred\"]");
        let frame = poses(1).replace("\"label\":\"obj_000001\"", "\"label\":\"\\u001b[31mred\"");
        let server = FakeServer::sending(format!(
            "{evil}{frame}{{\"type\":\"later\",\"x\":\"\\u001b\"}}\n"
        ));
        let (report, out) = server.watch(false, None);
        report.expect("valid, if odd");
        assert!(
            out.contains("evil") && out.contains("red") && out.contains("later"),
            "{out}"
        );
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");

        // Raw in --json: carriage returns between tokens, C1 controls and bidi overrides
        // inside strings (JSON allows them there).
        let frame = poses(1)
            .replace(',', ",\r")
            .replace("obj_000001", "\u{9b}31m\u{202e}x");
        let server = FakeServer::sending(format!("{HELLO}\r{frame}"));
        let (report, out) = server.watch(true, None);
        report.expect("valid JSON");
        assert!(
            !out.contains(['\r', '\u{9b}', '\u{202e}']) && out.contains("\\u009b31m\\u202ex"),
            "{out:?}"
        );
        let printed: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("still JSON"))
            .collect();
        assert_eq!(printed[1]["objects"][0]["label"], "\u{9b}31m\u{202e}x");
    }
}
