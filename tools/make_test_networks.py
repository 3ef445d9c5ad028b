#!/usr/bin/env python3
"""Build the small test networks in data/networks/ (ONNX + sidecar TOML).

Every network here has random (seeded) weights: they are not CosyPose, they only
follow its network contracts (COSYPOSE_SPEC.md A.1-A.3, docs DESIGN.md "Networks and
engines") so that the Rust runtime can be tested without the real checkpoints:

  refiner-tiny          images [batch,6,240,320] -> pose_update [batch,9]
  refiner-identity      same graph, final Gemm weight 0, bias = identity update
  coarse-tiny           same graph as refiner-tiny, other seed, role coarse
  detector-tiny         "batched" layout: images [batch,3,height,width] ->
                        boxes [batch,8,4], scores [batch,8], labels int64 [batch,8]
  detector-torchvision  torchvision Mask R-CNN export layout: images [3,height,width] ->
                        boxes [N,4], labels int64 [N], scores [N], masks [N,1,height,width]
                        (N is the symbolic dim "num_detections"; 5 at run time)

plus data/networks/broken/: networks and sidecars that are each wrong in exactly one
way, for the contract tests (see data/networks/README.md).

The refiner/coarse graphs are shaped like CosyPose's EfficientNet-B3 so the same op
kinds appear: static "same" Pad (asymmetric 0/1 for stride-2 k3 and 1/2 for stride-2
k5, as Conv2dStaticSamePadding computes for image_size 300), Conv, depthwise Conv,
BatchNormalization (eps 1e-3, kept in the graph), Swish (x * Sigmoid(x)),
squeeze-excite (GlobalAveragePool -> 1x1 Conv -> Swish -> 1x1 Conv -> Sigmoid -> Mul),
residual Add, head 1x1 conv + BN + Swish, x.flatten(2).mean(-1) written the way
torch.onnx exports it (Shape/Slice/Concat/Reshape/ReduceMean), and Gemm(16 -> 9).

Opset 17, IR version 8. Only ops that tract-onnx 0.23 supports are used. Only numpy and
onnx are needed to build; onnxruntime (if installed) is used to validate the results.

Deterministic: rerunning writes byte-identical files (seeded numpy Generators, no
timestamps in the files).

Usage:
    python3 tools/make_test_networks.py [--out data/networks] [--no-ort]
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "posed tools/make_test_networks.py"
PRODUCER_VERSION = "1"

LABELS = [f"obj_{i:06d}" for i in range(1, 22)]  # the 21 YCB-Video objects

CROP_H, CROP_W = 240, 320
DETECTOR_TINY_N = 8
TORCHVISION_N = 5

SEED_REFINER = 1001
SEED_COARSE = 2002
SEED_DETECTOR = 3003
SEED_TORCHVISION = 4004

IDENTITY_UPDATE = np.array([1, 0, 0, 0, 1, 0, 0, 0, 1], dtype=np.float32)


# --------------------------------------------------------------------------- builder


class Graph:
    """A tiny helper around onnx.helper that names nodes and initializers uniquely."""

    def __init__(self, rng):
        self.rng = rng
        self.nodes = []
        self.inits = []
        self.names = set()
        self.counter = {}

    def fresh(self, base):
        n = self.counter.get(base, 0)
        self.counter[base] = n + 1
        name = f"{base}_{n}" if n else base
        assert name not in self.names, name
        self.names.add(name)
        return name

    def const(self, base, array):
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def i64(self, base, values):
        return self.const(base, np.asarray(values, dtype=np.int64))

    def f32(self, base, values):
        return self.const(base, np.asarray(values, dtype=np.float32))

    def node(self, op, inputs, base=None, n_out=1, **attrs):
        base = base or op.lower()
        outs = [self.fresh(base if n_out == 1 else f"{base}_out{i}") for i in range(n_out)]
        name = self.fresh(f"{base}_node")
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def node_to(self, op, inputs, output, **attrs):
        """A node that writes a given (graph output) name."""
        assert output not in self.names, output
        self.names.add(output)
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{output}_node", **attrs))
        return output

    # ---- random parameters (float32, seeded)

    def normal(self, shape, std, mean=0.0):
        return (mean + std * self.rng.standard_normal(shape)).astype(np.float32)

    def conv_weight(self, cout, cin_per_group, k):
        fan_in = cin_per_group * k * k
        return self.normal((cout, cin_per_group, k, k), 1.0 / np.sqrt(fan_in))

    # ---- layers

    def pad(self, x, top, left, bottom, right, base="pad"):
        # ONNX pads: [x1_begin, x2_begin, ..., x1_end, x2_end, ...] for N, C, H, W.
        pads = self.i64(f"{base}_pads", [0, 0, top, left, 0, 0, bottom, right])
        value = self.f32(f"{base}_value", np.float32(0.0))
        return self.node("Pad", [x, pads, value], base=base, mode="constant")

    def conv(self, x, cin, cout, k, stride=1, pads=(0, 0, 0, 0), group=1, bias=False, base="conv"):
        w = self.conv_weight(cout, cin // group, k)
        inputs = [x, self.const(f"{base}_weight", w)]
        if bias:
            inputs.append(self.const(f"{base}_bias", self.normal((cout,), 0.1)))
        return self.node(
            "Conv",
            inputs,
            base=base,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=list(pads),
            dilations=[1, 1],
            group=group,
        )

    def bn(self, x, c, base="bn"):
        scale = self.normal((c,), 0.1, 1.0)
        shift = self.normal((c,), 0.1)
        mean = self.normal((c,), 0.1)
        var = self.rng.uniform(0.5, 1.5, (c,)).astype(np.float32)
        return self.node(
            "BatchNormalization",
            [
                x,
                self.const(f"{base}_scale", scale),
                self.const(f"{base}_bias", shift),
                self.const(f"{base}_mean", mean),
                self.const(f"{base}_var", var),
            ],
            base=base,
            epsilon=1e-3,
            momentum=0.99,
        )

    def swish(self, x, base="swish"):
        s = self.node("Sigmoid", [x], base=f"{base}_sigmoid")
        return self.node("Mul", [x, s], base=base)

    def squeeze_excite(self, x, c, c_squeezed, base="se"):
        p = self.node("GlobalAveragePool", [x], base=f"{base}_pool")
        r = self.conv(p, c, c_squeezed, 1, bias=True, base=f"{base}_reduce")
        r = self.swish(r, base=f"{base}_swish")
        e = self.conv(r, c_squeezed, c, 1, bias=True, base=f"{base}_expand")
        g = self.node("Sigmoid", [e], base=f"{base}_gate")
        return self.node("Mul", [g, x], base=f"{base}_scale")


def make_model(graph, nodes_inputs, outputs, doc):
    g = helper.make_graph(graph.nodes, "main", nodes_inputs, outputs, initializer=graph.inits)
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    return model


# --------------------------------------------------------------------------- networks


def pose_network(
    seed,
    *,
    identity=False,
    input_name="images",
    channels=6,
    height=CROP_H,
    width=CROP_W,
    batch="batch",
    n_out=9,
    int64_input=False,
    doc="",
):
    """The refiner/coarse test graph (EfficientNet-like, a few thousand weights)."""
    g = Graph(np.random.default_rng(seed))
    x = input_name
    if int64_input:
        x = g.node("Cast", [x], base="to_float", to=TensorProto.FLOAT)

    # Stem: static same pad for stride-2 k3 (top/left 0, bottom/right 1), conv 3x3/2.
    x = g.pad(x, 0, 0, 1, 1, base="stem_pad")
    x = g.conv(x, channels, 8, 3, stride=2, base="stem_conv")
    x = g.bn(x, 8, base="stem_bn")
    x = g.swish(x, base="stem_swish")

    # Block 1 (expand ratio 1, stride 1): depthwise 3x3 pad 1, SE, 1x1 projection, residual.
    skip = x
    y = g.conv(x, 8, 8, 3, pads=(1, 1, 1, 1), group=8, base="b1_dw")
    y = g.bn(y, 8, base="b1_bn1")
    y = g.swish(y, base="b1_swish")
    y = g.squeeze_excite(y, 8, 2, base="b1_se")
    y = g.conv(y, 8, 8, 1, base="b1_project")
    y = g.bn(y, 8, base="b1_bn2")
    x = g.node("Add", [y, skip], base="b1_residual")

    # Block 2 (expand 2, stride 2, k5): 1x1 expand, static same pad (1, 2), depthwise 5x5/2.
    y = g.conv(x, 8, 16, 1, base="b2_expand")
    y = g.bn(y, 16, base="b2_bn0")
    y = g.swish(y, base="b2_swish0")
    y = g.pad(y, 1, 1, 2, 2, base="b2_pad")
    y = g.conv(y, 16, 16, 5, stride=2, group=16, base="b2_dw")
    y = g.bn(y, 16, base="b2_bn1")
    y = g.swish(y, base="b2_swish1")
    y = g.squeeze_excite(y, 16, 4, base="b2_se")
    y = g.conv(y, 16, 12, 1, base="b2_project")
    x = g.bn(y, 12, base="b2_bn2")

    # Head: 1x1 conv to 16 channels + BN + Swish.
    x = g.conv(x, 12, 16, 1, base="head_conv")
    x = g.bn(x, 16, base="head_bn")
    x = g.swish(x, base="head_swish")

    # x.flatten(2).mean(-1), as torch.onnx exports it.
    shape = g.node("Shape", [x], base="flatten_shape")
    nc = g.node(
        "Slice",
        [shape, g.i64("flatten_starts", [0]), g.i64("flatten_ends", [2]), g.i64("flatten_axes", [0])],
        base="flatten_nc",
    )
    new_shape = g.node("Concat", [nc, g.i64("flatten_rest", [-1])], base="flatten_new_shape", axis=0)
    x = g.node("Reshape", [x, new_shape], base="flatten")
    x = g.node("ReduceMean", [x], base="features", axes=[-1], keepdims=0)

    # pose_fc: Linear(16, n_out): small weights, bias = identity update.
    if identity:
        w = np.zeros((n_out, 16), dtype=np.float32)
    else:
        w = g.normal((n_out, 16), 0.01)
    b = IDENTITY_UPDATE[:n_out]
    g.node_to(
        "Gemm",
        [x, g.const("pose_fc_weight", w), g.const("pose_fc_bias", b)],
        "pose_update",
        transB=1,
    )

    in_type = TensorProto.INT64 if int64_input else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(input_name, in_type, [batch, channels, height, width])]
    outputs = [helper.make_tensor_value_info("pose_update", TensorProto.FLOAT, [batch, n_out])]
    return make_model(g, inputs, outputs, doc)


DETECTOR_ANCHORS = np.array(
    [
        [0.05, 0.05, 0.35, 0.40],
        [0.40, 0.10, 0.70, 0.45],
        [0.60, 0.50, 0.95, 0.95],
        [0.10, 0.55, 0.45, 0.90],
        [0.30, 0.30, 0.65, 0.70],
        [0.70, 0.05, 0.95, 0.30],
        [0.05, 0.45, 0.25, 0.70],
        [0.45, 0.60, 0.60, 0.85],
    ],
    dtype=np.float32,
)
DETECTOR_LABELS = np.array([1, 2, 3, 5, 8, 13, 21, 4], dtype=np.int64)
# Offsets are 0.05 * (Sigmoid(.) - 0.5), i.e. within +-0.025 of the image size; every
# anchor is at least 0.15 wide/high and inside [0.05, 0.95], so boxes stay valid and
# inside the image.
OFFSET_SCALE = 0.05

TORCHVISION_ANCHORS = np.array(
    [
        [0.10, 0.10, 0.40, 0.50],
        [0.50, 0.20, 0.90, 0.60],
        [0.20, 0.55, 0.55, 0.90],
        [0.60, 0.65, 0.85, 0.95],
        [0.35, 0.30, 0.65, 0.70],
    ],
    dtype=np.float32,
)
TORCHVISION_LABELS = np.array([1, 4, 9, 16, 21], dtype=np.int64)


def detector_tiny(seed, *, with_scores=True, doc=""):
    """Batched layout: images [batch,3,height,width] -> boxes, scores, labels."""
    n = DETECTOR_TINY_N
    g = Graph(np.random.default_rng(seed))
    x = g.conv("images", 3, 8, 3, stride=2, pads=(1, 1, 1, 1), bias=True, base="conv")
    x = g.node("Relu", [x], base="relu")
    x = g.node("GlobalAveragePool", [x], base="pool")
    f = g.node("Flatten", [x], base="features", axis=1)  # [batch, 8]

    outputs = []
    # boxes = (anchors + 0.05 * (Sigmoid(Gemm(f)) - 0.5)) * (w, h, w, h)
    o = g.node(
        "Gemm",
        [f, g.const("offset_weight", g.normal((4 * n, 8), 1.0)), g.const("offset_bias", g.normal((4 * n,), 0.5))],
        base="offset_fc",
        transB=1,
    )
    o = g.node("Sigmoid", [o], base="offset_sigmoid")
    o = g.node("Add", [o, g.f32("minus_half", np.float32(-0.5))], base="offset_centred")
    o = g.node("Mul", [o, g.f32("offset_scale", np.float32(OFFSET_SCALE))], base="offset_scaled")
    o = g.node("Reshape", [o, g.i64("offset_shape", [-1, n, 4])], base="offset")
    o = g.node("Add", [o, g.const("anchors", DETECTOR_ANCHORS)], base="boxes_normalised")
    shape = g.node("Shape", ["images"], base="image_shape")
    whwh = g.node("Gather", [shape, g.i64("whwh_index", [3, 2, 3, 2])], base="whwh_i64", axis=0)
    whwh = g.node("Cast", [whwh], base="whwh", to=TensorProto.FLOAT)
    g.node_to("Mul", [o, whwh], "boxes")
    outputs.append(helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", n, 4]))

    if with_scores:
        # scores = Sigmoid(Gemm(f)), spread by a decreasing bias.
        s = g.node(
            "Gemm",
            [
                f,
                g.const("score_weight", g.normal((n, 8), 0.5)),
                g.const("score_bias", np.linspace(2.0, -2.0, n).astype(np.float32)),
            ],
            base="score_fc",
            transB=1,
        )
        g.node_to("Sigmoid", [s], "scores")
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", n]))

    # labels: a constant [1, n] int64 expanded to [batch, n].
    b = g.node("Gather", [shape, g.i64("batch_index", [0])], base="batch_dim", axis=0)
    lshape = g.node("Concat", [b, g.i64("n_detections", [n])], base="labels_shape", axis=0)
    g.node_to("Expand", [g.const("label_values", DETECTOR_LABELS[None, :]), lshape], "labels")
    outputs.append(helper.make_tensor_value_info("labels", TensorProto.INT64, ["batch", n]))

    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])]
    return make_model(g, inputs, outputs, doc)


def detector_torchvision(seed, doc=""):
    """torchvision Mask R-CNN export layout: images [3,H,W] -> boxes, labels, scores, masks."""
    n = TORCHVISION_N
    g = Graph(np.random.default_rng(seed))
    x = g.node("Unsqueeze", ["images", g.i64("batch_axis", [0])], base="batched")  # [1,3,H,W]
    c = g.conv(x, 3, 4, 3, pads=(1, 1, 1, 1), bias=True, base="conv")
    c = g.node("Relu", [c], base="relu")
    c = g.node("GlobalAveragePool", [c], base="pool")
    f = g.node("Flatten", [c], base="features", axis=1)  # [1, 4]

    # scores [N]: decreasing bias, small weights (sorted descending for inputs in [0, 1]
    # in practice, as torchvision returns them; not enforced by the graph).
    s = g.node(
        "Gemm",
        [
            f,
            g.const("score_weight", g.normal((n, 4), 0.05)),
            g.const("score_bias", np.linspace(3.0, -3.0, n).astype(np.float32)),
        ],
        base="score_fc",
        transB=1,
    )
    s = g.node("Sigmoid", [s], base="score_sigmoid")
    g.node_to("Reshape", [s, g.i64("flat", [-1])], "scores")

    # boxes [N,4] in input pixels.
    o = g.node(
        "Gemm",
        [f, g.const("offset_weight", g.normal((4 * n, 4), 1.0)), g.const("offset_bias", g.normal((4 * n,), 0.5))],
        base="offset_fc",
        transB=1,
    )
    o = g.node("Sigmoid", [o], base="offset_sigmoid")
    o = g.node("Add", [o, g.f32("minus_half", np.float32(-0.5))], base="offset_centred")
    o = g.node("Mul", [o, g.f32("offset_scale", np.float32(OFFSET_SCALE))], base="offset_scaled")
    o = g.node("Reshape", [o, g.i64("offset_shape", [-1, 4])], base="offset")
    o = g.node("Add", [o, g.const("anchors", TORCHVISION_ANCHORS)], base="boxes_normalised")
    shape = g.node("Shape", ["images"], base="image_shape")
    whwh = g.node("Gather", [shape, g.i64("whwh_index", [2, 1, 2, 1])], base="whwh_i64", axis=0)
    whwh = g.node("Cast", [whwh], base="whwh", to=TensorProto.FLOAT)
    g.node_to("Mul", [o, whwh], "boxes")

    # labels [N] int64: constant values, N taken from the scores.
    g.node_to("Expand", [g.const("label_values", TORCHVISION_LABELS), g.node("Shape", ["scores"], base="n_shape")], "labels")

    # masks [N,1,H,W]: a 1x1 conv of the image, tiled per detection, per-detection affine, sigmoid.
    m = g.conv(x, 3, 1, 1, bias=True, base="mask_conv")
    m = g.node("Tile", [m, g.i64("mask_repeats", [n, 1, 1, 1])], base="mask_tiled")
    m = g.node("Mul", [m, g.const("mask_gain", g.normal((n, 1, 1, 1), 1.0, 1.0))], base="mask_gained")
    m = g.node("Add", [m, g.const("mask_shift", g.normal((n, 1, 1, 1), 0.5))], base="mask_logits")
    g.node_to("Sigmoid", [m], "masks")

    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [3, "height", "width"])]
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["num_detections", 4]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["num_detections"]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["num_detections"]),
        helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["num_detections", 1, "height", "width"]),
    ]
    return make_model(g, inputs, outputs, doc)


# --------------------------------------------------------------------------- sidecars


def toml_str(s):
    assert all(32 <= ord(ch) < 127 for ch in s) and '"' not in s and "\\" not in s, s
    return f'"{s}"'


def toml_labels(labels):
    lines = []
    for i in range(0, len(labels), 7):
        lines.append("    " + ", ".join(toml_str(label) for label in labels[i : i + 7]) + ",")
    return "[\n" + "\n".join(lines) + "\n]"


def sidecar_text(
    stem,
    role,
    description,
    *,
    labels=LABELS,
    detector=None,
    format_value="1",
    role_line=True,
    labels_value=None,
):
    """The sidecar TOML. The keyword overrides exist only to write the broken sidecars."""
    out = [f"# posed network sidecar (format 1): what the pipeline needs to know about {stem}.onnx"]
    out.append(f"format = {format_value}")
    if role_line:
        out.append(f"role = {toml_str(role)}")
    out.append(f"labels = {labels_value if labels_value is not None else toml_labels(labels)}")
    out.append('dataset = "ycbv"')
    out.append(f"description = {toml_str(description)}")
    if detector is not None:
        layout, max_det = detector
        out.append("")
        out.append("[detector]")
        out.append(f"layout = {toml_str(layout)}")
        out.append("first_category_id = 1")
        out.append(f"max_detections = {max_det}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- output


def write_bytes(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_network(out_dir, stem, model, sidecar, check=True):
    if check:
        onnx.checker.check_model(model, full_check=True)
    write_bytes(out_dir / f"{stem}.onnx", model.SerializeToString())
    write_bytes(out_dir / f"{stem}.toml", sidecar.encode())
    return out_dir / f"{stem}.onnx"


def build_all(out):
    good = out
    broken = out / "broken"
    bad_sidecars = broken / "sidecar-bad"
    made = {}

    rt = "random weights, test network"
    made["refiner-tiny"] = save_network(
        good,
        "refiner-tiny",
        pose_network(SEED_REFINER, doc="posed test refiner: random weights"),
        sidecar_text("refiner-tiny", "refiner", f"Tiny EfficientNet-shaped refiner, {rt}"),
    )
    made["refiner-identity"] = save_network(
        good,
        "refiner-identity",
        pose_network(SEED_REFINER, identity=True, doc="posed test refiner: always the identity update"),
        sidecar_text(
            "refiner-identity",
            "refiner",
            f"Tiny refiner whose output is exactly the identity update [1,0,0,0,1,0,0,0,1], {rt}",
        ),
    )
    made["coarse-tiny"] = save_network(
        good,
        "coarse-tiny",
        pose_network(SEED_COARSE, doc="posed test coarse model: random weights"),
        sidecar_text("coarse-tiny", "coarse", f"Tiny EfficientNet-shaped coarse model, {rt}"),
    )
    made["detector-tiny"] = save_network(
        good,
        "detector-tiny",
        detector_tiny(SEED_DETECTOR, doc="posed test detector, batched layout: random weights"),
        sidecar_text(
            "detector-tiny",
            "detector",
            f"Tiny detector, batched layout, 8 detections per image, {rt}",
            detector=("batched", DETECTOR_TINY_N),
        ),
    )
    made["detector-torchvision"] = save_network(
        good,
        "detector-torchvision",
        detector_torchvision(SEED_TORCHVISION, doc="posed test detector, torchvision layout: random weights"),
        sidecar_text(
            "detector-torchvision",
            "detector",
            f"Tiny detector in torchvision Mask R-CNN export layout, 5 detections, {rt}",
            detector=("torchvision", 100),
        ),
    )

    # ---- broken networks: each wrong in exactly one way.
    def broken_refiner(stem, why, **kw):
        model = pose_network(SEED_REFINER, doc=f"posed broken test network: {why}", **kw)
        made[f"broken/{stem}"] = save_network(
            broken, stem, model, sidecar_text(stem, "refiner", f"Broken on purpose: {why}; {rt}")
        )

    broken_refiner("refiner-input-name", "input is named input instead of images", input_name="input")
    broken_refiner("refiner-5-channels", "input has 5 channels instead of 6", channels=5)
    broken_refiner("refiner-crop-size", "input is 256x256 instead of 240x320", height=256, width=256)
    broken_refiner("refiner-output-9x1", "output pose_update is [batch, 8] instead of [batch, 9]", n_out=8)
    broken_refiner("refiner-fixed-batch", "batch dimension fixed to 1 instead of symbolic", batch=1)
    broken_refiner("refiner-int64-input", "input images is int64 instead of float32", int64_input=True)

    stem = "detector-no-scores"
    made[f"broken/{stem}"] = save_network(
        broken,
        stem,
        detector_tiny(SEED_DETECTOR, with_scores=False, doc="posed broken test network: no scores output"),
        sidecar_text(
            stem,
            "detector",
            f"Broken on purpose: batched detector without the scores output; {rt}",
            detector=("batched", DETECTOR_TINY_N),
        ),
    )

    full = (good / "refiner-tiny.onnx").read_bytes()
    write_bytes(broken / "truncated.onnx", full[: int(len(full) * 0.4)])
    write_bytes(
        broken / "truncated.toml",
        sidecar_text("truncated", "refiner", "Broken on purpose: the first 40% of refiner-tiny.onnx").encode(),
    )
    made["broken/truncated"] = broken / "truncated.onnx"
    write_bytes(
        broken / "not-onnx.onnx",
        b"This is a text file, not an ONNX model.\n"
        b"posed must reject it with an error that names the file.\n",
    )
    write_bytes(
        broken / "not-onnx.toml",
        sidecar_text("not-onnx", "refiner", "Broken on purpose: a text file, not ONNX").encode(),
    )
    made["broken/not-onnx"] = broken / "not-onnx.onnx"

    # ---- valid network, broken sidecar: each sidecar wrong in exactly one way.
    bad = {
        "role-segmenter": dict(role="segmenter"),
        "labels-wrong-type": dict(role="refiner", labels_value="3"),
        "missing-role": dict(role="refiner", role_line=False),
        "format-2": dict(role="refiner", format_value="2"),
    }
    for stem, kw in bad.items():
        role = kw.pop("role")
        write_bytes(bad_sidecars / f"{stem}.onnx", full)
        text = sidecar_text(stem, role, f"Broken sidecar on purpose ({stem}); the network is refiner-tiny", **kw)
        write_bytes(bad_sidecars / f"{stem}.toml", text.encode())
        made[f"broken/sidecar-bad/{stem}"] = bad_sidecars / f"{stem}.onnx"
    return made


# --------------------------------------------------------------------------- validation


def validate_with_onnxruntime(out):
    import onnxruntime as ort

    def session(path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(7)
    ident = IDENTITY_UPDATE

    for stem in ["refiner-tiny", "refiner-identity", "coarse-tiny"]:
        s = session(out / f"{stem}.onnx")
        for b in (1, 3):
            x = rng.uniform(0, 1, (b, 6, CROP_H, CROP_W)).astype(np.float32)
            (y,) = s.run(["pose_update"], {"images": x})
            assert y.shape == (b, 9) and y.dtype == np.float32, (stem, y.shape)
            assert np.all(np.isfinite(y))
            if stem == "refiner-identity":
                assert np.array_equal(y, np.tile(ident, (b, 1))), y
            else:
                assert np.max(np.abs(y - ident)) < 0.2, (stem, y)
        print(f"  ok {stem}: pose_update[0] = {np.array2string(y[0], precision=4)}")

    s = session(out / "detector-tiny.onnx")
    for b, h, w in [(2, 120, 160), (1, 480, 640), (3, 37, 53)]:
        x = rng.uniform(0, 1, (b, 3, h, w)).astype(np.float32)
        boxes, scores, labels = s.run(["boxes", "scores", "labels"], {"images": x})
        assert boxes.shape == (b, 8, 4) and scores.shape == (b, 8) and labels.shape == (b, 8)
        assert labels.dtype == np.int64 and np.all((labels >= 1) & (labels <= len(LABELS)))
        assert np.all(boxes[..., 0] < boxes[..., 2]) and np.all(boxes[..., 1] < boxes[..., 3])
        assert np.all(boxes >= 0) and np.all(boxes[..., [0, 2]] <= w) and np.all(boxes[..., [1, 3]] <= h)
        assert np.all((scores > 0) & (scores < 1))
    print(f"  ok detector-tiny: scores[0] = {np.array2string(scores[0], precision=3)}")

    s = session(out / "detector-torchvision.onnx")
    for h, w in [(120, 160), (480, 640)]:
        x = rng.uniform(0, 1, (3, h, w)).astype(np.float32)
        boxes, labels, scores, masks = s.run(["boxes", "labels", "scores", "masks"], {"images": x})
        n = TORCHVISION_N
        assert boxes.shape == (n, 4) and labels.shape == (n,) and scores.shape == (n,)
        assert masks.shape == (n, 1, h, w) and labels.dtype == np.int64
        assert np.all(boxes[:, 0] < boxes[:, 2]) and np.all(boxes[:, 1] < boxes[:, 3])
        assert np.all(np.diff(scores) < 0), scores
        assert np.all((labels >= 1) & (labels <= len(LABELS)))
    print(f"  ok detector-torchvision: scores = {np.array2string(scores, precision=3)}")

    # Broken networks that are valid ONNX must still run (they are wrong only in contract).
    for stem, feed in [
        ("refiner-input-name", {"input": np.zeros((1, 6, CROP_H, CROP_W), np.float32)}),
        ("refiner-5-channels", {"images": np.zeros((1, 5, CROP_H, CROP_W), np.float32)}),
        ("refiner-crop-size", {"images": np.zeros((2, 6, 256, 256), np.float32)}),
        ("refiner-output-9x1", {"images": np.zeros((2, 6, CROP_H, CROP_W), np.float32)}),
        ("refiner-fixed-batch", {"images": np.zeros((1, 6, CROP_H, CROP_W), np.float32)}),
        ("refiner-int64-input", {"images": np.zeros((1, 6, CROP_H, CROP_W), np.int64)}),
        ("detector-no-scores", {"images": np.zeros((1, 3, 64, 64), np.float32)}),
    ]:
        outs = session(out / "broken" / f"{stem}.onnx").run(None, feed)
        print(f"  ok broken/{stem}: runs, outputs {[o.shape for o in outs]}")
    for stem in ["truncated", "not-onnx"]:
        try:
            onnx.load(str(out / "broken" / f"{stem}.onnx"))
        except Exception as e:  # noqa: BLE001 - any parse error is what we want
            print(f"  ok broken/{stem}: onnx.load fails ({type(e).__name__})")
        else:
            raise AssertionError(f"{stem} parses")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--out", type=Path, default=root / "data" / "networks", help="output folder")
    parser.add_argument("--no-ort", action="store_true", help="skip the onnxruntime validation")
    args = parser.parse_args()

    out = args.out
    # Start from a clean broken/ so that renamed cases leave nothing stale behind.
    if (out / "broken").exists():
        shutil.rmtree(out / "broken")
    made = build_all(out)
    for name, path in made.items():
        print(f"wrote {os.path.relpath(path)} ({path.stat().st_size} bytes)")
    total = sum(p.stat().st_size for p in made.values())
    print(f"{len(made)} networks, {total} bytes of .onnx; every one but truncated/not-onnx passes onnx.checker (full_check)")
    if not args.no_ort:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime not installed: skipped the run check (pip install -r tools/requirements-onnx.txt)")
            return 0
        print("onnxruntime check:")
        validate_with_onnxruntime(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
