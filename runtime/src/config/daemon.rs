//! The daemon's sections of the configuration file: `[source]`, `[pipeline]`, `[stream]`
//! and `[service]` (`posed run`). Defaults are what a USB camera on a Jetson needs; every
//! key is optional except where the source kind needs it (checked in [`validate`]).
//!
//! [`validate`] checks the file alone; what `posed run` also needs from the machine (the
//! socket's folder and group, the source and models on disk, the engine cache, labels
//! the models have) is checked by [`crate::daemon::setup::check_host`], at start and by
//! `posed config check`.
//!
//! ```toml
//! [source]
//! kind = "v4l2"                 # "v4l2" (default) or "sequence"
//! device = "/dev/video0"        # v4l2
//! format = "auto"               # "auto", "yuyv", "mjpeg", "nv12" or "rgb24"
//! width = 640
//! height = 480
//! fps = 30
//! io = "auto"                   # "auto", "mmap" or "userptr" (CUDA-mapped on Jetson)
//! intrinsics = [615.0, 0.0, 320.0, 0.0, 615.0, 240.0, 0.0, 0.0, 1.0]  # K, row-major
//! reopen_min_ms = 200           # a lost camera is reopened after this, doubling ...
//! reopen_max_ms = 5000          # ... up to this
//! path = "data/ycbv-mini/test"  # sequence: a BOP split or scene folder, or an image folder
//! glob = "frames/*.png"         # sequence: or images matching this (with intrinsics)
//! rate_hz = 10.0                # sequence: frames per second, 0 = whenever the pipeline is ready
//! loop = true                   # sequence: start again after the last image
//!
//! [pipeline]
//! models = "models"             # BOP models folder (models_info.json + obj_XXXXXX.ply)
//! objects = "detector"          # "detector" or "dataset-boxes" (sequence over a BOP split)
//! coarse_iterations = 1         # 0 to 100 (MAX_ITERATIONS)
//! refiner_iterations = 4        # 0 to 100
//! init = "zup-autodepth"
//! batch_size = 16               # default: engines.max_batch
//! detection_threshold = 0.0
//! one_instance_per_class = false
//! labels = [1, 5]               # object ids to keep (default: all); each must be a model
//! render_threads = 4            # 1 to 64; default: all cores
//! device = "cpu"                # "cpu" or "cuda": where crops, renders and updates run
//!
//! [stream]
//! socket = "/run/posed/poses.sock"  # at most 107 bytes (a Unix socket path), in a folder
//!                               # that exists; <socket>.lock beside it is posed's lock
//! mode = "0660"
//! group = "posed"               # default: the daemon's group; must exist
//! queue_frames = 8              # per subscriber; a slow one loses its oldest frames
//! stall_timeout_ms = 2000       # a subscriber that reads nothing for this long is dropped
//! max_subscribers = 64
//!
//! [service]
//! warmup_frames = 1             # frames run before READY=1, 0 to 100 (0 counts as 1)
//! status_interval_ms = 1000     # STATUS= and the log line, this often
//! idle_without_subscribers = false  # true: once ready, capture and inference pause while
//!                               # no subscriber is connected (saves power on battery)
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use crate::pipeline::{ComputeDevice, InitScheme};

/// Most coarse or refiner iterations per frame: CosyPose runs 1 and 4; far more only
/// stalls the daemon (a million would never finish a frame).
pub const MAX_ITERATIONS: usize = 100;

/// Most warm-up frames before READY=1: one pays the first frame's costs; a few more
/// settle caches; far more only delays READY=1 past systemd's start timeout.
pub const MAX_WARMUP_FRAMES: usize = 100;

/// `[source]`: where frames come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Camera or image sequence.
    pub kind: SourceKind,
    /// V4L2 device node.
    pub device: PathBuf,
    /// Pixel format to negotiate.
    pub format: CameraFormat,
    /// Requested width, pixels.
    pub width: u32,
    /// Requested height, pixels.
    pub height: u32,
    /// Requested frame rate.
    pub fps: u32,
    /// How V4L2 buffers are shared.
    pub io: CameraIo,
    /// Camera matrix K, row-major (required for a camera and for a glob).
    #[serde(deserialize_with = "super::exact_array_option")]
    pub intrinsics: Option<[f64; 9]>,
    /// First reopen delay after the camera is lost, milliseconds.
    pub reopen_min_ms: u64,
    /// Largest reopen delay, milliseconds.
    pub reopen_max_ms: u64,
    /// Sequence: a BOP split folder (scenes inside), a BOP scene folder, or an image folder.
    pub path: Option<PathBuf>,
    /// Sequence: a glob of PNG / JPEG files (`*` and `?` in the file name part).
    pub glob: Option<String>,
    /// Sequence: frames per second; 0 plays as fast as the pipeline takes them (each
    /// image is read when the inference thread waits for one: none is dropped).
    pub rate_hz: f64,
    /// Sequence: start again after the last image.
    #[serde(rename = "loop")]
    pub looping: bool,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            kind: SourceKind::V4l2,
            device: PathBuf::from("/dev/video0"),
            format: CameraFormat::Auto,
            width: 640,
            height: 480,
            fps: 30,
            io: CameraIo::Auto,
            intrinsics: None,
            reopen_min_ms: 200,
            reopen_max_ms: 5000,
            path: None,
            glob: None,
            rate_hz: 10.0,
            looping: true,
        }
    }
}

/// Kinds of frame source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A V4L2 camera.
    V4l2,
    /// Images from disk.
    Sequence,
}

/// Camera pixel formats posed reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraFormat {
    /// The first of RGB24, YUYV, NV12, MJPEG the camera offers at the size asked.
    Auto,
    /// Packed 4:2:2 (`YUYV`).
    Yuyv,
    /// Motion JPEG, decoded on the CPU.
    Mjpeg,
    /// 4:2:0, a Y plane then interleaved UV (`NV12`).
    Nv12,
    /// Packed 8-bit RGB (`RGB3`).
    Rgb24,
}

/// How V4L2 buffers are allocated and shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraIo {
    /// USERPTR with CUDA-mapped pinned memory when a CUDA device is in use, else MMAP.
    Auto,
    /// Driver-allocated buffers mapped into posed.
    Mmap,
    /// Buffers posed allocates and lends to the driver.
    Userptr,
}

/// `[pipeline]`: what the daemon runs on each frame.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// BOP models folder.
    pub models: Option<PathBuf>,
    /// Where a frame's objects come from.
    pub objects: ObjectsFrom,
    /// Coarse iterations.
    pub coarse_iterations: usize,
    /// Refiner iterations.
    pub refiner_iterations: usize,
    /// Initial poses from boxes.
    pub init: InitScheme,
    /// Objects per network pass (default: `engines.max_batch`).
    pub batch_size: Option<usize>,
    /// Keep detections scoring strictly above this.
    pub detection_threshold: f64,
    /// Keep the best detection of each object per frame.
    pub one_instance_per_class: bool,
    /// Object ids to keep (empty: all).
    pub labels: Vec<u32>,
    /// Renderer threads (default: all cores).
    pub render_threads: Option<usize>,
    /// Where crops, renderings and pose updates run (CUDA without a device: a warning
    /// and the CPU).
    pub device: ComputeDevice,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            models: None,
            objects: ObjectsFrom::Detector,
            coarse_iterations: 1,
            refiner_iterations: 4,
            init: InitScheme::ZupAutodepth,
            batch_size: None,
            detection_threshold: 0.0,
            one_instance_per_class: false,
            labels: Vec::new(),
            render_threads: None,
            device: ComputeDevice::Cpu,
        }
    }
}

/// Where a frame's objects (boxes, labels, scores) come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectsFrom {
    /// The detector network of `[networks]`.
    Detector,
    /// The ground-truth boxes of a BOP sequence (`scene_gt_info.json`), as oracle
    /// detections: for demos and tests without a trained detector.
    DatasetBoxes,
}

/// `[stream]`: the pose stream's Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Socket path.
    pub socket: PathBuf,
    /// Permission bits of the socket file, octal.
    pub mode: String,
    /// Group owning the socket file (default: the daemon's).
    pub group: Option<String>,
    /// Frames queued per subscriber before its oldest is dropped.
    pub queue_frames: usize,
    /// A subscriber whose socket accepts nothing for this long is disconnected, ms.
    pub stall_timeout_ms: u64,
    /// Subscribers at once; more are refused with a message.
    pub max_subscribers: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/posed/poses.sock"),
            mode: "0660".to_string(),
            group: None,
            queue_frames: 8,
            stall_timeout_ms: 2000,
            max_subscribers: 64,
        }
    }
}

impl StreamConfig {
    /// The permission bits of `mode`.
    pub fn mode_bits(&self) -> Option<u32> {
        let digits = self.mode.strip_prefix("0o").unwrap_or(&self.mode);
        u32::from_str_radix(digits, 8)
            .ok()
            .filter(|bits| *bits <= 0o777)
    }
}

/// `[service]`: systemd integration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Frames run before READY=1.
    pub warmup_frames: usize,
    /// How often STATUS= and the status log line are written, ms.
    pub status_interval_ms: u64,
    /// Once ready, pause capture and inference while no subscriber is connected: no one
    /// reads the poses, so computing them only spends the battery. A subscriber that
    /// connects gets poses of frames captured after it connected (frames a camera held
    /// in its queue meanwhile are dropped as stale).
    pub idle_without_subscribers: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            warmup_frames: 1,
            status_interval_ms: 1000,
            idle_without_subscribers: false,
        }
    }
}

/// Checks the daemon's sections against each other and against `[networks]`.
pub(super) fn validate(config: &super::Config) -> crate::Result<()> {
    let error = |key: &str, reason: String| crate::Error::Config {
        path: config.path.clone(),
        key: key.to_owned(),
        reason,
    };
    let source = &config.source;
    if let Some(k) = &source.intrinsics {
        let finite = k.iter().all(|v| v.is_finite());
        if !finite || k[0] <= 0.0 || k[4] <= 0.0 || k[6..] != [0.0, 0.0, 1.0] {
            return Err(error(
                "source.intrinsics",
                format!(
                    "expected K = [fx, 0, cx, 0, fy, cy, 0, 0, 1] with fx, fy > 0, found {k:?}"
                ),
            ));
        }
    }
    match source.kind {
        SourceKind::V4l2 => {
            for (key, value) in [
                ("source.width", source.width),
                ("source.height", source.height),
                ("source.fps", source.fps),
            ] {
                if value == 0 {
                    return Err(error(key, "expected at least 1, found 0".to_owned()));
                }
            }
            if source.intrinsics.is_none() {
                return Err(error(
                    "source.intrinsics",
                    "a camera needs its K (9 numbers, row-major): poses are in its frame"
                        .to_owned(),
                ));
            }
            if source.reopen_min_ms == 0 || source.reopen_min_ms > source.reopen_max_ms {
                return Err(error(
                    "source.reopen_min_ms",
                    format!(
                        "expected 1 ms up to reopen_max_ms ({} ms), found {} ms",
                        source.reopen_max_ms, source.reopen_min_ms
                    ),
                ));
            }
        }
        SourceKind::Sequence => {
            match (&source.path, &source.glob) {
                (None, None) => {
                    return Err(error(
                        "source.path",
                        "a sequence needs path (a BOP split or scene folder, or an image folder) \
                         or glob"
                            .to_owned(),
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(error(
                        "source.glob",
                        "give path or glob, not both".to_owned(),
                    ))
                }
                (None, Some(_)) if source.intrinsics.is_none() => {
                    return Err(error(
                        "source.intrinsics",
                        "images from a glob need their K (9 numbers, row-major)".to_owned(),
                    ))
                }
                _ => {}
            }
            if !(source.rate_hz == 0.0 || (0.001..=1000.0).contains(&source.rate_hz)) {
                return Err(error(
                    "source.rate_hz",
                    format!(
                        "expected frames per second from 0.001 to 1000, or 0 (as fast as \
                         possible), found {}",
                        source.rate_hz
                    ),
                ));
            }
        }
    }

    let pipeline = &config.pipeline;
    if pipeline.models.is_none() {
        return Err(error(
            "pipeline.models",
            "the daemon needs the objects' models (a BOP models folder)".to_owned(),
        ));
    }
    match pipeline.objects {
        ObjectsFrom::Detector if config.networks.detector.is_none() => {
            return Err(error(
                "networks.detector",
                "pipeline.objects = \"detector\" needs a detector network".to_owned(),
            ))
        }
        ObjectsFrom::DatasetBoxes
            if source.kind != SourceKind::Sequence || source.path.is_none() =>
        {
            return Err(error(
                "pipeline.objects",
                "\"dataset-boxes\" needs a sequence source over a BOP split or scene folder \
                 (source.kind = \"sequence\", source.path)"
                    .to_owned(),
            ))
        }
        _ => {}
    }
    if pipeline.coarse_iterations > 0 && config.networks.coarse.is_none() {
        return Err(error(
            "networks.coarse",
            format!(
                "pipeline.coarse_iterations = {} needs a coarse network",
                pipeline.coarse_iterations
            ),
        ));
    }
    if pipeline.refiner_iterations > 0 && config.networks.refiner.is_none() {
        return Err(error(
            "networks.refiner",
            format!(
                "pipeline.refiner_iterations = {} needs a refiner network",
                pipeline.refiner_iterations
            ),
        ));
    }
    if !pipeline.detection_threshold.is_finite() {
        return Err(error(
            "pipeline.detection_threshold",
            format!(
                "expected a finite number, found {}",
                pipeline.detection_threshold
            ),
        ));
    }
    for (key, value) in [
        ("pipeline.batch_size", pipeline.batch_size),
        ("pipeline.render_threads", pipeline.render_threads),
    ] {
        if value == Some(0) {
            return Err(error(key, "expected at least 1, found 0".to_owned()));
        }
    }
    if let Some(threads) = pipeline.render_threads {
        if threads > super::MAX_CPU_THREADS {
            return Err(error(
                "pipeline.render_threads",
                format!("expected 1 to {}, found {threads}", super::MAX_CPU_THREADS),
            ));
        }
    }
    for (key, value, most) in [
        (
            "pipeline.coarse_iterations",
            pipeline.coarse_iterations,
            MAX_ITERATIONS,
        ),
        (
            "pipeline.refiner_iterations",
            pipeline.refiner_iterations,
            MAX_ITERATIONS,
        ),
        (
            "service.warmup_frames",
            config.service.warmup_frames,
            MAX_WARMUP_FRAMES,
        ),
    ] {
        if value > most {
            return Err(error(key, format!("expected 0 to {most}, found {value}")));
        }
    }

    let stream = &config.stream;
    let socket = stream.socket.as_os_str().as_encoded_bytes();
    if socket.is_empty() {
        return Err(error("stream.socket", "expected a path".to_owned()));
    }
    if socket.contains(&0) {
        return Err(error(
            "stream.socket",
            "expected a path without NUL bytes".to_owned(),
        ));
    }
    let most = crate::daemon::unix::MAX_SOCKET_PATH_BYTES;
    if socket.len() > most {
        return Err(error(
            "stream.socket",
            format!(
                "a Unix socket path has at most {most} bytes, {} has {}",
                stream.socket.display(),
                socket.len()
            ),
        ));
    }
    if let Some(group) = &stream.group {
        if group.is_empty() || group.contains('\0') {
            return Err(error(
                "stream.group",
                format!("expected a group name, found \"{}\"", group.escape_debug()),
            ));
        }
    }
    if stream.mode_bits().is_none() {
        return Err(error(
            "stream.mode",
            format!(
                "expected octal permission bits such as \"0660\", found \"{}\"",
                stream.mode
            ),
        ));
    }
    for (key, value) in [
        ("stream.queue_frames", stream.queue_frames as u64),
        ("stream.max_subscribers", stream.max_subscribers as u64),
        ("stream.stall_timeout_ms", stream.stall_timeout_ms),
        (
            "service.status_interval_ms",
            config.service.status_interval_ms,
        ),
    ] {
        if value == 0 {
            return Err(error(key, "expected at least 1, found 0".to_owned()));
        }
    }
    // Each queued frame reserves a full message buffer (about 42 KB) per subscriber.
    for (key, value) in [
        ("stream.queue_frames", stream.queue_frames),
        ("stream.max_subscribers", stream.max_subscribers),
    ] {
        if value > 1024 {
            return Err(error(key, format!("expected at most 1024, found {value}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use crate::Error;

    const NETWORKS: &str =
        "[networks]\ndetector = \"d.onnx\"\ncoarse = \"c.onnx\"\nrefiner = \"r.onnx\"\n";

    fn check(text: &str) -> crate::Result<Config> {
        let config = Config::parse(Path::new("posed.toml"), text, Path::new("/etc/posed"))?;
        config.validate_daemon()?;
        Ok(config)
    }

    fn key_of(result: crate::Result<Config>) -> String {
        match result {
            Err(Error::Config { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn a_camera_config_validates_with_defaults() {
        let text = format!(
            "{NETWORKS}[source]\nintrinsics = [600.0, 0.0, 320.0, 0.0, 600.0, 240.0, 0.0, 0.0, 1.0]\n\
             [pipeline]\nmodels = \"models\"\n[stream]\nsocket = \"/tmp/p.sock\"\ngroup = \"video\"\n"
        );
        let config = check(&text).expect("valid");
        assert_eq!(config.source.device, Path::new("/dev/video0"));
        assert_eq!(
            config.pipeline.models.as_deref(),
            Some(Path::new("/etc/posed/models"))
        );
        assert_eq!(config.stream.mode_bits(), Some(0o660));
        assert_eq!(config.stream.group.as_deref(), Some("video"));
        assert_eq!(config.pipeline.device, crate::pipeline::ComputeDevice::Cpu);
        let on_cuda =
            check(&text.replace("[stream]", "device = \"cuda\"\n[stream]")).expect("valid");
        assert_eq!(
            on_cuda.pipeline.device,
            crate::pipeline::ComputeDevice::Cuda
        );
    }

    #[test]
    fn a_sequence_config_resolves_its_paths() {
        let text = format!(
            "{NETWORKS}[source]\nkind = \"sequence\"\npath = \"scenes\"\nrate_hz = 0.0\nloop = false\n\
             [pipeline]\nmodels = \"/abs/models\"\nobjects = \"dataset-boxes\"\n"
        );
        let config = check(&text).expect("valid");
        assert_eq!(
            config.source.path.as_deref(),
            Some(Path::new("/etc/posed/scenes"))
        );
        assert_eq!(
            config.pipeline.models.as_deref(),
            Some(Path::new("/abs/models"))
        );
        assert!(!config.source.looping);
    }

    #[test]
    fn the_caps_themselves_pass() {
        let camera =
            "[source]\nintrinsics = [600.0, 0.0, 320.0, 0.0, 600.0, 240.0, 0.0, 0.0, 1.0]\n";
        let text = format!(
            "{NETWORKS}{camera}[pipeline]\nmodels = \"m\"\nrender_threads = 64\n\
             coarse_iterations = 100\nrefiner_iterations = 100\n[stream]\nsocket = \"/{}\"\n\
             [service]\nwarmup_frames = 100\n",
            "s".repeat(106)
        );
        check(&text).expect("every value at its limit");
    }

    #[test]
    fn errors_name_the_key() {
        let camera =
            "[source]\nintrinsics = [600.0, 0.0, 320.0, 0.0, 600.0, 240.0, 0.0, 0.0, 1.0]\n";
        let models = "[pipeline]\nmodels = \"m\"\n";
        let cases = [
            (format!("{NETWORKS}{models}"), "source.intrinsics"),
            (format!("{NETWORKS}{camera}"), "pipeline.models"),
            (format!("{NETWORKS}{camera}{models}[stream]\nmode = \"rw\"\n"), "stream.mode"),
            (format!("{NETWORKS}{camera}{models}[stream]\nmode = \"1777\"\n"), "stream.mode"),
            (format!("{NETWORKS}{camera}{models}[stream]\nqueue_frames = 0\n"), "stream.queue_frames"),
            (format!("{NETWORKS}{camera}{models}[stream]\nqueue_frames = \"8\"\n"), "stream.queue_frames"),
            (format!("{NETWORKS}{camera}{models}[stream]\nport = 80\n"), "stream"),
            (format!("[networks]\ncoarse = \"c\"\nrefiner = \"r\"\n{camera}{models}"), "networks.detector"),
            (format!("[networks]\ndetector = \"d\"\nrefiner = \"r\"\n{camera}{models}"), "networks.coarse"),
            (format!("{NETWORKS}[source]\nkind = \"sequence\"\n{models}"), "source.path"),
            (format!("{NETWORKS}[source]\nkind = \"sequence\"\nglob = \"*.png\"\n{models}"), "source.intrinsics"),
            (format!("{NETWORKS}[source]\nkind = \"sequence\"\npath = \"p\"\nrate_hz = -1.0\n{models}"), "source.rate_hz"),
            (format!("{NETWORKS}[source]\nkind = \"sequence\"\npath = \"p\"\nrate_hz = 1e-300\n{models}"), "source.rate_hz"),
            (format!("{NETWORKS}{camera}{models}[stream]\nmax_subscribers = 100000000000\n"), "stream.max_subscribers"),
            (format!("{NETWORKS}[source]\nkind = \"webcam\"\n{models}"), "source.kind"),
            (format!("{NETWORKS}{camera}{models}objects = \"dataset-boxes\"\n"), "pipeline.objects"),
            (format!("{NETWORKS}[source]\nintrinsics = [0.0, 0.0, 320.0, 0.0, 600.0, 240.0, 0.0, 0.0, 1.0]\n{models}"), "source.intrinsics"),
            (format!("{NETWORKS}{camera}width = 0\n{models}"), "source.width"),
            (format!("{NETWORKS}{camera}{models}render_threads = 0\n"), "pipeline.render_threads"),
            (format!("{NETWORKS}{camera}{models}device = \"gpu\"\n"), "pipeline.device"),
            (format!("{NETWORKS}{camera}{models}render_threads = 100000\n"), "pipeline.render_threads"),
            (format!("{NETWORKS}{camera}{models}coarse_iterations = 1000000000\n"), "pipeline.coarse_iterations"),
            (format!("{NETWORKS}{camera}{models}refiner_iterations = 101\n"), "pipeline.refiner_iterations"),
            (format!("{NETWORKS}{camera}{models}[service]\nwarmup_frames = 1000000000\n"), "service.warmup_frames"),
            (format!("{NETWORKS}{camera}{models}[stream]\nsocket = \"/tmp/{}.sock\"\n", "y".repeat(120)), "stream.socket"),
            (format!("{NETWORKS}{camera}{models}[stream]\nsocket = \"/tmp/a\\u0000b\"\n"), "stream.socket"),
            (format!("{NETWORKS}{camera}{models}[stream]\ngroup = \"a\\u0000b\"\n"), "stream.group"),
            (format!("{NETWORKS}{camera}{models}[stream]\ngroup = \"\"\n"), "stream.group"),
            (format!("{NETWORKS}[source]\nintrinsics = [600.0, 0.0, 320.0, 0.0, 600.0, 240.0, 0.0, 0.0, 1.0, 7.0]\n{models}"), "source.intrinsics"),
        ];
        for (text, key) in cases {
            let found = key_of(check(&text));
            assert!(
                found.starts_with(key),
                "{text}\nexpected key {key}, found {found}"
            );
        }
    }
}
