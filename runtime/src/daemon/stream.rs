//! The pose stream server: a Unix stream socket, a hello on connect, then one message per
//! frame to every subscriber: a JSON line, or a binary message for a subscriber that asked
//! for the binary encoding with its first line.
//!
//! Each subscriber has a bounded queue of message buffers (allocated when it connects) and
//! a writer thread. [`StreamServer::publish`] only copies the frame's bytes into each
//! queue under that queue's lock, dropping the subscriber's oldest frame when the queue is
//! full: a slow subscriber loses frames (counted, and reported to it in `dropped`), and
//! neither it nor anyone else ever makes the pipeline wait. A subscriber whose socket
//! accepts nothing for `stall_timeout_ms`, that sends anything but an optional first line
//! naming the encoding (or leaves a line unfinished for `stall_timeout_ms`), or that hangs
//! up, is disconnected by its writer, which looks at its subscriber every
//! [`WRITER_TICK`] even while no frames flow: a subscriber gone while the camera is being
//! reopened frees its place at once.
//!
//! `<socket>.lock` beside the socket is locked (`flock`) from before the socket is bound
//! until after it is removed: two posed starting on one path cannot both take a stale
//! socket for theirs to replace, and remove each other's.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::message::{
    encode_binary_error, finish_for_subscriber, parse_encoding_request, set_binary_dropped,
    Encoding, BINARY_SWITCH_LINE, MAX_MESSAGE_BYTES,
};
use super::unix;
use crate::config::StreamConfig;
use crate::{Error, Result};

/// Bytes a subscriber may send before a newline (the optional encoding line).
const MAX_CLIENT_LINE: usize = 64;

/// The kernel's send buffer per subscriber. Kept small (the kernel's default is about
/// 200 KiB) so that frames wait in posed's own queue, where a slow subscriber's losses are
/// counted and reported to it, and a subscriber that stops reading is noticed within a
/// few dozen frames rather than a few hundred.
const SEND_BUFFER_BYTES: usize = 32 * 1024;

/// How often an idle writer looks at what its subscriber sent, whether it hung up, and at
/// shutdown.
const WRITER_TICK: Duration = Duration::from_millis(50);

/// At most one log line per this long about failing accepts: at the limit of open files
/// every accept fails, and the accept loop retries ten times a second.
const ACCEPT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counters of the stream, for the status line and tests.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Subscribers connected now.
    pub subscribers: AtomicU64,
    /// Of those, the ones that switched to the binary encoding.
    pub binary_subscribers: AtomicU64,
    /// Subscribers ever accepted (counted once [`StreamServer::publish`] reaches them).
    pub accepted: AtomicU64,
    /// Connections refused (too many subscribers).
    pub refused: AtomicU64,
    /// Subscribers disconnected for sending garbage.
    pub kicked_garbage: AtomicU64,
    /// Subscribers disconnected for not reading.
    pub kicked_stalled: AtomicU64,
    /// Frames dropped from subscriber queues, all subscribers together.
    pub frames_dropped: AtomicU64,
}

struct QueueState {
    /// Filled buffers, oldest first.
    filled: VecDeque<Vec<u8>>,
    /// Empty buffers with [`MAX_MESSAGE_BYTES`] of capacity.
    free: Vec<Vec<u8>>,
    /// Frames this subscriber lost since it connected.
    dropped: u64,
    /// The encoding of the frames in `filled` and of every frame queued from now on.
    encoding: Encoding,
    closed: bool,
}

/// One subscriber's queue, shared by the publisher and its writer thread.
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

impl Queue {
    fn new(frames: usize) -> Self {
        Self {
            state: Mutex::new(QueueState {
                filled: VecDeque::with_capacity(frames),
                free: (0..frames)
                    .map(|_| Vec::with_capacity(MAX_MESSAGE_BYTES))
                    .collect(),
                dropped: 0,
                encoding: Encoding::Ndjson,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A writer that panicked mid-update leaves nothing half-written that matters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies in the frame in this subscriber's encoding, dropping the oldest frame when
    /// full. Returns true if one was dropped.
    fn push(&self, frame: &EncodedFrame<'_>) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        let body = match state.encoding {
            Encoding::Ndjson => frame.ndjson_body,
            Encoding::Binary => frame.binary,
        };
        let (mut buffer, dropped) = match state.free.pop() {
            Some(buffer) => (buffer, false),
            None => match state.filled.pop_front() {
                Some(oldest) => {
                    state.dropped += 1;
                    (oldest, true)
                }
                // A queue of zero frames: config validation refuses it.
                None => return false,
            },
        };
        buffer.clear();
        buffer.extend_from_slice(body);
        state.filled.push_back(buffer);
        drop(state);
        self.ready.notify_one();
        dropped
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Switches the queue to the binary encoding. Frames still queued as JSON are
    /// dropped (and counted): after the switch line the subscriber reads only binary.
    /// Returns how many were dropped.
    fn switch_to_binary(&self) -> u64 {
        let mut state = self.lock();
        state.encoding = Encoding::Binary;
        let mut dropped = 0;
        while let Some(buffer) = state.filled.pop_front() {
            dropped += 1;
            state.free.push(buffer);
        }
        state.dropped += dropped;
        dropped
    }
}

/// One frame in both encodings, made once by the publisher: the JSON body up to
/// `"dropped":` ([`encode_poses_body`](super::message::encode_poses_body)) and the binary
/// message ([`encode_poses_binary`](super::message::encode_poses_binary)). Each
/// subscriber's writer fills in its own `dropped`.
#[derive(Debug, Clone, Copy)]
pub struct EncodedFrame<'a> {
    /// The JSON body.
    pub ndjson_body: &'a [u8],
    /// The binary message.
    pub binary: &'a [u8],
}

struct Subscriber {
    queue: Arc<Queue>,
    writer: JoinHandle<()>,
}

/// The listening socket and its subscribers.
pub struct StreamServer {
    path: PathBuf,
    /// Device and inode of the socket file this server bound: at shutdown the file is
    /// removed only if it is still that one (another posed may have replaced it).
    socket_file: Option<(u64, u64)>,
    /// `<socket>.lock`, held until the socket file is removed.
    lock: Option<SocketLock>,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// What the server's threads share; after [`StreamServer::shutdown`], its final counters.
pub struct Shared {
    config: StreamConfig,
    hello: Vec<u8>,
    subscribers: Mutex<Vec<Subscriber>>,
    stats: StreamStats,
    stopping: AtomicBool,
}

impl Shared {
    /// The counters.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl StreamServer {
    /// Takes `<socket>.lock` (refusing when another posed holds it), binds the socket
    /// (replacing a stale one left by a crash, refusing to replace a live one or a file
    /// that is not a socket), sets its mode and group, and starts accepting subscribers.
    /// `hello` is the first line every subscriber gets. Nothing here waits: a live
    /// listener that accepts nobody is refused at once.
    ///
    /// # Errors
    /// [`Error::Stream`] naming the socket path.
    pub fn bind(config: &StreamConfig, hello: Vec<u8>) -> Result<Self> {
        let path = config.socket.clone();
        let error = |detail: String| Error::Stream {
            peer: path.display().to_string(),
            detail,
        };
        check_socket_folder(&path).map_err(error)?;
        // Dropped on every error below, which removes the lock file again.
        let lock = SocketLock::take(&path).map_err(error)?;
        remove_stale_socket(&path).map_err(error)?;
        let listener = UnixListener::bind(&path).map_err(|e| error(format!("cannot bind: {e}")))?;
        let socket_file = file_identity(&path);
        let prepared = (|| {
            let mode = config.mode_bits().ok_or_else(|| {
                format!(
                    "stream.mode \"{}\" is not octal permission bits",
                    config.mode
                )
            })?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot set mode {mode:o}: {e}"))?;
            if let Some(group) = &config.group {
                set_group(&path, group)?;
            }
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("cannot set non-blocking: {e}"))
        })();
        if let Err(detail) = prepared {
            // Nobody will serve it: leave no socket file behind.
            remove_if_same_file(&path, socket_file);
            return Err(error(detail));
        }
        let shared = Arc::new(Shared {
            config: config.clone(),
            hello,
            subscribers: Mutex::new(Vec::with_capacity(config.max_subscribers)),
            stats: StreamStats::default(),
            stopping: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("posed-accept".to_owned())
                .spawn(move || accept_loop(&listener, &shared))
                .map_err(|e| error(format!("cannot start the accept thread: {e}")))?
        };
        Ok(Self {
            path,
            socket_file,
            lock: Some(lock),
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The counters.
    pub fn stats(&self) -> &StreamStats {
        &self.shared.stats
    }

    /// The server's shared state, for other threads to read its counters.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Queues one frame for every subscriber, in its encoding. Never blocks on a
    /// subscriber; allocates nothing.
    pub fn publish(&self, frame: &EncodedFrame<'_>) {
        let subscribers = self
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for subscriber in subscribers.iter() {
            if subscriber.queue.push(frame) {
                self.shared
                    .stats
                    .frames_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stops accepting, lets every writer send what it has queued (for at most
    /// `deadline`), closes the connections and removes the socket file. Returns the
    /// final counters.
    pub fn shutdown(mut self, deadline: Duration) -> Arc<Shared> {
        self.stop(deadline);
        Arc::clone(&self.shared)
    }

    fn stop(&mut self, deadline: Duration) {
        // Unlinked while the lock is held and the listener still lives: no other posed
        // can have replaced it meanwhile, so the file at the path is still ours (later,
        // one could, and a reused inode number would fool the identity check).
        remove_if_same_file(&self.path, self.socket_file);
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let subscribers: Vec<Subscriber> = std::mem::take(
            &mut *self
                .shared
                .subscribers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for subscriber in &subscribers {
            subscriber.queue.close();
        }
        let until = Instant::now() + deadline;
        for subscriber in subscribers {
            // A writer stuck on a stalled peer gives up at its send timeout; past the
            // deadline it is left to end with the process.
            while !subscriber.writer.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if subscriber.writer.is_finished() {
                let _ = subscriber.writer.join();
            }
        }
        // The listener closed with the accept thread; the socket file is gone.
        drop(self.lock.take());
    }
}

/// Device and inode of the file at `path` (not following a link).
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Removes `path` if it is still the file `identity` names: a socket another process
/// bound there since (a second posed started while this one was stopping) is not ours to
/// delete.
fn remove_if_same_file(path: &Path, identity: Option<(u64, u64)>) {
    if identity.is_some() && file_identity(path) == identity {
        let _ = std::fs::remove_file(path);
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.stop(Duration::from_millis(200));
        }
    }
}

/// The socket's folder must exist: posed creates no folders (under systemd, the unit's
/// RuntimeDirectory= makes /run/posed before posed starts).
///
/// # Errors
/// What is wrong with the folder, for a message about the socket.
pub(crate) fn check_socket_folder(path: &Path) -> std::result::Result<(), String> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    match std::fs::metadata(parent) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a folder", parent.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(format!(
            "its folder {} does not exist (systemd's RuntimeDirectory=posed creates \
             /run/posed)",
            parent.display()
        )),
        Err(e) => Err(format!(
            "cannot inspect its folder {}: {e}",
            parent.display()
        )),
    }
}

/// `<socket>.lock`, locked: while a posed holds it, no other posed checks the socket for
/// staleness, removes it or binds it. Dropping it removes the file, then unlocks.
#[derive(Debug)]
struct SocketLock {
    file: File,
    path: PathBuf,
}

impl SocketLock {
    /// Locks `<socket>.lock`, creating it, and writes this process's id into it (for the
    /// message another posed gives).
    fn take(socket: &Path) -> std::result::Result<Self, String> {
        let mut path = socket.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        // The holder removes the file before it unlocks: a lock taken on the file it
        // removed, opened just before, serializes nothing, so it is taken again on the
        // file now at the path.
        let open_error =
            |e: std::io::Error| format!("cannot open its lock file {}: {e}", path.display());
        for _ in 0..5 {
            // Open an existing file without O_CREAT: with fs.protected_regular (systemd's
            // default) an O_CREAT open of another user's file in a sticky folder such as
            // /tmp fails even for root, and a stale lock would block every start.
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(&path)
                    {
                        Ok(file) => file,
                        // Another process made it meanwhile: open that one.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(open_error(e)),
                    }
                }
                Err(e) => return Err(open_error(e)),
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let holder = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|text| text.trim().parse::<u32>().ok())
                        .map_or_else(|| "a process".to_owned(), |pid| format!("pid {pid}"));
                    return Err(format!(
                        "another posed ({holder}) holds its lock file {}: it serves this socket \
                         or is starting on it",
                        path.display()
                    ));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(format!("cannot lock {}: {e}", path.display()))
                }
            }
            let locked = file.metadata().ok().map(|m| (m.dev(), m.ino()));
            if locked.is_some() && locked == file_identity(&path) {
                let mut writer = &file;
                // Only for messages: a lock without its pid works the same.
                let _ = file
                    .set_len(0)
                    .and_then(|()| writeln!(writer, "{}", std::process::id()));
                return Ok(Self { file, path });
            }
        }
        Err(format!(
            "its lock file {} keeps being replaced by other processes",
            path.display()
        ))
    }
}

impl Drop for SocketLock {
    fn drop(&mut self) {
        let locked = self.file.metadata().ok().map(|m| (m.dev(), m.ino()));
        remove_if_same_file(&self.path, locked);
        // `file` closes after this, which unlocks.
    }
}

/// Removes `path` if it is a socket nobody listens on. Never waits: the connect that
/// probes it does not wait for room in a listener's queue.
fn remove_stale_socket(path: &Path) -> std::result::Result<(), String> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot inspect: {e}")),
    };
    if !metadata.file_type().is_socket() {
        return Err("exists and is not a socket; not replacing it".to_owned());
    }
    match unix::connect(path, None) {
        Ok(_) => Err(
            "a process listens on it (another posed, or a posed from before the lock file); \
             not replacing it"
                .to_owned(),
        ),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Err(
            "a process listens on it but accepts nobody (its queue of connections is full: \
             another posed that hangs?); not replacing it"
                .to_owned(),
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket left by a crash: {e}")),
        Err(e) => Err(format!("exists and cannot be checked: {e}")),
    }
}

fn set_group(path: &Path, group: &str) -> std::result::Result<(), String> {
    let gid = unix::group_id(group).map_err(|reason| format!("stream.group: {reason}"))?;
    std::os::unix::fs::lchown(path, None, Some(gid))
        .map_err(|e| format!("cannot give the socket to group \"{group}\": {e}"))
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    let mut failures = Throttle::new(ACCEPT_FAILURE_LOG_INTERVAL);
    while !shared.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                next_id += 1;
                accept(stream, next_id, shared);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                match failures.admit(Instant::now()) {
                    Some(0) => tracing::warn!("pose stream: accept failed: {e}"),
                    Some(more) => tracing::warn!(
                        "pose stream: accept failed: {e} ({more} more failures since the last \
                         report)"
                    ),
                    None => {}
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Lets one event in per interval and counts the others.
#[derive(Debug)]
struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(events held back since the last one let in)` when an event at `now` is let
    /// in, `None` when it is held back.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.interval)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Registers a new subscriber. The subscriber list's lock, which `publish` takes for every
/// frame, is held only to count and to add: the queue, the writer thread and a refusal
/// are made without it, so connecting clients never delay frames. Only this (the accept)
/// thread adds subscribers, so the count cannot change in between.
fn accept(mut stream: UnixStream, id: u64, shared: &Arc<Shared>) {
    let full = {
        let mut subscribers = shared.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        // Forget writers that ended.
        subscribers.retain(|s| !s.writer.is_finished());
        subscribers.len() >= shared.config.max_subscribers
    };
    if full {
        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = writeln!(
            stream,
            "{{\"type\":\"error\",\"reason\":\"too many subscribers ({}, stream.max_subscribers)\"}}",
            shared.config.max_subscribers
        );
        return;
    }
    let queue = Arc::new(Queue::new(shared.config.queue_frames));
    // Counted before the writer starts, so that its end can never be counted first.
    shared.stats.subscribers.fetch_add(1, Ordering::Relaxed);
    let writer = {
        let queue = Arc::clone(&queue);
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name(format!("posed-sub-{id}"))
            .spawn(move || {
                let peer = peer_name(&stream, id);
                match serve(&stream, &queue, &shared) {
                    Ok(()) => tracing::info!("pose stream: {peer} left"),
                    Err(reason) => tracing::info!("pose stream: {peer} disconnected: {reason}"),
                }
                queue.close();
                let _ = stream.shutdown(std::net::Shutdown::Both);
                if queue.lock().encoding == Encoding::Binary {
                    shared
                        .stats
                        .binary_subscribers
                        .fetch_sub(1, Ordering::Relaxed);
                }
                shared.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
            })
    };
    match writer {
        Ok(writer) => {
            shared
                .subscribers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Subscriber { queue, writer });
            shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            shared.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("pose stream: cannot start a writer for subscriber {id}: {e}");
        }
    }
}

fn set_send_buffer(stream: &UnixStream, bytes: usize) {
    let value = bytes as libc::c_int;
    // SAFETY: the fd is a connected socket owned by `stream`; `value` is a c_int that
    // lives across the call and its size is passed. A failure leaves the default, which
    // only delays noticing a stalled subscriber.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// `subscriber 3 (pid 1234)`.
fn peer_name(stream: &UnixStream, id: u64) -> String {
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a connected Unix socket owned by `stream`; `credentials` and `len`
    // are writable and `len` is the size of `credentials`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc == 0 && credentials.pid > 0 {
        format!("subscriber {id} (pid {})", credentials.pid)
    } else {
        format!("subscriber {id}")
    }
}

/// What a subscriber sent so far.
struct ClientInput {
    line: heapless::Vec<u8, MAX_CLIENT_LINE>,
    lines: usize,
    /// When the first byte of the unfinished line arrived.
    line_started: Option<Instant>,
    /// How long a line may stay unfinished: a peer that sends a few bytes and no newline
    /// (a TLS or HTTP client, say) is not left connected for ever.
    line_deadline: Duration,
    /// The peer closed its sending side.
    closed: bool,
}

/// What [`ClientInput::poll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Nothing new.
    Nothing,
    /// The first line, complete.
    Encoding(Encoding),
    /// The peer closed its socket: nobody reads any more.
    HungUp,
}

impl ClientInput {
    fn new(line_deadline: Duration) -> Self {
        Self {
            line: heapless::Vec::new(),
            lines: 0,
            line_started: None,
            line_deadline,
            closed: false,
        }
    }

    /// Reads what the peer sent, without blocking, and whether it hung up. Accepts one
    /// first line naming the encoding, returned once it is complete; anything else,
    /// and a line left unfinished for longer than `line_deadline`, is garbage.
    /// Allocates nothing unless it finds garbage.
    fn poll(&mut self, stream: &UnixStream) -> std::result::Result<Input, String> {
        let mut requested = Input::Nothing;
        if !self.closed {
            requested = self.read(stream)?;
        }
        if requested == Input::HungUp || (self.closed && peer_hung_up(stream)) {
            return Ok(Input::HungUp);
        }
        if let Some(started) = self.line_started {
            if started.elapsed() >= self.line_deadline {
                return Err(format!(
                    "sent {} bytes (\"{}\") and no newline for {} ms (stream.stall_timeout_ms); \
                     a subscriber may only send one line naming the encoding (\"ndjson\" or \
                     \"binary\")",
                    self.line.len(),
                    String::from_utf8_lossy(&self.line).escape_debug(),
                    self.line_deadline.as_millis()
                ));
            }
        }
        Ok(requested)
    }

    fn read(&mut self, stream: &UnixStream) -> std::result::Result<Input, String> {
        let mut requested = Input::Nothing;
        let mut buffer = [0u8; 256];
        loop {
            // SAFETY: `buffer` is writable for its length; MSG_DONTWAIT keeps the call from
            // blocking, so the writer never waits on its peer's input.
            let n = unsafe {
                libc::recv(
                    stream.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n == 0 {
                // The peer closed its sending side (e.g. `socat -u`): it may still read
                // (and then gets NDJSON: a line it never finished cannot be finished).
                self.closed = true;
                self.line.clear();
                self.line_started = None;
                return Ok(requested);
            }
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(requested),
                    // A peer that closed with our bytes unread in its socket (the hello,
                    // say) leaves a reset rather than an end of stream: it hung up.
                    ErrorKind::ConnectionReset => {
                        self.closed = true;
                        Ok(Input::HungUp)
                    }
                    _ => Err(format!("read failed: {e}")),
                };
            }
            for &byte in &buffer[..n as usize] {
                if byte == b'\n' {
                    requested = Input::Encoding(self.end_line()?);
                    self.line_started = None;
                } else if self.line.push(byte).is_err() {
                    return Err(format!(
                        "sent {MAX_CLIENT_LINE} bytes without a newline; a subscriber may only \
                         send one line naming the encoding (\"ndjson\" or \"binary\")"
                    ));
                } else if self.line_started.is_none() {
                    self.line_started = Some(Instant::now());
                }
            }
        }
    }

    fn end_line(&mut self) -> std::result::Result<Encoding, String> {
        self.lines += 1;
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if self.lines == 1 {
            parse_encoding_request(&line)
        } else {
            Err(format!(
                "sent \"{}\" after its first line; a subscriber may only send one first line \
                 naming the encoding",
                line.trim().escape_debug()
            ))
        }
    }
}

/// True when the peer has closed its socket (both directions): POLLHUP, which a peer that
/// only shut down its sending side does not raise.
fn peer_hung_up(stream: &UnixStream) -> bool {
    let mut poll = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call, and a timeout of 0: poll does not wait.
    let rc = unsafe { libc::poll(&mut poll, 1, 0) };
    rc > 0 && poll.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// The writer of one subscriber: the hello, then queued frames, until the queue closes or
/// the peer misbehaves.
fn serve(stream: &UnixStream, queue: &Queue, shared: &Shared) -> std::result::Result<(), String> {
    let stall = Duration::from_millis(shared.config.stall_timeout_ms);
    set_send_buffer(stream, SEND_BUFFER_BYTES);
    stream
        .set_write_timeout(Some(stall))
        .map_err(|e| format!("cannot set the send timeout: {e}"))?;
    let stalled = |e: std::io::Error| {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            shared.stats.kicked_stalled.fetch_add(1, Ordering::Relaxed);
            format!(
                "read nothing for {} ms (stream.stall_timeout_ms)",
                stall.as_millis()
            )
        } else {
            format!("write failed: {e}")
        }
    };
    let mut writer = stream;
    writer.write_all(&shared.hello).map_err(stalled)?;
    let mut input = ClientInput::new(stall);
    let mut encoding = Encoding::Ndjson;
    let mut spare: Vec<u8> = Vec::with_capacity(MAX_MESSAGE_BYTES);
    loop {
        match input.poll(stream) {
            Ok(Input::HungUp) => return Ok(()),
            Ok(Input::Encoding(Encoding::Binary)) if encoding == Encoding::Ndjson => {
                let dropped = queue.switch_to_binary();
                shared
                    .stats
                    .frames_dropped
                    .fetch_add(dropped, Ordering::Relaxed);
                encoding = Encoding::Binary;
                shared
                    .stats
                    .binary_subscribers
                    .fetch_add(1, Ordering::Relaxed);
                writer.write_all(BINARY_SWITCH_LINE).map_err(stalled)?;
            }
            Ok(_) => {}
            Err(reason) => {
                shared.stats.kicked_garbage.fetch_add(1, Ordering::Relaxed);
                let _ = match encoding {
                    Encoding::Ndjson => writeln!(
                        writer,
                        "{{\"type\":\"error\",\"reason\":\"{}\"}}",
                        reason.replace('\\', "\\\\").replace('"', "\\\"")
                    ),
                    Encoding::Binary => writer.write_all(&encode_binary_error(&reason)),
                };
                return Err(reason);
            }
        }
        let (dropped, closed) = {
            let mut state = queue.lock();
            if state.filled.is_empty() && !state.closed {
                state = queue
                    .ready
                    .wait_timeout(state, WRITER_TICK)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            match state.filled.pop_front() {
                Some(buffer) => {
                    // Swap buffers so that the lock is not held while writing.
                    let filled = std::mem::replace(&mut spare, buffer);
                    state.free.push(filled);
                    (Some(state.dropped), false)
                }
                None => (None, state.closed),
            }
        };
        if let Some(dropped) = dropped {
            // The queue switched encodings only when this writer told it to, and dropped
            // the frames queued before: every buffer popped since is in `encoding`.
            match encoding {
                Encoding::Ndjson => finish_for_subscriber(&mut spare, dropped),
                Encoding::Binary => set_binary_dropped(&mut spare, dropped),
            }
            writer.write_all(&spare).map_err(stalled)?;
        } else if closed {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use super::super::message::{decode_binary, encode_poses_binary, BinaryMessage, PoseFrame};
    use super::*;

    fn config(dir: &Path) -> StreamConfig {
        StreamConfig {
            socket: dir.join("poses.sock"),
            queue_frames: 2,
            stall_timeout_ms: 300,
            ..StreamConfig::default()
        }
    }

    /// A subscriber whose reads fail after 10 s instead of hanging the test run.
    fn connect(socket: &Path) -> UnixStream {
        let stream = UnixStream::connect(socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream
    }

    fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn body(frame: u64) -> Vec<u8> {
        format!("{{\"type\":\"poses\",\"frame\":{frame},\"dropped\":").into_bytes()
    }

    /// Frame `frame` in both encodings: (JSON body, binary message).
    fn encoded(frame: u64) -> (Vec<u8>, Vec<u8>) {
        let pose_frame = PoseFrame {
            frame,
            ..PoseFrame::default()
        };
        let mut binary = Vec::with_capacity(MAX_MESSAGE_BYTES);
        encode_poses_binary(&pose_frame, &mut binary);
        (body(frame), binary)
    }

    fn publish(server: &StreamServer, frame: u64) {
        let (ndjson_body, binary) = encoded(frame);
        server.publish(&EncodedFrame {
            ndjson_body: &ndjson_body,
            binary: &binary,
        });
    }

    #[test]
    fn a_subscriber_gets_the_hello_then_frames_and_the_socket_is_removed_at_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let server = StreamServer::bind(&config, b"{\"type\":\"hello\"}\n".to_vec()).expect("bind");
        let mode = std::fs::metadata(&config.socket)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);
        let stream = connect(&config.socket);
        // `accepted` counts a subscriber once publish can reach it (`subscribers` counts it
        // a little earlier, before its writer starts).
        wait_for("the subscriber", || {
            server.stats().accepted.load(Ordering::Relaxed) == 1
        });
        publish(&server, 1);
        let mut lines = BufReader::new(stream).lines();
        assert_eq!(
            lines.next().expect("line").expect("hello"),
            "{\"type\":\"hello\"}"
        );
        assert_eq!(
            lines.next().expect("line").expect("frame"),
            "{\"type\":\"poses\",\"frame\":1,\"dropped\":0}"
        );
        server.shutdown(Duration::from_secs(1));
        assert!(lines.next().is_none(), "the connection ends at shutdown");
        assert!(!config.socket.exists());
        assert!(
            !dir.path().join("poses.sock.lock").exists(),
            "the lock file is removed at shutdown"
        );
    }

    #[test]
    fn a_full_queue_drops_its_oldest_frames_and_counts_them() {
        let queue = Queue::new(2);
        let dropped: Vec<bool> = (0..5)
            .map(|frame| {
                let (ndjson_body, binary) = encoded(frame);
                queue.push(&EncodedFrame {
                    ndjson_body: &ndjson_body,
                    binary: &binary,
                })
            })
            .collect();
        assert_eq!(dropped, [false, false, true, true, true]);
        let state = queue.lock();
        assert_eq!(state.dropped, 3);
        let kept: Vec<&[u8]> = state.filled.iter().map(|b| b.as_slice()).collect();
        assert_eq!(kept, [body(3).as_slice(), body(4).as_slice()]);
        assert!(state
            .filled
            .iter()
            .all(|b| b.capacity() >= MAX_MESSAGE_BYTES));
    }

    #[test]
    fn a_subscriber_sending_garbage_is_told_and_disconnected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let server = StreamServer::bind(&config, b"{}\n".to_vec()).expect("bind");
        let mut stream = connect(&config.socket);
        stream.write_all(b"GET / HTTP/1.1\r\n").expect("write");
        let mut lines = BufReader::new(stream.try_clone().expect("clone")).lines();
        assert_eq!(lines.next().expect("hello").expect("hello"), "{}");
        let error = lines.next().expect("error line").expect("error line");
        assert!(
            error.contains("\"type\":\"error\"") && error.contains("GET"),
            "{error}"
        );
        assert!(lines.next().is_none(), "disconnected");
        assert_eq!(server.stats().kicked_garbage.load(Ordering::Relaxed), 1);

        // The encoding line is fine.
        let mut polite = connect(&config.socket);
        polite.write_all(b"ndjson\n").expect("write");
        wait_for("the second subscriber", || {
            server.stats().accepted.load(Ordering::Relaxed) == 2
                && server.stats().subscribers.load(Ordering::Relaxed) == 1
        });
        publish(&server, 5);
        let mut lines = BufReader::new(polite).lines();
        lines.next();
        assert!(lines
            .next()
            .expect("frame")
            .expect("frame")
            .contains("\"frame\":5"));
        server.shutdown(Duration::from_secs(1));
    }

    /// Reads one length-prefixed binary message.
    fn read_binary(stream: &mut impl std::io::Read) -> Vec<u8> {
        let mut prefix = [0u8; 4];
        stream.read_exact(&mut prefix).expect("length prefix");
        let mut message = prefix.to_vec();
        message.resize(4 + u32::from_le_bytes(prefix) as usize, 0);
        stream.read_exact(&mut message[4..]).expect("message");
        message
    }

    #[test]
    fn a_subscriber_that_asks_for_binary_gets_binary_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path());
        config.queue_frames = 4;
        let server = StreamServer::bind(&config, b"{\"type\":\"hello\"}\n".to_vec()).expect("bind");
        let mut stream = connect(&config.socket);
        stream
            .write_all(b"{\"encoding\":\"binary\",\"version\":1}\n")
            .expect("write");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("hello");
        assert_eq!(line, "{\"type\":\"hello\"}\n");
        // JSON frames may come before the switch line; everything after it is binary.
        loop {
            line.clear();
            reader.read_line(&mut line).expect("switch line");
            if line.as_bytes() == BINARY_SWITCH_LINE {
                break;
            }
            assert!(line.contains("\"type\":\"poses\""), "{line}");
        }
        // The writer may switch before the accept thread has listed the subscriber.
        wait_for("the subscriber", || {
            server.stats().accepted.load(Ordering::Relaxed) == 1
        });
        for frame in [7, 8] {
            publish(&server, frame);
        }
        for frame in [7, 8] {
            match decode_binary(&read_binary(&mut reader)).expect("a binary message") {
                BinaryMessage::Poses {
                    frame: decoded,
                    dropped,
                } => {
                    assert_eq!(decoded.frame, frame);
                    assert_eq!(dropped, 0);
                }
                other => panic!("expected poses, got {other:?}"),
            }
        }
        // A second line is garbage: the error comes in the subscriber's encoding.
        stream.write_all(b"more\n").expect("write");
        match decode_binary(&read_binary(&mut reader)).expect("a binary message") {
            BinaryMessage::Error(reason) => assert!(reason.contains("more"), "{reason}"),
            other => panic!("expected an error, got {other:?}"),
        }
        server.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn an_unknown_encoding_or_version_is_refused_in_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let server = StreamServer::bind(&config, b"{}\n".to_vec()).expect("bind");
        for (request, expected) in [
            ("{\"encoding\":\"binary\",\"version\":2}\n", "version 2"),
            ("{\"encoding\":\"protobuf\"}\n", "protobuf"),
            ("{\"encoding\":7}\n", "not a string"),
        ] {
            let mut stream = connect(&config.socket);
            stream.write_all(request.as_bytes()).expect("write");
            let mut lines = BufReader::new(stream).lines();
            assert_eq!(lines.next().expect("hello").expect("hello"), "{}");
            let error = lines.next().expect("error").expect("error");
            assert!(
                error.contains("\"type\":\"error\"") && error.contains(expected),
                "{request}: {error}"
            );
            assert!(lines.next().is_none(), "disconnected");
        }
        server.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn stale_sockets_are_replaced_and_live_ones_and_files_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        // A stale socket: bound, then its listener gone (as after a crash).
        drop(UnixListener::bind(&config.socket).expect("bind"));
        assert!(config.socket.exists());
        let server =
            StreamServer::bind(&config, b"{}\n".to_vec()).expect("replaces the stale socket");
        let message = StreamServer::bind(&config, b"{}\n".to_vec())
            .expect_err("a live socket")
            .to_string();
        assert!(message.contains("another posed"), "{message}");
        server.shutdown(Duration::from_secs(1));

        std::fs::write(&config.socket, b"precious").expect("file");
        let message = StreamServer::bind(&config, b"{}\n".to_vec())
            .expect_err("a regular file")
            .to_string();
        assert!(
            message.contains("not a socket") && message.contains("poses.sock"),
            "{message}"
        );
        assert_eq!(std::fs::read(&config.socket).expect("kept"), b"precious");

        let mut missing = config.clone();
        missing.socket = dir.path().join("no/such/dir/poses.sock");
        let message = StreamServer::bind(&missing, b"{}\n".to_vec())
            .expect_err("no folder")
            .to_string();
        assert!(message.contains("does not exist"), "{message}");
    }

    #[test]
    fn shutdown_leaves_a_socket_another_server_bound_in_its_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let server = StreamServer::bind(&config, b"{}\n".to_vec()).expect("bind");
        // Another process takes the path over (as a second posed would after removing
        // what it took for a stale socket). Bound beside it and renamed over it, so that
        // the two files are sure to have different inodes.
        let beside = dir.path().join("other.sock");
        let other = UnixListener::bind(&beside).expect("bind the other");
        std::fs::rename(&beside, &config.socket).expect("rename");
        server.shutdown(Duration::from_secs(1));
        assert!(
            config.socket.exists(),
            "the other server's socket was deleted"
        );
        UnixStream::connect(&config.socket).expect("the other server is reachable");
        drop(other);
    }

    #[test]
    fn too_many_subscribers_are_refused_with_a_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path());
        config.max_subscribers = 1;
        let server = StreamServer::bind(&config, b"{}\n".to_vec()).expect("bind");
        let _first = connect(&config.socket);
        wait_for("the subscriber", || {
            server.stats().subscribers.load(Ordering::Relaxed) == 1
        });
        let second = connect(&config.socket);
        let line = BufReader::new(second)
            .lines()
            .next()
            .expect("line")
            .expect("line");
        assert!(line.contains("too many subscribers"), "{line}");
        server.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn a_live_listener_that_accepts_nobody_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let (_listener, _queued) = super::super::unix::tests::full_listener(&config.socket);
        let started = Instant::now();
        let message = StreamServer::bind(&config, b"{}\n".to_vec())
            .expect_err("a live socket")
            .to_string();
        assert!(
            message.contains("accepts nobody") && message.contains("poses.sock"),
            "{message}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the probe waited {:?}",
            started.elapsed()
        );
        assert!(config.socket.exists(), "the live socket is left alone");
    }

    #[test]
    fn a_held_lock_refuses_a_second_posed_and_keeps_its_hands_off_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let server = StreamServer::bind(&config, b"{}\n".to_vec()).expect("bind");
        let lock = dir.path().join("poses.sock.lock");
        let pid = std::fs::read_to_string(&lock).expect("the lock file");
        assert_eq!(pid.trim(), std::process::id().to_string());
        let message = StreamServer::bind(&config, b"{}\n".to_vec())
            .expect_err("locked")
            .to_string();
        assert!(
            message.contains("another posed")
                && message.contains(&format!("pid {}", std::process::id()))
                && message.contains("poses.sock.lock"),
            "{message}"
        );
        server.shutdown(Duration::from_secs(1));
        assert!(!lock.exists());

        // A stale socket while another process holds the lock (as when a second posed
        // finds the socket stale while the first is between its own check and its bind):
        // it is not this one's to remove.
        drop(UnixListener::bind(&config.socket).expect("bind"));
        let stale = file_identity(&config.socket);
        let holder = File::create(&lock).expect("lock file");
        holder.try_lock().expect("lock");
        let message = StreamServer::bind(&config, b"{}\n".to_vec())
            .expect_err("locked")
            .to_string();
        assert!(message.contains("holds its lock file"), "{message}");
        assert_eq!(
            file_identity(&config.socket),
            stale,
            "the socket was touched"
        );
        drop(holder);
        let server = StreamServer::bind(&config, b"{}\n".to_vec()).expect("the lock is free");
        server.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn of_several_posed_starting_at_once_on_a_stale_socket_one_serves_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        drop(UnixListener::bind(&config.socket).expect("a stale socket"));
        for round in 0..10 {
            let barrier = Arc::new(std::sync::Barrier::new(6));
            let starts: Vec<_> = (0..6)
                .map(|i| {
                    let config = config.clone();
                    let barrier = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        barrier.wait();
                        let hello = format!("{{\"server\":{i}}}\n").into_bytes();
                        StreamServer::bind(&config, hello)
                            .ok()
                            .map(|server| (i, server))
                    })
                })
                .collect();
            let mut serving: Vec<(usize, StreamServer)> = starts
                .into_iter()
                .filter_map(|start| start.join().expect("thread"))
                .collect();
            assert_eq!(
                serving.len(),
                1,
                "round {round}: servers {:?}",
                serving.iter().map(|s| s.0).collect::<Vec<_>>()
            );
            let (winner, server) = serving.remove(0);
            let mut hello = String::new();
            BufReader::new(connect(&config.socket))
                .read_line(&mut hello)
                .expect("hello");
            assert_eq!(hello, format!("{{\"server\":{winner}}}\n"), "round {round}");
            // Left as a crash leaves it: the socket file stays, stale, for the next round.
            let path = server.path().to_owned();
            let identity = server.socket_file;
            let mut server = server;
            server.socket_file = None;
            server.shutdown(Duration::from_secs(1));
            assert_eq!(file_identity(&path), identity);
        }
    }

    #[test]
    fn subscribers_that_hang_up_free_their_places_while_no_frames_flow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path());
        config.max_subscribers = 3;
        let server = StreamServer::bind(&config, b"{}\n".to_vec()).expect("bind");
        // One that only shut down its sending side (`socat -u`): it still reads.
        let half = connect(&config.socket);
        half.shutdown(std::net::Shutdown::Write).expect("shutdown");
        for round in 0..3 {
            let gone: Vec<UnixStream> = (0..2).map(|_| connect(&config.socket)).collect();
            wait_for("the subscribers", || {
                server.stats().subscribers.load(Ordering::Relaxed) == 3
            });
            drop(gone);
            // No frame is published: the writers notice the hang-ups by themselves.
            wait_for("the hang-ups", || {
                server.stats().subscribers.load(Ordering::Relaxed) == 1
            });
            assert_eq!(
                server.stats().refused.load(Ordering::Relaxed),
                0,
                "round {round}"
            );
        }
        wait_for("the half-closed subscriber listed", || {
            server.stats().accepted.load(Ordering::Relaxed) == 7
        });
        publish(&server, 9);
        let mut lines = BufReader::new(half).lines();
        assert_eq!(lines.next().expect("hello").expect("hello"), "{}");
        assert!(lines
            .next()
            .expect("frame")
            .expect("frame")
            .contains("\"frame\":9"));
        assert_eq!(server.stats().kicked_garbage.load(Ordering::Relaxed), 0);
        server.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn a_first_line_left_unfinished_is_disconnected_after_the_stall_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let server = StreamServer::bind(&config, b"{}\n".to_vec()).expect("bind");
        let mut stream = connect(&config.socket);
        // The first 43 bytes of a TLS ClientHello: no newline, ever.
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        hello.extend((0..32).map(|i| i as u8 * 7));
        stream.write_all(&hello).expect("write");
        let started = Instant::now();
        let mut lines = BufReader::new(stream.try_clone().expect("clone")).lines();
        assert_eq!(lines.next().expect("hello").expect("hello"), "{}");
        let error = lines.next().expect("error line").expect("error line");
        let value: serde_json::Value = serde_json::from_str(&error).expect("a JSON error line");
        let reason = value["reason"].as_str().expect("reason");
        assert!(
            reason.contains("43 bytes")
                && reason.contains("no newline")
                && reason.contains("\\u{16}"),
            "{reason}"
        );
        assert!(lines.next().is_none(), "disconnected");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert_eq!(server.stats().kicked_garbage.load(Ordering::Relaxed), 1);

        // A line that arrives in pieces within the time is fine.
        let mut slow = connect(&config.socket);
        slow.write_all(b"ndj").expect("write");
        std::thread::sleep(Duration::from_millis(100));
        slow.write_all(b"son\n").expect("write");
        wait_for("the subscriber", || {
            server.stats().accepted.load(Ordering::Relaxed) == 2
        });
        publish(&server, 3);
        let mut lines = BufReader::new(slow).lines();
        lines.next();
        assert!(lines
            .next()
            .expect("frame")
            .expect("frame")
            .contains("\"frame\":3"));
        assert_eq!(server.stats().kicked_garbage.load(Ordering::Relaxed), 1);
        server.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn repeated_failures_are_let_through_once_per_interval_with_a_count() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(throttle.admit(at(0)), Some(0));
        for ms in (100..10_000).step_by(100) {
            assert_eq!(throttle.admit(at(ms)), None, "{ms} ms");
        }
        assert_eq!(throttle.admit(at(10_000)), Some(99));
        assert_eq!(throttle.admit(at(10_050)), None);
        assert_eq!(throttle.admit(at(60_000)), Some(1));
    }
}
