//! `posed run`: the daemon. Frames from a [`FrameSource`] go through the single-view
//! pipeline and out over the pose stream.
//!
//! Three threads joined by bounded channels where the newest frame wins ([`handoff`]: they
//! allocate nothing, not even the first time a thread waits):
//!
//! ```text
//! capture (posed-capture)  source -> Frame            -> [1] ->
//! infer   (posed-infer)    detector / boxes, pipeline -> [1] ->
//! publish (the caller)     encode, every subscriber's queue, sd_notify
//! ```
//!
//! Frames and pose frames come from small pools allocated at start and go back to them
//! once used; a frame that a later one overtakes in a channel is counted as dropped and
//! returned to its pool. Nothing on this path allocates once warm (the test
//! `runtime/tests/daemon_alloc.rs` counts). A camera that fails is reopened with backoff
//! while the other threads wait; SIGTERM / SIGINT / SIGHUP (the `shutdown` flag) stop
//! everything within a second, abandoning a frame in flight. Nothing at start waits on
//! another process (the socket's lock and liveness check do not), so a signal is heeded
//! there too.

pub mod client;
pub mod handoff;
pub mod message;
pub mod notify;
pub mod setup;
pub mod stream;
pub(crate) mod unix;

use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{ServiceConfig, StreamConfig};
use crate::pipeline::{DetectionFilter, Detector, InitScheme, ObjectEstimate, SingleViewPipeline};
use crate::source::{monotonic_ns, wall_ns, Captured, Frame, FrameSource};
use crate::{Error, Result};
use handoff::{bounded, put_newest, RecvTimeoutError};
use message::{
    encode_hello, encode_poses_binary, encode_poses_body, PoseFrame, PosedObject,
    MAX_MESSAGE_BYTES, MAX_OBJECTS,
};
use notify::Notifier;
use posed_engines::panic_message;
use stream::{EncodedFrame, StreamServer};

/// Frames in the capture pool: one being captured, one queued, one in inference, one spare.
const FRAME_POOL: usize = 4;
/// Pose frames in their pool: one being filled, one queued, one being published, one spare.
const POSE_POOL: usize = 4;
/// Detections one frame may have before filtering (a detector's output is cut here).
const MAX_DETECTIONS: usize = 256;
/// How long a blocked thread waits before looking at the shutdown flag again.
const TICK: Duration = Duration::from_millis(50);

/// Where a frame's objects come from.
pub enum ObjectsProvider {
    /// A detector network.
    Detector(Box<Detector>),
    /// The annotated boxes of a BOP sequence by (scene id, image id).
    DatasetBoxes(crate::source::sequence::BoxesByImage),
}

impl std::fmt::Debug for ObjectsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Detector(_) => f.write_str("Detector"),
            Self::DatasetBoxes(boxes) => write!(f, "DatasetBoxes({} images)", boxes.len()),
        }
    }
}

/// Everything the daemon runs, built from a configuration ([`crate::cli`]) or by a test.
pub struct DaemonParts {
    /// The frame source.
    pub source: Box<dyn FrameSource>,
    /// The objects of each frame.
    pub objects: ObjectsProvider,
    /// Which detections go on.
    pub filter: DetectionFilter,
    /// Initial poses from boxes.
    pub init: InitScheme,
    /// The pose loop.
    pub pipeline: SingleViewPipeline,
    /// The objects the pipeline knows (for the hello message).
    pub obj_ids: Vec<u32>,
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The pose stream.
    pub stream: StreamConfig,
    /// systemd integration.
    pub service: ServiceConfig,
    /// First reopen delay of a lost camera.
    pub reopen_min: Duration,
    /// Largest reopen delay.
    pub reopen_max: Duration,
    /// Stop after publishing this many frames (tests and benchmarks).
    pub max_frames: Option<u64>,
}

/// Counters of a run.
#[derive(Debug, Default)]
pub struct DaemonStats {
    /// Frames the source delivered.
    pub captured: AtomicU64,
    /// Frames dropped before inference (overtaken by a newer one).
    pub dropped_before_infer: AtomicU64,
    /// Frames dropped before publishing.
    pub dropped_before_publish: AtomicU64,
    /// Frames whose inference failed (logged, skipped).
    pub failed: AtomicU64,
    /// Frames published.
    pub published: AtomicU64,
    /// Times the camera was lost.
    pub camera_lost: AtomicU64,
    /// Times the daemon paused for want of subscribers (`idle_without_subscribers`).
    pub idle_periods: AtomicU64,
    /// Turns of the capture loop while paused: its sign of life for the watchdog.
    pub idle_ticks: AtomicU64,
    /// Frames captured before the end of a pause (held in a camera's queue meanwhile),
    /// dropped as stale.
    pub stale_dropped: AtomicU64,
}

impl DaemonStats {
    fn dropped(&self) -> u64 {
        self.dropped_before_infer.load(Ordering::Relaxed)
            + self.dropped_before_publish.load(Ordering::Relaxed)
    }
}

/// Called after each published frame, on the publish thread, with the stream's counters
/// (tests use it to count allocations per frame and to watch subscribers).
pub type FrameObserver = Box<dyn FnMut(&PoseFrame, &stream::StreamStats) + Send>;

/// State of the source, for the status line.
const SOURCE_OK: u8 = 0;
const SOURCE_LOST: u8 = 1;
const SOURCE_ENDED: u8 = 2;

/// What a finished run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Frames captured.
    pub captured: u64,
    /// Frames published.
    pub published: u64,
    /// Frames dropped (overtaken) before inference or publishing.
    pub dropped: u64,
    /// Of those, the frames dropped before inference (a source faster than inference).
    pub dropped_before_infer: u64,
    /// Frames whose inference failed.
    pub failed: u64,
    /// Times the camera was lost.
    pub camera_lost: u64,
    /// Times the daemon paused for want of subscribers.
    pub idle_periods: u64,
    /// Frames dropped as stale after a pause.
    pub stale_dropped: u64,
    /// Subscribers ever connected.
    pub subscribers: u64,
    /// Subscribers disconnected for not reading.
    pub subscribers_stalled: u64,
    /// Subscribers disconnected for sending garbage.
    pub subscribers_garbage: u64,
    /// Frames dropped from subscriber queues (slow readers), all subscribers together.
    pub subscriber_frames_dropped: u64,
    /// True when the source ended (a sequence that does not loop); false on shutdown.
    pub source_ended: bool,
}

/// Runs the daemon until `shutdown` is set, the source ends or fails for good, or
/// `options.max_frames` frames were published. Binds the socket first (so a bad socket
/// fails before any work), sends READY=1 after `service.warmup_frames` frames.
///
/// # Errors
/// The socket cannot be bound; the source fails with anything but a camera error (which
/// is retried); a thread cannot be started.
pub fn run(
    parts: DaemonParts,
    options: DaemonOptions,
    shutdown: Arc<AtomicBool>,
    mut notifier: Notifier,
    mut observer: Option<FrameObserver>,
) -> Result<RunReport> {
    let DaemonParts {
        mut source,
        objects,
        filter,
        init,
        pipeline,
        obj_ids,
    } = parts;
    let info = source.info().clone();
    let server = StreamServer::bind(&options.stream, encode_hello(&info, &obj_ids))?;
    tracing::info!(
        "posed: {} ({} x {}, {}), pose stream on {}",
        info.name,
        info.width,
        info.height,
        info.format,
        server.path().display()
    );

    let stats = Arc::new(DaemonStats::default());
    let source_state = Arc::new(AtomicU8::new(SOURCE_OK));
    // Set once READY=1 went out: only then may the daemon pause for want of subscribers.
    let serving = Arc::new(AtomicBool::new(false));
    let idle = Arc::new(AtomicBool::new(false));
    let fatal: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let on_panic = StopOnPanic {
        fatal: Arc::clone(&fatal),
        shutdown: Arc::clone(&shutdown),
    };

    let (free_frames_tx, free_frames_rx) = bounded::<Box<Frame>>(FRAME_POOL);
    for _ in 0..FRAME_POOL {
        let _ = free_frames_tx.try_send(Box::new(source.allocate_frame()?));
    }
    let (free_poses_tx, free_poses_rx) = bounded::<Box<PoseFrame>>(POSE_POOL);
    for _ in 0..POSE_POOL {
        let _ = free_poses_tx.try_send(Box::default());
    }
    let (to_infer_tx, to_infer_rx) = bounded::<Box<Frame>>(1);
    let (to_publish_tx, to_publish_rx) = bounded::<Box<PoseFrame>>(1);

    let capture = {
        let shutdown = Arc::clone(&shutdown);
        let stats = Arc::clone(&stats);
        let source_state = Arc::clone(&source_state);
        let fatal = Arc::clone(&fatal);
        let free_rx = free_frames_rx.clone();
        let free_tx = free_frames_tx.clone();
        let to_infer_rx = to_infer_rx.clone();
        let (reopen_min, reopen_max) = (options.reopen_min, options.reopen_max);
        let pause = options.service.idle_without_subscribers.then(|| IdlePause {
            serving: Arc::clone(&serving),
            idle: Arc::clone(&idle),
            stream: server.shared(),
        });
        spawn_pipeline_thread("posed-capture", &on_panic, move || {
            let mut number = 0u64;
            let mut lost_since: Option<u32> = None;
            let paced = source.paced();
            // Frames captured before this instant are stale (the end of the last pause).
            let mut fresh_after_ns = 0u64;
            while !shutdown.load(Ordering::Relaxed) {
                if let Some(pause) = &pause {
                    if pause.wanted() {
                        if !pause.idle.swap(true, Ordering::Relaxed) {
                            stats.idle_periods.fetch_add(1, Ordering::Relaxed);
                            tracing::info!("no subscriber: capture and inference paused");
                        }
                        stats.idle_ticks.fetch_add(1, Ordering::Relaxed);
                        sleep_unless(&shutdown, TICK);
                        continue;
                    }
                    if pause.idle.swap(false, Ordering::Relaxed) {
                        fresh_after_ns = monotonic_ns();
                        tracing::info!("a subscriber: capture and inference resumed");
                    }
                }
                if !paced && !to_infer_tx.wait_for_demand(TICK) {
                    continue;
                }
                let Ok(mut frame) = free_rx.recv_timeout(TICK) else {
                    continue;
                };
                match source.capture(&mut frame) {
                    Ok(Captured::Frame) if frame.t_capture_ns < fresh_after_ns => {
                        // Held in the camera's queue during the pause: a subscriber must
                        // not get poses of the past as news.
                        stats.stale_dropped.fetch_add(1, Ordering::Relaxed);
                        let _ = free_tx.try_send(frame);
                    }
                    Ok(Captured::Frame) => {
                        fresh_after_ns = 0;
                        if lost_since.take().is_some() {
                            source_state.store(SOURCE_OK, Ordering::Relaxed);
                        }
                        frame.number = number;
                        number += 1;
                        stats.captured.fetch_add(1, Ordering::Relaxed);
                        match put_newest(&to_infer_tx, &to_infer_rx, &free_tx, frame) {
                            Ok(dropped) => {
                                stats
                                    .dropped_before_infer
                                    .fetch_add(dropped, Ordering::Relaxed);
                            }
                            Err(()) => return,
                        }
                    }
                    Ok(Captured::End) => {
                        source_state.store(SOURCE_ENDED, Ordering::Relaxed);
                        return;
                    }
                    Err(Error::Camera { device, detail }) => {
                        let _ = free_tx.try_send(frame);
                        stats.camera_lost.fetch_add(1, Ordering::Relaxed);
                        source_state.store(SOURCE_LOST, Ordering::Relaxed);
                        tracing::warn!("camera {}: {detail}; reopening", device.display());
                        let mut attempt = 0u32;
                        loop {
                            let delay = reopen_delay(attempt, reopen_min, reopen_max);
                            if !sleep_unless(&shutdown, delay) {
                                return;
                            }
                            match source.reopen() {
                                Ok(()) => {
                                    tracing::info!("camera {}: reopened", device.display());
                                    lost_since = Some(attempt);
                                    break;
                                }
                                Err(e) => {
                                    attempt = attempt.saturating_add(1);
                                    tracing::warn!(
                                        "camera: reopen attempt {attempt} failed: {e}; next in {} ms",
                                        reopen_delay(attempt, reopen_min, reopen_max).as_millis()
                                    );
                                }
                            }
                        }
                    }
                    Err(e) => {
                        *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        shutdown.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        })?
    };
    let infer = {
        let shutdown = Arc::clone(&shutdown);
        let stats = Arc::clone(&stats);
        let to_publish_rx = to_publish_rx.clone();
        let free_poses_tx = free_poses_tx.clone();
        let mut worker = InferWorker {
            objects,
            filter,
            init,
            pipeline,
            estimates: Vec::with_capacity(MAX_DETECTIONS),
            failures_logged: 0,
        };
        spawn_pipeline_thread("posed-infer", &on_panic, move || {
            while !shutdown.load(Ordering::Relaxed) {
                let frame = match to_infer_rx.recv_timeout(TICK) {
                    Ok(frame) => frame,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                let Ok(mut pose) = free_poses_rx.recv_timeout(Duration::from_secs(1)) else {
                    // Cannot happen with the pools sized as they are; skip the frame.
                    let _ = free_frames_tx.try_send(frame);
                    continue;
                };
                let outcome = worker.process(&frame, &mut pose);
                let _ = free_frames_tx.try_send(frame);
                match outcome {
                    Ok(()) => {
                        pose.pipeline_dropped = stats.dropped();
                        match put_newest(&to_publish_tx, &to_publish_rx, &free_poses_tx, pose) {
                            Ok(dropped) => {
                                stats
                                    .dropped_before_publish
                                    .fetch_add(dropped, Ordering::Relaxed);
                            }
                            Err(()) => return,
                        }
                    }
                    Err(e) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        worker.log_failure(&e);
                        let _ = free_poses_tx.try_send(pose);
                    }
                }
            }
        })?
    };

    // The publish loop, on this thread.
    let mut body: Vec<u8> = Vec::with_capacity(MAX_MESSAGE_BYTES);
    let mut binary: Vec<u8> = Vec::with_capacity(MAX_MESSAGE_BYTES);
    let mut status = String::with_capacity(256);
    let mut ready = false;
    let warmup = options.service.warmup_frames.max(1) as u64;
    let status_interval = Duration::from_millis(options.service.status_interval_ms);
    let watchdog_interval = notifier.watchdog().map(|period| period / 2);
    let mut last_ping = Instant::now();
    let mut published_at_ping = 0u64;
    let mut idle_ticks_at_ping = 0u64;
    let mut last_status = Instant::now();
    let mut published_at_status = 0u64;
    let mut source_ended = false;
    let mut pipeline_ended = false;
    while !shutdown.load(Ordering::Relaxed) {
        match to_publish_rx.recv_timeout(TICK) {
            Ok(mut pose) => {
                pose.t_publish_ns = monotonic_ns();
                pose.t_publish_wall_ns = wall_ns();
                pose.latency_ns.publish = pose.t_publish_ns.saturating_sub(pose.t_inferred_ns);
                pose.latency_ns.total = pose.t_publish_ns.saturating_sub(pose.t_capture_ns);
                encode_poses_body(&pose, &mut body);
                encode_poses_binary(&pose, &mut binary);
                server.publish(&EncodedFrame {
                    ndjson_body: &body,
                    binary: &binary,
                });
                let published = stats.published.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(observer) = observer.as_mut() {
                    observer(&pose, server.stats());
                }
                let _ = free_poses_tx.try_send(pose);
                if !ready && published >= warmup {
                    ready = true;
                    serving.store(true, Ordering::Relaxed);
                    notifier.ready(format_args!(
                        "running: {} warm-up frame(s) done, poses on {}",
                        published,
                        server.path().display()
                    ));
                    tracing::info!(
                        "posed: ready after {published} warm-up frame(s), {:.0} MiB resident \
                         at peak",
                        unix::peak_resident_mib()
                    );
                }
                if options.max_frames.is_some_and(|max| published >= max) {
                    shutdown.store(true, Ordering::Relaxed);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                source_ended = source_state.load(Ordering::Relaxed) == SOURCE_ENDED;
                pipeline_ended = true;
                break;
            }
        }
        if let Some(interval) = watchdog_interval {
            // Progress is a frame gone out since the last ping, a lost camera that the
            // capture thread is still reopening (systemd must not restart a daemon that is
            // waiting for its camera to come back), or a pause for want of subscribers
            // that the capture thread is still keeping. A stuck pipeline stops the pings,
            // and systemd restarts it.
            let published = stats.published.load(Ordering::Relaxed);
            let idle_ticks = stats.idle_ticks.load(Ordering::Relaxed);
            let reopening =
                source_state.load(Ordering::Relaxed) == SOURCE_LOST && !capture.is_finished();
            let progress =
                published != published_at_ping || idle_ticks != idle_ticks_at_ping || reopening;
            if progress && last_ping.elapsed() >= interval {
                notifier.watchdog_ping();
                last_ping = Instant::now();
                published_at_ping = published;
                idle_ticks_at_ping = idle_ticks;
            }
        }
        if last_status.elapsed() >= status_interval {
            let published = stats.published.load(Ordering::Relaxed);
            let seconds = last_status.elapsed().as_secs_f64();
            let fps = (published - published_at_status) as f64 / seconds;
            status.clear();
            let _ = write!(
                status,
                "{fps:.1} fps, {published} frames, dropped {} before inference and {} before \
                 publishing, {} failed, {} subscriber(s), {:.0} MiB resident at peak{}",
                stats.dropped_before_infer.load(Ordering::Relaxed),
                stats.dropped_before_publish.load(Ordering::Relaxed),
                stats.failed.load(Ordering::Relaxed),
                server.stats().subscribers.load(Ordering::Relaxed),
                unix::peak_resident_mib(),
                match source_state.load(Ordering::Relaxed) {
                    SOURCE_LOST => ", camera lost: reopening",
                    SOURCE_ENDED => ", sequence ended",
                    _ if idle.load(Ordering::Relaxed) => ", paused: no subscriber",
                    _ => "",
                }
            );
            notifier.status(format_args!("{status}"));
            tracing::info!("{status}");
            published_at_status = published;
            last_status = Instant::now();
        }
    }

    notifier.stopping();
    shutdown.store(true, Ordering::Relaxed);
    let report = RunReport {
        captured: stats.captured.load(Ordering::Relaxed),
        published: stats.published.load(Ordering::Relaxed),
        dropped: stats.dropped(),
        dropped_before_infer: stats.dropped_before_infer.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        camera_lost: stats.camera_lost.load(Ordering::Relaxed),
        idle_periods: stats.idle_periods.load(Ordering::Relaxed),
        stale_dropped: stats.stale_dropped.load(Ordering::Relaxed),
        subscribers: server.stats().accepted.load(Ordering::Relaxed),
        subscribers_stalled: 0,
        subscribers_garbage: 0,
        subscriber_frames_dropped: 0,
        source_ended,
    };
    let stream = server.shutdown(Duration::from_millis(200));
    let stream_stats = stream.stats();
    let report = RunReport {
        subscribers_stalled: stream_stats.kicked_stalled.load(Ordering::Relaxed),
        subscribers_garbage: stream_stats.kicked_garbage.load(Ordering::Relaxed),
        subscriber_frames_dropped: stream_stats.frames_dropped.load(Ordering::Relaxed),
        ..report
    };
    // A frame in flight may take longer than the second a stop may take: past the
    // deadline it is abandoned (its thread ends with the process). A pipeline that ended
    // by itself (a channel closed) is waited for longer: a thread that panicked closes
    // its channels while it unwinds, before it records its error.
    let deadline = Instant::now()
        + if pipeline_ended {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(300)
        };
    for handle in [capture, infer] {
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
    if let Some(e) = fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    Ok(report)
}

/// The delay before reopen attempt `attempt` (0 first): `min`, doubling, up to `max`.
pub fn reopen_delay(attempt: u32, min: Duration, max: Duration) -> Duration {
    min.saturating_mul(1u32 << attempt.min(20)).min(max)
}

/// Sleeps `duration` in ticks; false when `shutdown` was set meanwhile.
fn sleep_unless(shutdown: &AtomicBool, duration: Duration) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if shutdown.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(TICK.min(until - Instant::now()));
    }
    !shutdown.load(Ordering::Relaxed)
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(work)
        .map_err(|e| Error::Invalid {
            what: format!("thread {name}"),
            reason: format!("cannot start: {e}"),
        })
}

/// When the capture thread pauses (`service.idle_without_subscribers`).
struct IdlePause {
    /// READY=1 went out: the warm-up ran whatever the subscribers.
    serving: Arc<AtomicBool>,
    /// Paused now (for the status line).
    idle: Arc<AtomicBool>,
    /// The pose stream, whose subscribers are counted.
    stream: Arc<stream::Shared>,
}

impl IdlePause {
    /// Whether to pause: ready, and nobody connected.
    fn wanted(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
            && self.stream.stats().subscribers.load(Ordering::Relaxed) == 0
    }
}

/// What a pipeline thread that panics sets: the run's error, and the stop.
#[derive(Clone)]
struct StopOnPanic {
    fatal: Arc<Mutex<Option<Error>>>,
    shutdown: Arc<AtomicBool>,
}

/// Starts a pipeline thread. The release build aborts on a panic (a bug in posed: bad
/// input is an error, not a panic), and systemd restarts it. A build that unwinds (debug
/// builds, tests) gets the same outcome from here: the panic becomes the run's error,
/// naming the thread, and stops the run, so the process exits with a failure. Without
/// this the other threads would see the panicked one's channels close, take it for the
/// end of the source and exit with success.
fn spawn_pipeline_thread(
    name: &'static str,
    on_panic: &StopOnPanic,
    work: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>> {
    let StopOnPanic { fatal, shutdown } = on_panic.clone();
    spawn(name, move || {
        // The work owns what it changes; the other threads only stop after it.
        if let Err(panic) = catch_unwind(AssertUnwindSafe(work)) {
            let mut fatal = fatal.lock().unwrap_or_else(PoisonError::into_inner);
            if fatal.is_none() {
                *fatal = Some(Error::Invalid {
                    what: format!("thread {name}"),
                    reason: format!(
                        "panicked: {} (a bug in posed: please report it with the log)",
                        panic_message(&*panic)
                    ),
                });
            }
            shutdown.store(true, Ordering::Relaxed);
        }
    })
}

/// The inference thread's state.
struct InferWorker {
    objects: ObjectsProvider,
    filter: DetectionFilter,
    init: InitScheme,
    pipeline: SingleViewPipeline,
    estimates: Vec<ObjectEstimate>,
    failures_logged: u64,
}

impl InferWorker {
    /// Objects, initial poses, the pose loop; fills `pose`.
    fn process(&mut self, frame: &Frame, pose: &mut PoseFrame) -> Result<()> {
        let started_ns = monotonic_ns();
        let view = frame.view();
        self.estimates.clear();
        match &mut self.objects {
            ObjectsProvider::Detector(detector) => {
                detector.detect(&view, &mut self.estimates)?;
                self.estimates.truncate(MAX_DETECTIONS);
            }
            ObjectsProvider::DatasetBoxes(boxes) => {
                if let Some(list) = frame.bop_image.and_then(|key| boxes.get(&key)) {
                    for (obj_id, bbox) in list.iter().take(MAX_DETECTIONS) {
                        self.estimates
                            .push(ObjectEstimate::from_box(*obj_id, 1.0, *bbox));
                    }
                }
            }
        }
        let detected_ns = monotonic_ns();
        self.filter.apply(&mut self.estimates);
        let pipeline = &self.pipeline;
        self.estimates.retain(|o| pipeline.has_object(o.obj_id));
        self.estimates.truncate(MAX_OBJECTS);
        self.pipeline
            .init_from_boxes(&frame.intrinsics, self.init, &mut self.estimates)?;
        self.pipeline
            .run(&view, &mut self.estimates, &mut |_, _| {})?;
        let timings = self.pipeline.take_timings();
        let done_ns = monotonic_ns();

        pose.frame = frame.number;
        pose.t_capture_ns = frame.t_capture_ns;
        pose.t_capture_wall_ns = frame.t_capture_wall_ns;
        pose.t_inferred_ns = done_ns;
        let ns = |d: Duration| d.as_nanos() as u64;
        pose.latency_ns = message::StageLatencies {
            capture: frame.capture_latency_ns,
            queue: started_ns
                .saturating_sub(frame.t_capture_ns.saturating_add(frame.capture_latency_ns)),
            detect: detected_ns.saturating_sub(started_ns),
            init: ns(timings.init),
            crop: ns(timings.crop),
            render: ns(timings.render),
            coarse: ns(timings.coarse_network),
            refiner: ns(timings.refiner_network),
            update: ns(timings.update),
            publish: 0,
            total: 0,
        };
        pose.objects.clear();
        for estimate in self.estimates.iter().filter(|e| e.valid) {
            // Capacity: estimates were cut to MAX_OBJECTS above.
            let _ = pose.objects.push(PosedObject {
                obj_id: estimate.obj_id,
                score: estimate.score,
                camera_from_object: estimate.camera_from_object,
                bbox_xyxy: estimate.bbox_xyxy,
            });
        }
        Ok(())
    }

    /// Logs the first failures, then one in a hundred (a camera delivering frames the
    /// detector refuses would otherwise flood the journal).
    fn log_failure(&mut self, error: &Error) {
        self.failures_logged += 1;
        if self.failures_logged <= 5 || self.failures_logged.is_multiple_of(100) {
            tracing::warn!("frame skipped ({} so far): {error}", self.failures_logged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_delays_double_up_to_the_limit() {
        let ms = Duration::from_millis;
        let delays: Vec<_> = (0..8).map(|a| reopen_delay(a, ms(200), ms(5000))).collect();
        assert_eq!(
            delays,
            [
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000),
                ms(5000)
            ]
        );
        assert_eq!(reopen_delay(u32::MAX, ms(200), ms(5000)), ms(5000));
    }
}
