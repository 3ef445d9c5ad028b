//! The daemon's parts from a configuration file: source, networks, models, pipeline.

use std::time::Duration;

use posed_engines::Role;

use super::{DaemonOptions, DaemonParts, ObjectsProvider};
use crate::bop::models::ModelSet;
use crate::config::{Config, ObjectsFrom, SourceKind};
use crate::engines::make_backend;
use crate::pipeline::{
    open_compute_device, DetectionFilter, Detector, PipelineOptions, PoseNetworks,
    SingleViewPipeline,
};
use crate::predict::open_session;
use crate::source::sequence::{bop_boxes, SequenceSource};
use crate::source::v4l2::V4l2Source;
use crate::source::{Cuda, FrameSource};
use crate::{Error, Result};

/// Opens everything `config` names (validated first: errors name the key, then the file).
/// Networks are loaded (built, for TensorRT: from the engine cache when it has them).
///
/// # Errors
/// What [`Config::validate_daemon`], the source, the networks and the models refuse.
pub fn parts_from_config(config: &Config) -> Result<(DaemonParts, DaemonOptions)> {
    config.validate_daemon()?;
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
    let obj_ids: Vec<u32> = models.objects.keys().copied().collect();

    let backend = make_backend(&config.engines)?;
    let model_options = config.engines.model_options();
    let session = |role: Role| -> Result<Option<_>> {
        let path = match role {
            Role::Detector => &config.networks.detector,
            Role::Coarse => &config.networks.coarse,
            Role::Refiner => &config.networks.refiner,
        };
        path.as_deref()
            .map(|path| open_session(backend.as_ref(), path, role, model_options))
            .transpose()
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
