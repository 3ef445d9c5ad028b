#!/usr/bin/env python3
"""posed's CPU renderer against pybullet's TinyRenderer on the same crops, in one run.

The batch is the refiner-sized one of `render_crops` (benches/src/bin/render_crops.rs):
the five ycbv-mini objects, each alone in a 240 x 320 crop with its own K, RGB + depth +
mask. This script builds and runs `render_crops` (which also writes the batch as JSON),
then renders the very same crops with pybullet's CPU TinyRenderer, one DIRECT client per
object as CosyPose keeps one renderer process per worker, and prints both timings, the
ratio, and the object pixel counts of both renderers as a check that they drew the same
thing.

Usage:
    python3 -m venv /tmp/pyb && /tmp/pyb/bin/pip install pybullet numpy
    /tmp/pyb/bin/python benches/pybullet_compare.py [--iterations 100] [--threads 2]

pybullet renders single-threaded (one image per call); posed uses --threads threads.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pybullet as pb

REPO = Path(__file__).resolve().parent.parent


def read_ply(path):
    """Vertices (metres) and triangles of a binary little-endian BOP PLY."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise SystemExit(f"{path}: expected a binary little-endian PLY")
    types = {"float": "<f4", "double": "<f8", "uchar": "u1", "uint8": "u1", "int": "<i4", "uint": "<u4"}
    vertex_count, face_count, vertex_props, element = 0, 0, [], None
    for line in header:
        words = line.split()
        if words[:1] == ["element"]:
            element = words[1]
            if element == "vertex":
                vertex_count = int(words[2])
            elif element == "face":
                face_count = int(words[2])
        elif words[:1] == ["property"] and element == "vertex":
            vertex_props.append((words[2], types[words[1]]))
    vertex_dtype = np.dtype(vertex_props)
    vertices = np.frombuffer(data, vertex_dtype, vertex_count, end)
    offset = end + vertex_count * vertex_dtype.itemsize
    face_dtype = np.dtype([("n", "u1"), ("i", "<i4", (3,))])
    faces = np.frombuffer(data, face_dtype, face_count, offset)
    if not np.all(faces["n"] == 3):
        raise SystemExit(f"{path}: expected triangles only")
    xyz = np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=1).astype(np.float64) * 1e-3
    return xyz, faces["i"].reshape(-1)


def gl_projection(K, width, height, near=0.01, far=10.0):
    """OpenGL projection from OpenCV intrinsics (pixel centres at integer coordinates)."""
    fx, fy, cx, cy = K[0][0], K[1][1], K[0][2], K[1][2]
    return np.array(
        [
            [2 * fx / width, 0, 1 - 2 * (cx + 0.5) / width, 0],
            [0, 2 * fy / height, 2 * (cy + 0.5) / height - 1, 0],
            [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
            [0, 0, -1, 0],
        ]
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        batch_path = Path(tmp) / "batch.json"
        posed = subprocess.run(
            ["cargo", "run", "--release", "--quiet", "-p", "posed-benches", "--bin", "render_crops", "--",
             "--threads", str(args.threads), "--iterations", str(args.iterations * 5),
             "--write-batch", str(batch_path)],
            cwd=REPO, check=True, capture_output=True, text=True,
        )
        posed_result = json.loads(posed.stdout.strip().splitlines()[-1])
        crops = json.loads(batch_path.read_text())

    clients = []
    for crop in crops:
        client = pb.connect(pb.DIRECT)
        vertices, indices = read_ply(crop["ply"])
        shape = pb.createVisualShape(
            pb.GEOM_MESH, vertices=vertices.tolist(), indices=indices.tolist(), physicsClientId=client
        )
        pb.createMultiBody(baseVisualShapeIndex=shape, physicsClientId=client)
        K = np.array(crop["K"]).reshape(3, 3)
        camera_from_object = np.eye(4)
        camera_from_object[:3, :3] = np.array(crop["R"]).reshape(3, 3)
        camera_from_object[:3, 3] = crop["t_m"]
        gl_from_cv = np.diag([1.0, -1.0, -1.0, 1.0])
        view = (gl_from_cv @ camera_from_object).T.reshape(-1).tolist()
        projection = gl_projection(K, crop["width"], crop["height"]).T.reshape(-1).tolist()
        clients.append((client, crop["width"], crop["height"], view, projection))

    def render_batch():
        outputs = []
        for client, width, height, view, projection in clients:
            outputs.append(
                pb.getCameraImage(
                    width, height, viewMatrix=view, projectionMatrix=projection,
                    renderer=pb.ER_TINY_RENDERER, physicsClientId=client,
                )
            )
        return outputs

    outputs = render_batch()
    object_pixels = [int(np.count_nonzero(np.asarray(o[4]).reshape(-1) >= 0)) for o in outputs]
    times_ms = []
    for _ in range(args.iterations):
        started = time.perf_counter()
        render_batch()
        times_ms.append((time.perf_counter() - started) * 1e3)
    pybullet_ms = statistics.median(times_ms)
    print(json.dumps({
        "crops": len(crops),
        "size": f"{crops[0]['width']}x{crops[0]['height']}",
        "pybullet_tinyrenderer": {"version": pb.getAPIVersion(), "median_ms_per_batch": pybullet_ms,
                                  "object_pixels": object_pixels},
        "posed": posed_result,
        "speedup": pybullet_ms / posed_result["median_ms_per_batch"],
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
