//! ADD and ADD-S on the CUDA device for `posed eval --device cuda`: every (estimate,
//! ground truth) pair of an object in one batch, through the kernels' `GpuPoseMetrics`
//! (the twin of the CPU metrics, bit for bit by construction).

use std::collections::BTreeMap;

use posed_kernels::cuda::metrics::GpuPoseMetrics;
use posed_kernels::cuda::CudaDevice;
use posed_kernels::metrics::PoseErrorModel;
use posed_kernels::Pose;

use super::Group;
use crate::bop::results::EstimateRow;
use crate::{Error, Result};

/// Opens the first CUDA device, or says why not.
pub(super) fn open_device() -> std::result::Result<CudaDevice, String> {
    CudaDevice::open(0).map_err(|error| error.to_string())
}

/// Fills `add` and `adds` of every pair of `groups` on `device` (ADD only for the ranks
/// CosyPose's meters read, NaN elsewhere, as the CPU path leaves them).
pub(super) fn fill_add_adds(
    device: &CudaDevice,
    groups: &mut [Group<'_>],
    rows: &[EstimateRow],
    models: &BTreeMap<u32, PoseErrorModel>,
) -> Result<()> {
    let kernel_error = |obj_id: u32| {
        move |source| Error::Kernel {
            context: format!(
                "ADD / ADD-S of object {obj_id} on CUDA device {}",
                device.name()
            ),
            source,
        }
    };
    for (&obj_id, model) in models {
        // (group, pair) of every pair of this object, and the poses.
        let mut slots = Vec::new();
        let mut pairs: Vec<(Pose, Pose)> = Vec::new();
        for (group_index, group) in groups.iter().enumerate() {
            if group.obj_id != obj_id {
                continue;
            }
            for (rank, &row) in group.estimates.iter().enumerate() {
                let est = rows[row].estimate.camera_from_object;
                for (g, &gt_idx) in group.gt.iter().enumerate() {
                    let gt = group.image.gt[gt_idx].camera_from_object;
                    slots.push((group_index, rank * group.gt.len() + g, rank));
                    pairs.push((gt, est));
                }
            }
        }
        if pairs.is_empty() {
            continue;
        }
        let mut metrics =
            GpuPoseMetrics::new(device, model.points_m()).map_err(kernel_error(obj_id))?;
        let mut add = vec![f64::NAN; pairs.len()];
        let mut adds = vec![f64::NAN; pairs.len()];
        metrics
            .add_batch(&pairs, &mut add)
            .map_err(kernel_error(obj_id))?;
        metrics
            .adds_batch(&pairs, &mut adds)
            .map_err(kernel_error(obj_id))?;
        for (i, &(group_index, pair, rank)) in slots.iter().enumerate() {
            let group = &mut groups[group_index];
            let errors = &mut group.errors[pair];
            errors.add = if rank < group.cosypose_n_top {
                add[i]
            } else {
                f64::NAN
            };
            errors.adds = adds[i];
        }
    }
    Ok(())
}
