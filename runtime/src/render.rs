//! Rendering BOP objects: object models turned into renderer meshes once, and whole
//! scenes (several objects occluding each other) rendered at a dataset image's camera.

use std::collections::BTreeMap;
use std::path::Path;

use posed_kernels::render::{
    Camera, CpuRenderer, Instance, Mesh, RenderItem, RenderTarget, Shading, Texture, TextureCoords,
};
use posed_kernels::{Intrinsics, KernelError, Pose};

use crate::bop::images::read_rgb;
use crate::bop::models::{ModelSet, ObjectModel};
use crate::{Error, Result};

/// Builds the renderer mesh of an object model (positions already in metres; normals and
/// vertex colours when the PLY has them).
///
/// Textures, as CosyPose renders BOP models (white material, the texture as albedo): when
/// the PLY names a texture (`comment TextureFile <name>`, relative to the PLY's folder)
/// and has texture coordinates (the faces' `texcoord`, preferred, else the vertices'
/// `texture_u, texture_v`), the texture is read and replaces the vertex colours. A PLY
/// that names a texture but has no texture coordinates renders with its vertex colours
/// (white when it has none): the texture is ignored, as it cannot be mapped.
///
/// # Errors
/// [`Error::Kernel`] naming the PLY file when the mesh cannot be rendered (no triangles,
/// non-finite values, too many triangles, bad texture coordinates or texture size);
/// [`Error::Image`] naming the PLY and the texture file when the texture cannot be read or
/// decoded as an 8-bit RGB image.
pub fn object_mesh(model: &ObjectModel) -> Result<Mesh> {
    let ply = &model.mesh;
    let kernel_error = |source| Error::Kernel {
        context: model.mesh_path.display().to_string(),
        source,
    };
    let positions_m = ply.positions.iter().map(|p| p.map(|v| v as f32)).collect();
    let mesh = Mesh::new(
        positions_m,
        ply.triangles.clone(),
        ply.normals.clone(),
        ply.colors_rgb.as_deref(),
    )
    .map_err(kernel_error)?;
    let uvs = match (&ply.face_texcoords, &ply.vertex_texcoords) {
        (Some(corners), _) => TextureCoords::PerCorner(corners.clone()),
        (None, Some(vertices)) => TextureCoords::PerVertex(vertices.clone()),
        (None, None) => return Ok(mesh),
    };
    let Some(texture_file) = &ply.texture_file else {
        return Ok(mesh);
    };
    let texture_path = model
        .mesh_path
        .parent()
        .unwrap_or_else(|| Path::new(""))
        .join(texture_file);
    let image = read_rgb(&texture_path).map_err(|error| Error::Image {
        path: model.mesh_path.clone(),
        reason: format!(
            "cannot read its texture {} (TextureFile {texture_file}): {error}",
            texture_path.display()
        ),
    })?;
    let texture = Texture::new(image.width as usize, image.height as usize, image.pixels).map_err(
        |source| Error::Kernel {
            context: format!(
                "{}: texture {}",
                model.mesh_path.display(),
                texture_path.display()
            ),
            source,
        },
    )?;
    mesh.with_texture(texture, uvs).map_err(kernel_error)
}

/// A CPU renderer holding every object of a model set, addressed by BOP object id.
#[derive(Debug)]
pub struct ObjectRenderer {
    renderer: CpuRenderer,
    mesh_of_object: BTreeMap<u32, usize>,
    instances: Vec<Instance>,
    targets: Vec<RenderTarget>,
}

impl ObjectRenderer {
    /// Builds the meshes of every model, for a renderer using `threads` threads.
    ///
    /// # Errors
    /// See [`object_mesh`].
    pub fn new(models: &ModelSet, threads: usize) -> Result<Self> {
        let mut meshes = Vec::with_capacity(models.objects.len());
        let mut mesh_of_object = BTreeMap::new();
        for (obj_id, model) in &models.objects {
            mesh_of_object.insert(*obj_id, meshes.len());
            meshes.push(object_mesh(model)?);
        }
        Ok(Self {
            renderer: CpuRenderer::new(meshes, threads),
            mesh_of_object,
            instances: Vec::new(),
            targets: vec![RenderTarget::new(0, 0)],
        })
    }

    /// The renderer's mesh index of `obj_id`.
    pub fn mesh_index(&self, obj_id: u32) -> Option<usize> {
        self.mesh_of_object.get(&obj_id).copied()
    }

    /// The underlying renderer, for batched crops.
    pub fn renderer_mut(&mut self) -> &mut CpuRenderer {
        &mut self.renderer
    }

    /// Renders the objects `(obj_id, camera_from_object)` together into one image of
    /// `width` x `height` at intrinsics `intrinsics`; the mask holds 1 + the index in
    /// `objects` of the visible object. The buffers are reused from call to call.
    ///
    /// # Errors
    /// [`Error::Kernel`] for an object id without a model, or what the renderer refuses
    /// (non-finite pose, more than 255 objects).
    pub fn render_scene(
        &mut self,
        intrinsics: &Intrinsics,
        width: usize,
        height: usize,
        objects: &[(u32, Pose)],
        shading: &Shading,
    ) -> Result<&RenderTarget> {
        self.instances.clear();
        for &(obj_id, camera_from_object) in objects {
            let mesh = self.mesh_index(obj_id).ok_or_else(|| Error::Kernel {
                context: format!("rendering object {obj_id}"),
                source: KernelError::InvalidMesh {
                    reason: "the dataset has no model with this object id",
                },
            })?;
            self.instances.push(Instance {
                mesh,
                camera_from_object,
            });
        }
        let target = &mut self.targets[0];
        if target.width() != width || target.height() != height {
            *target = RenderTarget::new(width, height);
        }
        let item = RenderItem {
            camera: Camera {
                intrinsics: *intrinsics,
                width,
                height,
            },
            instances: &self.instances,
        };
        self.renderer
            .render(&[item], &mut self.targets, shading)
            .map_err(|source| Error::Kernel {
                context: "rendering a scene".to_string(),
                source,
            })?;
        Ok(&self.targets[0])
    }
}
