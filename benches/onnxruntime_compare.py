#!/usr/bin/env python3
"""The CPU backend's reference point: onnxruntime on the same refiner-shaped test
network the `engines` bench runs (data/networks/refiner-tiny.onnx), one thread, random
inputs in [0, 1), batch 1, 5 and 16. Prints crops per second, to compare with

    cargo bench -p posed-benches --bench engines

or, given another pose network and batch sizes (the EfficientNet-B3-sized refiner of
tools/make_bench_networks.py), with the `cpu_network` bench binary:

    /tmp/onnxenv/bin/python benches/onnxruntime_compare.py target/bench-networks/refiner-b3.onnx 1

Needs the venv of tools/README.md (numpy, onnxruntime 1.32):

    python3 -m venv /tmp/onnxenv && /tmp/onnxenv/bin/pip install -r tools/requirements-onnx.txt
    /tmp/onnxenv/bin/python benches/onnxruntime_compare.py
"""

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

NETWORK = Path(__file__).resolve().parent.parent / "data" / "networks" / "refiner-tiny.onnx"
BATCHES = (1, 5, 16)
SECONDS_PER_BATCH = 5.0


def main():
    network = Path(sys.argv[1]) if len(sys.argv) > 1 else NETWORK
    batches = tuple(int(b) for b in sys.argv[2:]) or BATCHES
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(network), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(7)
    print(f"onnxruntime {ort.__version__}, {network.name}, one thread")
    for batch in batches:
        crops = rng.random((batch, 6, 240, 320), dtype=np.float32)
        for _ in range(3):
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
