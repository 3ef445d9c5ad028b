//! The daemon's parts from a configuration file: source, networks, models, pipeline.

use std::time::Duration;

use posed_engines::Role;

use super::{DaemonOptions, DaemonParts, ObjectsProvider};
use crate::bop::models::ModelSet;
use crate::config::{Config, ObjectsFrom, SourceKind};
use crate::engines::make_backend;
use crate::pipeline::{
    DetectionFilter, Detector, PipelineOptions, PoseNetworks, SingleViewPipeline,
};
use crate::predict::open_session;
use crate::source::sequence::{bop_boxes, SequenceSource};
use crate::source::v4l2::V4l2Source;
use crate::source::FrameSource;
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

    // The source first: its image size bounds the pipeline's device buffers.
    #[cfg(feature = "cuda")]
    let (source, pipeline) = {
        let mut cuda = open_cuda(pipeline_config.device)?;
        let source = match &cuda {
            Some(device) => match open_source_on_cuda(config, device) {
                Ok(source) => Some(source),
                // No NVRTC for the colour conversion: everything on the CPU.
                Err(Error::Kernel {
                    context,
                    source: posed_kernels::KernelError::CudaUnavailable { reason },
                }) => {
                    tracing::warn!(
                        "pipeline.device = \"cuda\": {context}: {reason}; everything runs on \
                         the CPU"
                    );
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let source: Box<dyn FrameSource> = match source {
            Some(source) => source,
            None => {
                cuda = None;
                open_source(config)?
            }
        };
        let info = source.info();
        let (pipeline, fallback) = match &cuda {
            Some(device) => SingleViewPipeline::on_cuda_or_cpu(
                &models,
                networks,
                options,
                device,
                (info.width, info.height),
            )?,
            None => (SingleViewPipeline::new(&models, networks, options)?, None),
        };
        if let Some(reason) = fallback {
            tracing::warn!("pipeline.device = \"cuda\": {reason}");
        }
        (source, pipeline)
    };
    #[cfg(not(feature = "cuda"))]
    let (source, pipeline) = {
        let source = open_source(config)?;
        let info = source.info();
        let (pipeline, fallback) = SingleViewPipeline::for_device(
            &models,
            networks,
            options,
            pipeline_config.device,
            (info.width, info.height),
        )?;
        if let Some(reason) = fallback {
            tracing::warn!("pipeline.device = \"cuda\": {reason}");
        }
        (source, pipeline)
    };

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

/// The CUDA device of `pipeline.device = "cuda"`, opened once for the camera (mapped
/// buffers, colour conversion) and the loop. Without a usable device: a warning, and
/// `None` (everything on the CPU).
///
/// # Errors
/// CUDA errors other than "no driver / no device".
#[cfg(feature = "cuda")]
fn open_cuda(
    device: crate::pipeline::ComputeDevice,
) -> Result<Option<posed_kernels::cuda::CudaDevice>> {
    use posed_kernels::KernelError;
    if device != crate::pipeline::ComputeDevice::Cuda {
        return Ok(None);
    }
    match posed_kernels::cuda::CudaDevice::open(0) {
        Ok(device) => {
            tracing::info!(
                "CUDA device 0: {} (sm_{}{}, {})",
                device.name(),
                device.compute_capability().0,
                device.compute_capability().1,
                if device.integrated() {
                    "integrated: camera frames are read in place"
                } else {
                    "discrete"
                }
            );
            Ok(Some(device))
        }
        Err(KernelError::CudaUnavailable { reason }) => {
            tracing::warn!(
                "pipeline.device = \"cuda\": no usable CUDA device ({reason}); the loop runs \
                 on the CPU"
            );
            Ok(None)
        }
        Err(source) => Err(Error::Kernel {
            context: "opening CUDA device 0 (pipeline.device = \"cuda\")".to_owned(),
            source,
        }),
    }
}

/// The source of `[source]`, frames on the heap, converted on the CPU.
fn open_source(config: &Config) -> Result<Box<dyn FrameSource>> {
    Ok(match config.source.kind {
        SourceKind::Sequence => Box::new(SequenceSource::open(&config.source)?),
        SourceKind::V4l2 => Box::new(V4l2Source::open(&config.source)?),
    })
}

/// The source of `[source]` for a loop on `device`: frames in memory mapped into it, a
/// camera's converted there from buffers mapped into it.
#[cfg(feature = "cuda")]
fn open_source_on_cuda(
    config: &Config,
    device: &posed_kernels::cuda::CudaDevice,
) -> Result<Box<dyn FrameSource>> {
    Ok(match config.source.kind {
        SourceKind::Sequence => {
            Box::new(SequenceSource::open(&config.source)?.map_frames_into(device))
        }
        SourceKind::V4l2 => Box::new(V4l2Source::open_with_cuda(&config.source, device)?),
    })
}
