#!/usr/bin/env python3
"""Golden outputs for the test networks in data/networks/, computed with onnxruntime.

Runs each good network (built by tools/make_test_networks.py) in onnxruntime on the CPU
execution provider, with one thread and graph optimisations disabled (so it is an
independent reference, not a fused/rewritten graph), on seeded inputs uniform in [0, 1],
and writes into data/networks/golden/:

  <stem>.b<B>.input.npy            the input
  <stem>.b<B>.<output_name>.npy    each output, with the dtype the model declares
  manifest.json                    every case: network, input, outputs (shape, dtype),
                                   sha256 of each file, onnxruntime/onnx/numpy versions

.npy files are format version 1.0, little-endian, C order (np.save).

Cases:
  refiner-tiny, refiner-identity, coarse-tiny   B=1 and B=2, 6 x 240 x 320
  detector-tiny                                 B=2, 3 x 120 x 160
  detector-torchvision                          one 3 x 120 x 160 image (named .b1.)

Size: a 6x240x320 float32 image is 1.8 MB, so the three 240x320 networks share their
inputs: refiner-tiny.b1.input.npy and refiner-tiny.b2.input.npy are written once and the
manifest's "input" field of the refiner-identity and coarse-tiny cases points at them.
Always read the input file name from the manifest. The first image of every B=2 input is
the B=1 input, so a B=1 run must equal row 0 of the B=2 run (up to float rounding).

Deterministic: rerunning with the same package versions writes byte-identical files.

Usage:
    python3 tools/onnx_golden.py [--networks data/networks]
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

SEED_CROP = 5005
SEED_DETECTOR = 6006
SEED_TORCHVISION = 7007


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_npy(path, array):
    array = np.ascontiguousarray(array)
    assert array.dtype in (np.dtype("<f4"), np.dtype("<i8")), array.dtype
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array(f, array, version=(1, 0), allow_pickle=False)
    os.replace(tmp, path)


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


ONNX_TO_NUMPY = {onnx.TensorProto.FLOAT: np.dtype("<f4"), onnx.TensorProto.INT64: np.dtype("<i8")}


def declared_outputs(model_path):
    model = onnx.load(str(model_path))
    return [(o.name, ONNX_TO_NUMPY[o.type.tensor_type.elem_type]) for o in model.graph.output]


def uniform(seed, shape):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype("<f4")


def main():
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", type=Path, default=root / "data" / "networks")
    args = parser.parse_args()
    nets = args.networks
    golden = nets / "golden"
    golden.mkdir(parents=True, exist_ok=True)

    # Inputs. The B=2 inputs start with the B=1 input.
    crop_b2 = uniform(SEED_CROP, (2, 6, 240, 320))
    crop_b1 = crop_b2[:1]
    det_b2 = uniform(SEED_DETECTOR, (2, 3, 120, 160))
    tv_b1 = uniform(SEED_TORCHVISION, (3, 120, 160))

    inputs = {}  # file name -> array

    def input_file(name, array):
        if name not in inputs:
            inputs[name] = array
            save_npy(golden / name, array)
        return name

    cases = []
    for stem in ["refiner-tiny", "refiner-identity", "coarse-tiny"]:
        for b, x in [(1, crop_b1), (2, crop_b2)]:
            cases.append((stem, b, input_file(f"refiner-tiny.b{b}.input.npy", x)))
    cases.append(("detector-tiny", 2, input_file("detector-tiny.b2.input.npy", det_b2)))
    cases.append(("detector-torchvision", 1, input_file("detector-torchvision.b1.input.npy", tv_b1)))

    manifest_cases = []
    for stem, b, in_name in cases:
        net = nets / f"{stem}.onnx"
        x = inputs[in_name]
        outs = declared_outputs(net)
        results = session(net).run([name for name, _ in outs], {"images": x})
        out_entries = []
        for (name, dtype), y in zip(outs, results):
            assert y.dtype == dtype, (stem, name, y.dtype, dtype)
            y = y.astype(dtype, copy=False)
            assert np.all(np.isfinite(y)), (stem, name)
            fname = f"{stem}.b{b}.{name}.npy"
            save_npy(golden / fname, y)
            out_entries.append(
                {"name": name, "file": fname, "shape": list(y.shape), "dtype": dtype.name, "sha256": sha256(golden / fname)}
            )
            print(f"{stem} B={b}: {name} {list(y.shape)} {dtype.name}")
        manifest_cases.append(
            {
                "network": f"{stem}.onnx",
                "network_sha256": sha256(net),
                "batch": b,
                "input": {
                    "name": "images",
                    "file": in_name,
                    "shape": list(x.shape),
                    "dtype": x.dtype.name,
                    "sha256": sha256(golden / in_name),
                },
                "outputs": out_entries,
            }
        )

    # Consistency checks on what was written.
    for stem in ["refiner-tiny", "refiner-identity", "coarse-tiny"]:
        y1 = np.load(golden / f"{stem}.b1.pose_update.npy")
        y2 = np.load(golden / f"{stem}.b2.pose_update.npy")
        assert np.allclose(y1[0], y2[0], atol=1e-6), (stem, y1, y2)
    ident = np.array([1, 0, 0, 0, 1, 0, 0, 0, 1], dtype="<f4")
    assert np.array_equal(np.load(golden / "refiner-identity.b2.pose_update.npy"), np.stack([ident, ident]))

    manifest = {
        "about": (
            "Golden outputs of the posed test networks (data/networks/*.onnx), made by "
            "tools/onnx_golden.py with onnxruntime CPUExecutionProvider, 1 thread, "
            "graph optimisations disabled. Inputs are uniform in [0, 1]. File names are "
            "relative to this folder, network names relative to data/networks/. .npy files "
            "are format 1.0, little-endian, C order."
        ),
        "onnxruntime_version": ort.__version__,
        "onnx_version": onnx.__version__,
        "numpy_version": np.__version__,
        "execution_provider": "CPUExecutionProvider",
        "graph_optimization_level": "ORT_DISABLE_ALL",
        "intra_op_num_threads": 1,
        "cases": manifest_cases,
    }
    text = json.dumps(manifest, indent=2) + "\n"
    tmp = golden / "manifest.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, golden / "manifest.json")

    total = sum(p.stat().st_size for p in golden.iterdir() if p.is_file())
    print(f"wrote {len(manifest_cases)} cases to {golden} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
