#!/usr/bin/env python3
"""The CPU backend's reference point: onnxruntime on the same refiner-shaped test
network the `engines` bench runs (data/networks/refiner-tiny.onnx), one thread, random
inputs in [0, 1), batch 1, 5 and 16. Prints crops per second, to compare with

    cargo bench -p posed-benches --bench engines

Needs the venv of tools/README.md (numpy, onnxruntime 1.32):

    python3 -m venv /tmp/onnxenv && /tmp/onnxenv/bin/pip install -r tools/requirements-onnx.txt
    /tmp/onnxenv/bin/python benches/onnxruntime_compare.py
"""

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

NETWORK = Path(__file__).resolve().parent.parent / "data" / "networks" / "refiner-tiny.onnx"
BATCHES = (1, 5, 16)
SECONDS_PER_BATCH = 5.0


def main():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(NETWORK), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(7)
    print(f"onnxruntime {ort.__version__}, {NETWORK.name}, one thread")
    for batch in BATCHES:
        crops = rng.random((batch, 6, 240, 320), dtype=np.float32)
        for _ in range(20):
            session.run(None, {name: crops})
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < SECONDS_PER_BATCH:
            session.run(None, {name: crops})
            runs += 1
        per_run_s = (time.perf_counter() - start) / runs
        print(
            f"batch {batch:2}: {per_run_s * 1e3:7.3f} ms per run, "
            f"{batch / per_run_s:6.0f} crops/s"
        )


if __name__ == "__main__":
    main()
