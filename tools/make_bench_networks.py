#!/usr/bin/env python3
"""Build a refiner with the size of CosyPose's: EfficientNet-B3 (width 1.2, depth 1.4,
26 MBConv blocks, 1536-channel head) on B x 6 x 240 x 320 crops, about 10.7 million
random (seeded) weights, for timing the CPU backend on a network of real size. The test
networks in data/networks have the same op kinds but 2,161 weights: the planned
executor's speed there says little about the real one.

The graph is written the way lukemelas' efficientnet_pytorch (which CosyPose uses)
exports: a Pad before every convolution with a kernel larger than 1 (static "same"
padding, asymmetric for stride 2), BatchNormalization kept in the graph (eps 1e-3),
Swish as x * Sigmoid(x), squeeze-excite from GlobalAveragePool, residual Adds, then
the head, x.flatten(2).mean(-1) and Linear(1536, 9). Not CosyPose's weights: random
ones scaled so that activations stay finite (checked with onnxruntime when installed).

The file is about 43 MB, so it is not kept in the repository. Usage (the venv of
tools/README.md):

    /tmp/onnxenv/bin/python tools/make_bench_networks.py            # target/bench-networks
    cargo run --release -p posed-benches --bin cpu_network -- target/bench-networks/refiner-b3.onnx
    /tmp/onnxenv/bin/python benches/onnxruntime_compare.py target/bench-networks/refiner-b3.onnx
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_test_networks import (  # noqa: E402
    CROP_H,
    CROP_W,
    IDENTITY_UPDATE,
    Graph,
    make_model,
    save_network,
    sidecar_text,
)

SEED_B3 = 5005
WIDTH, DEPTH = 1.2, 1.4
# EfficientNet-B0's stages: kernel, stride, expand ratio, output channels, repeats.
B0_STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]


def round_filters(channels):
    """efficientnet_pytorch's round_filters with divisor 8."""
    channels *= WIDTH
    rounded = max(8, int(channels + 4) // 8 * 8)
    if rounded < 0.9 * channels:
        rounded += 8
    return int(rounded)


def same_pads(size, kernel, stride):
    """Conv2dStaticSamePadding: (before, after) for one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_same(g, x, cin, cout, k, stride, hw, group=1, base="conv"):
    """A convolution with static same padding; returns (output, output hw)."""
    h, w = hw
    if k > 1:
        top, bottom = same_pads(h, k, stride)
        left, right = same_pads(w, k, stride)
        x = g.pad(x, top, left, bottom, right, base=f"{base}_pad")
    y = g.conv(x, cin, cout, k, stride=stride, group=group, base=base)
    return y, (math.ceil(h / stride), math.ceil(w / stride))


def refiner_b3(seed):
    g = Graph(np.random.default_rng(seed))
    hw = (CROP_H, CROP_W)
    stem = round_filters(32)
    x, hw = conv_same(g, "images", 6, stem, 3, 2, hw, base="stem_conv")
    x = g.swish(g.bn(x, stem, base="stem_bn"), base="stem_swish")
    cin = stem
    block = 0
    for kernel, stride, expand, out, repeats in B0_STAGES:
        cout = round_filters(out)
        for r in range(int(math.ceil(DEPTH * repeats))):
            s = stride if r == 0 else 1
            name = f"b{block}"
            skip = x
            mid = cin * expand
            y = x
            if expand != 1:
                y = g.conv(y, cin, mid, 1, base=f"{name}_expand")
                y = g.swish(g.bn(y, mid, base=f"{name}_bn0"), base=f"{name}_swish0")
            y, out_hw = conv_same(g, y, mid, mid, kernel, s, hw, group=mid, base=f"{name}_dw")
            y = g.swish(g.bn(y, mid, base=f"{name}_bn1"), base=f"{name}_swish1")
            y = g.squeeze_excite(y, mid, max(1, int(cin * 0.25)), base=f"{name}_se")
            y = g.conv(y, mid, cout, 1, base=f"{name}_project")
            y = g.bn(y, cout, base=f"{name}_bn2")
            if s == 1 and cin == cout:
                # Keep the residual stream from growing block after block.
                y = g.node("Add", [y, skip], base=f"{name}_residual")
            x, hw, cin = y, out_hw, cout
            block += 1
    head = round_filters(1280)
    x = g.conv(x, cin, head, 1, base="head_conv")
    x = g.swish(g.bn(x, head, base="head_bn"), base="head_swish")
    x = g.node("GlobalAveragePool", [x], base="pool")
    x = g.node("Flatten", [x], base="flatten", axis=1)
    w = g.normal((9, head), 0.01)
    g.node_to(
        "Gemm",
        [x, g.const("pose_fc_weight", w), g.const("pose_fc_bias", IDENTITY_UPDATE)],
        "pose_update",
        transB=1,
    )
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 6, CROP_H, CROP_W])]
    outputs = [helper.make_tensor_value_info("pose_update", TensorProto.FLOAT, ["batch", 9])]
    return make_model(g, inputs, outputs, "posed bench refiner: EfficientNet-B3 size, random weights"), block


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--out", type=Path, default=root / "target" / "bench-networks")
    args = parser.parse_args()
    model, blocks = refiner_b3(SEED_B3)
    weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    path = save_network(
        args.out,
        "refiner-b3",
        model,
        sidecar_text(
            "refiner-b3",
            "refiner",
            "EfficientNet-B3-sized refiner, random weights, bench network",
        ),
    )
    print(f"{path}: {blocks} MBConv blocks, {weights:,} weights, {len(model.graph.node)} nodes")
    try:
        import onnxruntime as ort
    except ImportError:
        return
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    crops = np.random.default_rng(7).random((2, 6, CROP_H, CROP_W), dtype=np.float32)
    (update,) = session.run(None, {"images": crops})
    assert np.isfinite(update).all(), update
    print(f"onnxruntime {ort.__version__}: pose_update of 2 random crops\n{update}")


if __name__ == "__main__":
    main()
