"""Golden values for posed's crop points: CosyPose's MeshDataBase padding and
deterministic 2,000-point sample over a BOP models folder, computed the way CosyPose
does it (trimesh.load, mm -> m in float64, pad_stack_tensors with one RandomState(0)
across objects in models_info.json order, then RandomState(0).choice(n_padded, 2000,
replace=False) shared by every object, cast to float32).

    python tools/cosypose_points.py data/ycbv-mini/models > \
        runtime/src/pipeline/testdata/crop_points_ycbv_mini.json

Needs numpy and trimesh (pip install numpy trimesh). The padding and sampling lines
reproduce cosypose/lib3d/rigid_mesh_database.py and mesh_ops.py (not imported: CosyPose
needs torch and Python 3.7).
"""
import json
import sys
from pathlib import Path

import numpy as np
import trimesh


def main() -> None:
    models_dir = Path(sys.argv[1])
    infos = json.loads((models_dir / "models_info.json").read_text())
    points = []
    for obj_id in infos:  # json order, as BOPObjectDataset iterates it
        mesh = trimesh.load(models_dir / f"obj_{int(obj_id):06d}.ply")
        points.append(np.asarray(mesh.vertices, dtype=np.float64) * 0.001)
    n_max = max(len(p) for p in points)
    np_random = np.random.RandomState(0)
    padded = []
    for p in points:
        n_pad = n_max - len(p)
        if n_pad > 0:
            ids_pad = np_random.choice(np.arange(len(p)), size=n_pad)
            p = np.concatenate([p, p[ids_pad]], axis=0)
        padded.append(p)
    padded = np.stack(padded).astype(np.float32)
    point_ids = np.random.RandomState(0).choice(padded.shape[1], 2000, replace=False)
    sampled = padded[:, point_ids]
    out = {
        "n_padded": int(n_max),
        "first_point_ids": point_ids[:8].tolist(),
        "objects": [
            {
                "obj_id": int(obj_id),
                "n_vertices": int(len(points[i])),
                "first": sampled[i, :3].tolist(),
                "last": sampled[i, -3:].tolist(),
                "sum": sampled[i].astype(np.float64).sum(axis=0).tolist(),
            }
            for i, obj_id in enumerate(infos)
        ],
    }
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
