//! The loop's geometry on a CUDA device: crop boxes and `K_crop`, RoIAlign into the
//! network input, the renderings, and the pose update, each a kernel of posed-kernels
//! whose CPU twin is what [`SingleViewPipeline`](super::SingleViewPipeline) runs on the
//! CPU. The network input is then copied to the host for the backend (the CPU backend
//! reads host memory; a device-resident TensorRT binding is the next step).
//!
//! Every buffer, on the device and its host staging, is allocated in
//! [`GpuGeometry::new`] for the pipeline's batch size and the largest camera image.

use posed_kernels::cosypose::{BoxXyxy, CROP_HEIGHT, CROP_WIDTH};
use posed_kernels::cuda::cosypose::Crop;
use posed_kernels::cuda::{
    CudaDevice, GpuCosyPose, GpuRenderLimits, GpuRenderer, MappedHostBuffer,
};
use posed_kernels::render::{Mesh, RenderItem, RenderTarget, Shading};
use posed_kernels::{Intrinsics, KernelError, Pose};

use posed_engines::contract::POSE_UPDATE_LEN;

/// The GPU side of one pipeline.
pub(super) struct GpuGeometry {
    cosypose: GpuCosyPose,
    /// The GPU shares the host's memory: mapped images are cropped in place.
    integrated: bool,
    renderer: GpuRenderer,
    /// Host staging of one batch, capacity `batch_size` each.
    poses: Vec<Pose>,
    objects: Vec<usize>,
    crops: Vec<Result<Crop, KernelError>>,
    boxes: Vec<BoxXyxy>,
    roi_results: Vec<Result<(), KernelError>>,
    outputs: Vec<[f32; POSE_UPDATE_LEN]>,
    k_crops: Vec<Intrinsics>,
    updated: Vec<Result<Pose, KernelError>>,
}

impl std::fmt::Debug for GpuGeometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuGeometry")
            .field("cosypose", &self.cosypose)
            .field("renderer", &self.renderer)
            .finish_non_exhaustive()
    }
}

impl GpuGeometry {
    /// Compiles (or loads from the kernel cache) the kernels for `device`, uploads the
    /// meshes and the crop points of every object (both indexed as the pipeline's
    /// `mesh_of_object`), and allocates a batch of `batch_size` crops of images of at most
    /// `max_width` x `max_height`.
    pub(super) fn new(
        device: &CudaDevice,
        meshes: &[Mesh],
        object_points_m: &[&[[f32; 3]]],
        batch_size: usize,
        max_width: usize,
        max_height: usize,
    ) -> Result<Self, KernelError> {
        let cosypose =
            GpuCosyPose::new(device, batch_size, max_width, max_height, object_points_m)?;
        let limits = GpuRenderLimits::for_batch(meshes, batch_size, CROP_WIDTH, CROP_HEIGHT, 1);
        let renderer = GpuRenderer::new(device, meshes, limits)?;
        Ok(Self {
            cosypose,
            integrated: device.integrated(),
            renderer,
            poses: Vec::with_capacity(batch_size),
            objects: Vec::with_capacity(batch_size),
            crops: Vec::with_capacity(batch_size),
            boxes: Vec::with_capacity(batch_size),
            roi_results: Vec::with_capacity(batch_size),
            outputs: Vec::with_capacity(batch_size),
            k_crops: Vec::with_capacity(batch_size),
            updated: Vec::with_capacity(batch_size),
        })
    }

    /// Crop boxes and `K_crop` of `(pose, object index)` pairs, one result per pair (the
    /// CPU twins' `crop_box` then `k_crop`, errors included).
    pub(super) fn crops(
        &mut self,
        k: &Intrinsics,
        width: usize,
        height: usize,
        candidates: impl Iterator<Item = (Pose, usize)>,
    ) -> Result<&[Result<Crop, KernelError>], KernelError> {
        self.poses.clear();
        self.objects.clear();
        for (pose, object) in candidates {
            self.poses.push(pose);
            self.objects.push(object);
        }
        self.crops.clear();
        self.crops.resize(self.poses.len(), Ok(empty_crop()));
        self.cosypose.crop_batch(
            k,
            width,
            height,
            &self.poses,
            &self.objects,
            &mut self.crops,
        )?;
        Ok(&self.crops)
    }

    /// RoIAlign of the camera image over `boxes` into channels 0-2 of the device network
    /// input, then the first `input.len()` floats of that input copied into `input` (the
    /// render channels 3-5 come back as zeros: the caller writes them after). An image in
    /// `mapped` memory is read in place on an integrated GPU (a Jetson) and copied up on a
    /// discrete one, where reading each texel over PCIe for every batch costs more.
    pub(super) fn crop_into(
        &mut self,
        rgb: &[u8],
        mapped: Option<&MappedHostBuffer>,
        width: usize,
        height: usize,
        boxes: impl Iterator<Item = BoxXyxy>,
        input: &mut [f32],
    ) -> Result<(), KernelError> {
        self.boxes.clear();
        self.boxes.extend(boxes);
        self.roi_results.clear();
        self.roi_results.resize(self.boxes.len(), Ok(()));
        match mapped.filter(|_| self.integrated) {
            Some(memory) => self.cosypose.roi_align_batch_mapped(
                rgb,
                memory,
                width,
                height,
                &self.boxes,
                &mut self.roi_results,
            )?,
            None => self.cosypose.roi_align_batch(
                rgb,
                width,
                height,
                &self.boxes,
                &mut self.roi_results,
            )?,
        }
        if let Some(Err(error)) = self.roi_results.iter().find(|r| r.is_err()) {
            return Err(error.clone());
        }
        self.cosypose.read_network_input(input)
    }

    /// Renders as [`CpuRenderer::render`](posed_kernels::render::CpuRenderer::render) does.
    pub(super) fn render(
        &mut self,
        items: &[RenderItem<'_>],
        targets: &mut [RenderTarget],
        shading: &Shading,
    ) -> Result<(), KernelError> {
        self.renderer.render(items, targets, shading)
    }

    /// The pose update of each `(pose, network output, K_crop)` triple (the CPU twin's
    /// `apply_update`, errors included).
    pub(super) fn updates(
        &mut self,
        items: impl Iterator<Item = (Pose, [f32; POSE_UPDATE_LEN], Intrinsics)>,
    ) -> Result<&[Result<Pose, KernelError>], KernelError> {
        self.poses.clear();
        self.outputs.clear();
        self.k_crops.clear();
        for (pose, output, k_crop) in items {
            self.poses.push(pose);
            self.outputs.push(output);
            self.k_crops.push(k_crop);
        }
        self.updated.clear();
        self.updated.resize(self.poses.len(), Ok(Pose::identity()));
        self.cosypose.apply_update_batch(
            &self.poses,
            &self.outputs,
            &self.k_crops,
            &mut self.updated,
        )?;
        Ok(&self.updated)
    }
}

/// A placeholder the kernels overwrite.
fn empty_crop() -> Crop {
    Crop {
        box_xyxy: [0.0; 4],
        k_crop: Intrinsics::from_row_major(&[0.0; 9]),
    }
}
