//! The daemon's parts from a configuration file: source, networks, models, pipeline.

use std::path::Path;
use std::time::Duration;

use posed_engines::Role;

use super::stream::check_socket_folder;
use super::{unix, DaemonOptions, DaemonParts, ObjectsProvider};
use crate::bop::models::ModelSet;
use crate::config::{Config, ObjectsFrom, SourceKind};
use crate::engines::make_backend;
use crate::pipeline::{
    open_compute_device, DetectionFilter, Detector, PipelineOptions, PoseNetworks,
    SingleViewPipeline,
};
use crate::predict::{open_session, uncovered_objects_warning};
use crate::source::sequence::{bop_boxes, SequenceSource};
use crate::source::v4l2::V4l2Source;
use crate::source::{Cuda, FrameSource};
use crate::{Error, Result};

/// When [`check_config`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checking {
    /// `posed run` starting: everything must be in place now.
    AtStart,
    /// `posed config check`, maybe before the service has ever started: the socket's
    /// folder may be a runtime directory (`/run/NAME`) that systemd creates when the
    /// service starts (RuntimeDirectory=).
    Ahead,
}

/// Everything `posed run` checks before it loads anything, and `posed config check` with
/// it: the file alone ([`Config::validate_daemon`]), then what its keys name on this
/// machine: the socket's folder, the socket's group, the sequence's path, the models'
/// folder and the engine cache. Errors name the key. Returns notes: what [`Checking::Ahead`]
/// lets pass that `posed run` started by hand would refuse.
///
/// # Errors
/// [`Error::Config`] naming the key.
pub fn check_config(config: &Config, when: Checking) -> Result<Vec<String>> {
    config.validate_daemon()?;
    let error = |key: &str, reason: String| Error::Config {
        path: config.path.clone(),
        key: key.to_owned(),
        reason,
    };
    let mut notes = Vec::new();

    let socket = &config.stream.socket;
    if let Err(reason) = check_socket_folder(socket) {
        let folder = socket.parent().unwrap_or(Path::new(""));
        let runtime_directory = folder.parent() == Some(Path::new("/run"))
            && Path::new("/run").is_dir()
            && std::fs::symlink_metadata(folder).is_err();
        if when == Checking::Ahead && runtime_directory {
            notes.push(format!(
                "stream.socket: {} does not exist yet; systemd creates it when the service \
                 starts (RuntimeDirectory={}), `posed run` started by hand needs it made first",
                folder.display(),
                folder
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ));
        } else {
            return Err(error(
                "stream.socket",
                format!("{}: {reason}", socket.display()),
            ));
        }
    }
    if let Some(group) = &config.stream.group {
        unix::group_id(group).map_err(|reason| error("stream.group", reason))?;
    }
    if config.source.kind == SourceKind::Sequence {
        if let Some(path) = &config.source.path {
            if std::fs::metadata(path).is_err() {
                return Err(error(
                    "source.path",
                    format!(
                        "{} does not exist (expected a BOP split or scene folder, or a folder \
                         of images)",
                        path.display()
                    ),
                ));
            }
        }
    }
    if let Some(models) = &config.pipeline.models {
        if !models.is_dir() {
            return Err(error(
                "pipeline.models",
                format!(
                    "{} is not a folder (expected a BOP models folder: models_info.json and \
                     obj_XXXXXX.ply)",
                    models.display()
                ),
            ));
        }
    }
    // The cache is created when missing: the nearest part of its path that exists must be
    // a folder.
    let cache = config.engines.cache_dir();
    if let Some(existing) = cache.ancestors().find(|p| std::fs::metadata(p).is_ok()) {
        if !existing.is_dir() {
            return Err(error(
                "engines.cache_dir",
                format!(
                    "{}{} is not a folder, so the engine cache {} cannot be made",
                    existing.display(),
                    if config.engines.cache_dir.is_none() {
                        " (the default cache folder: $POSED_CACHE_DIR, else \
                         $XDG_CACHE_HOME/posed/engines)"
                    } else {
                        ""
                    },
                    cache.display()
                ),
            ));
        }
    }
    Ok(notes)
}

/// `pipeline.labels` must name objects of the models: a label nobody has would filter
/// every detection out, silently.
///
/// # Errors
/// [`Error::Config`] naming the label.
pub fn check_labels(config: &Config, models: &ModelSet) -> Result<()> {
    for (i, label) in config.pipeline.labels.iter().enumerate() {
        if !models.objects.contains_key(label) {
            let known: Vec<String> = models.objects.keys().take(32).map(u32::to_string).collect();
            return Err(Error::Config {
                path: config.path.clone(),
                key: format!("pipeline.labels[{i}]"),
                reason: format!(
                    "object {label} is not among the {} models of pipeline.models (objects {}{})",
                    models.objects.len(),
                    known.join(", "),
                    if models.objects.len() > known.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ),
            });
        }
    }
    Ok(())
}

/// Opens everything `config` names (checked first by [`check_config`]: errors name the
/// key, then the file). Networks are loaded (built, for TensorRT: from the engine cache
/// when it has them).
///
/// # Errors
/// What [`check_config`], [`check_labels`], the source, the networks and the models
/// refuse.
pub fn parts_from_config(config: &Config) -> Result<(DaemonParts, DaemonOptions)> {
    check_config(config, Checking::AtStart)?;
    let models_dir = config
        .pipeline
        .models
        .as_deref()
        .ok_or_else(|| Error::Config {
            path: config.path.clone(),
            key: "pipeline.models".to_owned(),
            reason: "missing".to_owned(),
        })?;
    let models = ModelSet::load(models_dir)?;
    check_labels(config, &models)?;
    let obj_ids: Vec<u32> = models.objects.keys().copied().collect();

    let backend = make_backend(&config.engines)?;
    let model_options = config.engines.model_options();
    let session = |role: Role| -> Result<Option<_>> {
        let path = match role {
            Role::Detector => &config.networks.detector,
            Role::Coarse => &config.networks.coarse,
            Role::Refiner => &config.networks.refiner,
        };
        let Some(path) = path.as_deref() else {
            return Ok(None);
        };
        let (session, network) = open_session(backend.as_ref(), path, role, model_options)?;
        let labels = &config.pipeline.labels;
        if let Some(warning) = uncovered_objects_warning(&network, role, labels, &models) {
            tracing::warn!("networks.{role}: {warning}");
        }
        Ok(Some((session, network)))
    };
    let pipeline_config = &config.pipeline;
    let networks = PoseNetworks {
        coarse: if pipeline_config.coarse_iterations > 0 {
            session(Role::Coarse)?.map(|(s, _)| s)
        } else {
            None
        },
        refiner: if pipeline_config.refiner_iterations > 0 {
            session(Role::Refiner)?.map(|(s, _)| s)
        } else {
            None
        },
    };
    let options = PipelineOptions {
        coarse_iterations: pipeline_config.coarse_iterations,
        refiner_iterations: pipeline_config.refiner_iterations,
        batch_size: pipeline_config
            .batch_size
            .unwrap_or(config.engines.max_batch),
        render_threads: pipeline_config
            .render_threads
            .unwrap_or(PipelineOptions::default().render_threads),
        ..PipelineOptions::default()
    };
    // Every network is loaded (a TensorRT engine may be built: minutes) before the camera
    // starts streaming, so that its first frames are not ones queued during the build.
    let objects = match pipeline_config.objects {
        ObjectsFrom::Detector => {
            let (session, network) = session(Role::Detector)?.ok_or_else(|| Error::Config {
                path: config.path.clone(),
                key: "networks.detector".to_owned(),
                reason: "pipeline.objects = \"detector\" needs a detector network".to_owned(),
            })?;
            ObjectsProvider::Detector(Box::new(Detector::new(session, network.sidecar())?))
        }
        ObjectsFrom::DatasetBoxes => {
            let path = config.source.path.as_deref().ok_or_else(|| Error::Config {
                path: config.path.clone(),
                key: "source.path".to_owned(),
                reason: "dataset boxes need a BOP split or scene folder".to_owned(),
            })?;
            ObjectsProvider::DatasetBoxes(bop_boxes(path)?)
        }
    };

    // One CUDA device for the camera (buffers and frames mapped into it, colour
    // conversion) and the loop; the source first: its image size bounds the loop's device
    // buffers. Whatever of the GPU cannot be had falls back to the CPU with a warning.
    let (cuda, reason) = open_compute_device(pipeline_config.device)?;
    let source = open_source(config, cuda.as_ref())?;
    let info = source.info();
    let (pipeline, later) = SingleViewPipeline::on_device_or_cpu(
        &models,
        networks,
        options,
        cuda.as_ref(),
        (info.width, info.height),
    )?;
    if let Some(reason) = reason.or(later) {
        tracing::warn!("pipeline.device = \"cuda\": {reason}");
    }

    let parts = DaemonParts {
        source,
        objects,
        filter: DetectionFilter {
            threshold: pipeline_config.detection_threshold,
            one_instance_per_class: pipeline_config.one_instance_per_class,
            obj_ids: pipeline_config.labels.clone(),
        },
        init: pipeline_config.init,
        pipeline,
        obj_ids,
    };
    let daemon_options = DaemonOptions {
        stream: config.stream.clone(),
        service: config.service.clone(),
        reopen_min: Duration::from_millis(config.source.reopen_min_ms),
        reopen_max: Duration::from_millis(config.source.reopen_max_ms),
        max_frames: None,
    };
    Ok((parts, daemon_options))
}

/// The source of `[source]`: with a CUDA device, frames in memory mapped into it and a
/// camera's converted there from buffers mapped into it; else on the heap and the CPU.
fn open_source(config: &Config, cuda: Option<&Cuda>) -> Result<Box<dyn FrameSource>> {
    let source = &config.source;
    #[cfg(feature = "cuda")]
    if let Some(device) = cuda {
        return Ok(match source.kind {
            SourceKind::Sequence => Box::new(SequenceSource::open(source)?.map_frames_into(device)),
            SourceKind::V4l2 => Box::new(V4l2Source::open_with_cuda(source, device)?),
        });
    }
    #[cfg(not(feature = "cuda"))]
    if let Some(never) = cuda {
        match *never {}
    }
    Ok(match source.kind {
        SourceKind::Sequence => Box::new(SequenceSource::open(source)?),
        SourceKind::V4l2 => Box::new(V4l2Source::open(source)?),
    })
}
