#!/usr/bin/env python3
"""Export a CosyPose coarse or refiner checkpoint to ONNX plus a posed sidecar TOML.

Input: a run directory as released by ylabbe/cosypose (e.g. local_data/experiments/
ycbv-refiner-finetune--251020/) holding `checkpoint.pth.tar` (a dict with `state_dict`)
and `config.yaml` (an argparse.Namespace dumped by PyYAML).

Output: <out>/<name>.onnx and <out>/<name>.toml, where the network is CosyPose's
PosePredictor.net_forward (COSYPOSE_SPEC.md A.3):

    images  float32 [batch, 6, 240, 320], values in [0, 1]  (crop RGB ++ render RGB)
    -> EfficientNet-B3 backbone (in_channels 6, width 1.2, depth 1.4, BN eps 1e-3,
       momentum 0.01, SE 0.25, plain Swish x*sigmoid(x) for export, static "same"
       padding precomputed for image_size 300 at every conv)
    -> x.flatten(2).mean(-1)   (1536 features)
    -> pose_fc: Linear(1536, 9)
    -> pose_update float32 [batch, 9]

ONNX opset 17, dynamic batch (dim name "batch"), legacy TorchScript exporter.

The EfficientNet module is re-implemented here (no cosypose or efficientnet_pytorch
import needed) with the same module names, so the checkpoint's state_dict keys
(`backbone._conv_stem.weight`, `backbone._blocks.N._depthwise_conv.weight`, ...,
`pose_fc.weight`) load with strict=True; any difference is printed as a key diff.

STATUS: the torch parts of this script (loading, export, --check) were written without
torch available and have NOT been run. `--print-padding` and `--print-keys` need no
torch and were run (see tools/README.md). Run `--check` on the first real export.

Examples:
    # no torch needed:
    python3 tools/export_cosypose.py --print-padding
    python3 tools/export_cosypose.py --print-keys
    # export (needs torch, onnx, pyyaml; onnxruntime for --check):
    python3 tools/export_cosypose.py \\
        local_data/experiments/ycbv-refiner-finetune--251020 \\
        --out /path/to/networks --check
"""

import argparse
import hashlib
import inspect
import json
import math
import re
import sys
from collections import OrderedDict, namedtuple
from pathlib import Path

# --------------------------------------------------------------------------- architecture
# Pure Python (no torch): efficientnet_pytorch's block list, rounding and static padding,
# as copied into cosypose/models/efficientnet_utils.py.

WIDTH, DEPTH, IMAGE_SIZE = 1.2, 1.4, 300  # efficientnet_params('efficientnet-b3')
DEPTH_DIVISOR = 8
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention: 1 - 0.99
SE_RATIO = 0.25
CROP_H, CROP_W = 240, 320
N_FEATURES = 1536
N_POSE_DIMS = 9

# efficientnet_utils.efficientnet(): r=repeats k=kernel s=stride e=expand i=in o=out se=ratio
BLOCK_STRINGS = [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]

Block = namedtuple("Block", "index stage kernel stride cin cout expand se_channels skip")


def round_filters(filters):
    """efficientnet_utils.round_filters for width 1.2, divisor 8, min_depth None."""
    filters *= WIDTH
    new_filters = max(DEPTH_DIVISOR, int(filters + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    if new_filters < 0.9 * filters:  # prevent rounding by more than 10%
        new_filters += DEPTH_DIVISOR
    return int(new_filters)


def round_repeats(repeats):
    """efficientnet_utils.round_repeats for depth 1.4."""
    return int(math.ceil(DEPTH * repeats))


def decode_block_string(s):
    opts = {}
    for op in s.split("_"):
        parts = re.split(r"(\d.*)", op)
        if len(parts) >= 2:
            opts[parts[0]] = parts[1]
    return dict(
        kernel=int(opts["k"]),
        repeats=int(opts["r"]),
        cin=int(opts["i"]),
        cout=int(opts["o"]),
        expand=int(opts["e"]),
        stride=int(opts["s"][0]),
        se=float(opts["se"]),
    )


def b3_blocks():
    """The 26 MBConv blocks of EfficientNet-B3 in _blocks order."""
    blocks = []
    for stage, s in enumerate(BLOCK_STRINGS, start=1):
        a = decode_block_string(s)
        cin, cout = round_filters(a["cin"]), round_filters(a["cout"])
        stride = a["stride"]
        for _ in range(round_repeats(a["repeats"])):
            se = max(1, int(cin * a["se"]))
            skip = stride == 1 and cin == cout  # id_skip is True for every b3 block
            blocks.append(Block(len(blocks), stage, a["kernel"], stride, cin, cout, a["expand"], se, skip))
            cin, stride = cout, 1
    return blocks


STEM_CHANNELS = round_filters(32)  # 40
HEAD_IN = round_filters(320)  # 384
HEAD_CHANNELS = round_filters(1280)  # 1536


def static_same_pad(kernel, stride, image_size=IMAGE_SIZE):
    """Conv2dStaticSamePadding: (before, after) along one axis, computed for image_size.

    CosyPose's copy of efficientnet_pytorch passes the same global image_size (300) to
    every conv; efficientnet_pytorch >= 0.7 instead shrinks it stage by stage, which gives
    different pads (e.g. (2, 2) instead of (1, 2) at the k5/s2 stages). This follows CosyPose.
    """
    out = math.ceil(image_size / stride)
    total = max((out - 1) * stride + kernel - image_size, 0)
    return total // 2, total - total // 2


def dynamic_same_pad(kernel, stride, size):
    """Conv2dDynamicSamePadding (TF 'SAME' for the actual size), for comparison only."""
    return static_same_pad(kernel, stride, size)


def conv_out(size, kernel, stride, pad):
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def expected_state_dict(in_channels=6, n_pose_dims=N_POSE_DIMS):
    """Key -> shape of PosePredictor.state_dict() for the efficientnet-b3 backbone."""
    sd = OrderedDict()

    def bn(prefix, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{prefix}.{k}"] = (c,)
        sd[f"{prefix}.num_batches_tracked"] = ()

    sd["backbone._conv_stem.weight"] = (STEM_CHANNELS, in_channels, 3, 3)
    bn("backbone._bn0", STEM_CHANNELS)
    for b in b3_blocks():
        p = f"backbone._blocks.{b.index}"
        mid = b.cin * b.expand
        if b.expand != 1:
            sd[f"{p}._expand_conv.weight"] = (mid, b.cin, 1, 1)
            bn(f"{p}._bn0", mid)
        sd[f"{p}._depthwise_conv.weight"] = (mid, 1, b.kernel, b.kernel)
        bn(f"{p}._bn1", mid)
        sd[f"{p}._se_reduce.weight"] = (b.se_channels, mid, 1, 1)
        sd[f"{p}._se_reduce.bias"] = (b.se_channels,)
        sd[f"{p}._se_expand.weight"] = (mid, b.se_channels, 1, 1)
        sd[f"{p}._se_expand.bias"] = (mid,)
        sd[f"{p}._project_conv.weight"] = (b.cout, mid, 1, 1)
        bn(f"{p}._bn2", b.cout)
    sd["backbone._conv_head.weight"] = (HEAD_CHANNELS, HEAD_IN, 1, 1)
    bn("backbone._bn1", HEAD_CHANNELS)
    sd["pose_fc.weight"] = (n_pose_dims, N_FEATURES)
    sd["pose_fc.bias"] = (n_pose_dims,)
    return sd


def padding_table(height=CROP_H, width=CROP_W):
    """Every conv with a spatial kernel or stride: (name, k, s, groups, cin, cout, in, pads, out)."""
    rows = []
    h, w = height, width

    def conv(name, k, s, groups, cin, cout):
        nonlocal h, w
        ph, pw = static_same_pad(k, s), static_same_pad(k, s)
        oh, ow = conv_out(h, k, s, ph), conv_out(w, k, s, pw)
        dh, dw = dynamic_same_pad(k, s, h), dynamic_same_pad(k, s, w)
        rows.append(dict(name=name, k=k, s=s, groups=groups, cin=cin, cout=cout, size_in=(h, w),
                         pad_h=ph, pad_w=pw, size_out=(oh, ow), dyn_pad_h=dh, dyn_pad_w=dw))
        h, w = oh, ow

    conv("backbone._conv_stem", 3, 2, 1, 6, STEM_CHANNELS)
    for b in b3_blocks():
        mid = b.cin * b.expand
        conv(f"backbone._blocks.{b.index}._depthwise_conv", b.kernel, b.stride, mid, mid, mid)
    conv("backbone._conv_head", 1, 1, 1, HEAD_IN, HEAD_CHANNELS)
    return rows


def print_padding(height, width):
    rows = padding_table(height, width)
    print(f"EfficientNet-B3 static 'same' padding (Conv2dStaticSamePadding, image_size {IMAGE_SIZE})")
    print(f"for a {height}x{width} input. pad = (before, after) = (top, bottom) / (left, right);")
    print("every other conv is 1x1 stride 1 (expand, SE, project) and has no padding.")
    print("dyn = what TF-style dynamic 'same' padding would use for the actual size (not used).\n")
    hdr = f"{'conv':40s} {'k':>2s} {'s':>2s} {'groups':>6s} {'cin->cout':>10s} {'in':>8s} {'pad_h':>6s} {'pad_w':>6s} {'out':>8s}  dyn_pad_h/w"
    print(hdr)
    print("-" * len(hdr))
    sizes = [f"{height}x{width}"]
    dyn_h, dyn_w = height, width
    for r in rows:
        io = f"{r['size_in'][0]}x{r['size_in'][1]}"
        oo = f"{r['size_out'][0]}x{r['size_out'][1]}"
        cc = f"{r['cin']}->{r['cout']}"
        ph, pw = "({},{})".format(*r["pad_h"]), "({},{})".format(*r["pad_w"])
        dyn = "({},{})/({},{})".format(*r["dyn_pad_h"], *r["dyn_pad_w"])
        flag = "" if (r["dyn_pad_h"], r["dyn_pad_w"]) == (r["pad_h"], r["pad_w"]) else "  <- differs"
        print(f"{r['name']:40s} {r['k']:2d} {r['s']:2d} {r['groups']:6d} {cc:>10s} {io:>8s} {ph:>6s} {pw:>6s} {oo:>8s}  {dyn}{flag}")
        if r["s"] == 2:
            sizes.append(oo)
            dyn_h = conv_out(dyn_h, r["k"], 2, dynamic_same_pad(r["k"], 2, dyn_h))
            dyn_w = conv_out(dyn_w, r["k"], 2, dynamic_same_pad(r["k"], 2, dyn_w))
    print()
    print("feature maps (static, as CosyPose runs): " + " -> ".join(sizes))
    print(f"final map with dynamic TF-same padding would be {dyn_h}x{dyn_w} (not what CosyPose computes)")
    stem = rows[0]
    print(f"stem conv pads: top/bottom {stem['pad_h']}, left/right {stem['pad_w']}")
    return rows


def print_keys(in_channels):
    sd = expected_state_dict(in_channels)
    n = 0
    for k, shape in sd.items():
        print(f"{k} {list(shape)}")
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            n += math.prod(shape)
    print(f"# {len(sd)} keys, {n} trainable parameters (BN running stats excluded)")


# --------------------------------------------------------------------------- config, labels

KNOWN_DATASETS = {  # object_ds_name prefix -> (dataset, number of objects, BOP obj ids 1..n)
    "ycbv": ("ycbv", 21),
    "tless": ("tless", 30),
}


def load_config(path):
    """config.yaml without yaml.UnsafeLoader: python/* tags become plain dicts/lists/strings."""
    try:
        import yaml
    except ImportError:
        sys.exit("reading config.yaml needs PyYAML (pip install pyyaml), or pass --role and --labels")

    class Loader(yaml.SafeLoader):
        pass

    def construct_python(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", construct_python)
    cfg = yaml.load(Path(path).read_text(), Loader=Loader)
    if not isinstance(cfg, dict):
        sys.exit(f"{path}: expected a mapping (argparse.Namespace), found {type(cfg).__name__}")
    return cfg


def labels_from_args(args, cfg):
    if args.labels:
        if args.labels.startswith("@"):
            labels = [s.strip() for s in Path(args.labels[1:]).read_text().splitlines() if s.strip()]
        else:
            labels = [s.strip() for s in args.labels.split(",") if s.strip()]
        return labels, args.dataset
    if args.models_info:
        info = json.loads(Path(args.models_info).read_text())
        return [f"obj_{int(k):06d}" for k in sorted(info, key=int)], args.dataset
    name = str((cfg or {}).get("object_ds_name", ""))
    for prefix, (dataset, n) in KNOWN_DATASETS.items():
        if name.startswith(prefix):
            return [f"obj_{i:06d}" for i in range(1, n + 1)], args.dataset or dataset
    sys.exit(
        f"cannot tell the object labels from object_ds_name={name!r}: pass --labels "
        "obj_000001,obj_000002,... (or @file) or --models-info path/to/models_info.json"
    )


def toml_str(s):
    s = str(s)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sidecar_text(stem, role, labels, dataset, description):
    out = [f"# posed network sidecar (format 1): what the pipeline needs to know about {stem}.onnx"]
    out.append("format = 1")
    out.append(f"role = {toml_str(role)}")
    lines = ["    " + ", ".join(toml_str(x) for x in labels[i : i + 7]) + "," for i in range(0, len(labels), 7)]
    out.append("labels = [\n" + "\n".join(lines) + "\n]")
    if dataset:
        out.append(f"dataset = {toml_str(dataset)}")
    out.append(f"description = {toml_str(description)}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- torch model


def build_torch_model(in_channels=6, n_pose_dims=N_POSE_DIMS):
    """PosePredictor's backbone + pose_fc, with CosyPose's module names. Imports torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Swish(nn.Module):
        # efficientnet_utils.Swish: the plain form, "standard (for export)".
        def forward(self, x):
            return x * torch.sigmoid(x)

    class Conv2dStaticSamePadding(nn.Conv2d):
        # efficientnet_utils.Conv2dStaticSamePadding: ZeroPad2d precomputed for 300x300.
        def __init__(self, cin, cout, kernel_size, stride=1, groups=1, bias=True):
            super().__init__(cin, cout, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)
            ph = static_same_pad(kernel_size, stride)
            pw = static_same_pad(kernel_size, stride)
            if sum(ph) > 0 or sum(pw) > 0:
                self.static_padding = nn.ZeroPad2d((pw[0], pw[1], ph[0], ph[1]))  # (left, right, top, bottom)
            else:
                self.static_padding = nn.Identity()

        def forward(self, x):
            x = self.static_padding(x)
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def bn(c):
        return nn.BatchNorm2d(num_features=c, momentum=BN_MOMENTUM, eps=BN_EPS)

    class MBConvBlock(nn.Module):
        def __init__(self, b):
            super().__init__()
            self.b = b
            mid = b.cin * b.expand
            if b.expand != 1:
                self._expand_conv = Conv2dStaticSamePadding(b.cin, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._depthwise_conv = Conv2dStaticSamePadding(mid, mid, b.kernel, stride=b.stride, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._se_reduce = Conv2dStaticSamePadding(mid, b.se_channels, 1)
            self._se_expand = Conv2dStaticSamePadding(b.se_channels, mid, 1)
            self._project_conv = Conv2dStaticSamePadding(mid, b.cout, 1, bias=False)
            self._bn2 = bn(b.cout)
            self._swish = Swish()

        def forward(self, inputs):
            x = inputs
            if self.b.expand != 1:
                x = self._swish(self._bn0(self._expand_conv(inputs)))
            x = self._swish(self._bn1(self._depthwise_conv(x)))
            s = F.adaptive_avg_pool2d(x, 1)
            s = self._se_expand(self._swish(self._se_reduce(s)))
            x = torch.sigmoid(s) * x
            x = self._bn2(self._project_conv(x))
            if self.b.skip:  # drop_connect is training only
                x = x + inputs
            return x

    class EfficientNetB3(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem = Conv2dStaticSamePadding(in_channels, STEM_CHANNELS, 3, stride=2, bias=False)
            self._bn0 = bn(STEM_CHANNELS)
            self._blocks = nn.ModuleList([MBConvBlock(b) for b in b3_blocks()])
            self._conv_head = Conv2dStaticSamePadding(HEAD_IN, HEAD_CHANNELS, 1, bias=False)
            self._bn1 = bn(HEAD_CHANNELS)
            self._swish = Swish()

        def forward(self, x):  # extract_features
            x = self._swish(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            return self._swish(self._bn1(self._conv_head(x)))

    class PoseNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = EfficientNetB3()
            self.pose_fc = nn.Linear(N_FEATURES, n_pose_dims, bias=True)

        def forward(self, images):  # PosePredictor.net_forward
            x = self.backbone(images)
            x = x.flatten(2).mean(dim=-1)
            return self.pose_fc(x)

    return PoseNet()


def torch_load(path, trust_pickle):
    import torch

    kwargs = {"map_location": "cpu"}
    has_weights_only = "weights_only" in inspect.signature(torch.load).parameters
    if has_weights_only:
        try:
            return torch.load(path, weights_only=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - report and maybe retry below
            if not trust_pickle:
                sys.exit(
                    f"{path}: torch.load(weights_only=True) failed ({type(e).__name__}: {e}).\n"
                    "The checkpoint holds more than tensors. If you trust the file, rerun with "
                    "--trust-pickle (it then runs arbitrary pickled code)."
                )
            print(f"note: weights_only load failed ({type(e).__name__}); loading with full unpickling (--trust-pickle)")
            return torch.load(path, weights_only=False, **kwargs)
    if not trust_pickle:
        sys.exit(f"this torch ({torch.__version__}) has no weights_only loading; rerun with --trust-pickle if you trust {path}")
    return torch.load(path, **kwargs)


def load_state_dict_checked(model, ckpt_path, trust_pickle):
    """Load with strict=True after printing a clear diff of keys and shapes."""
    ckpt = torch_load(ckpt_path, trust_pickle)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    if not isinstance(state, dict):
        sys.exit(f"{ckpt_path}: no state_dict found (top level is {type(ckpt).__name__})")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = OrderedDict((k[len("module.") :], v) for k, v in state.items())

    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    # BN num_batches_tracked does not change inference; tolerate checkpoints without it.
    filled = [k for k in missing if k.endswith("num_batches_tracked")]
    for k in filled:
        state[k] = expected[k]
    missing = [k for k in missing if k not in filled]
    if filled:
        print(f"note: {len(filled)} BatchNorm num_batches_tracked buffers missing in the checkpoint, filled with 0")
    if missing or unexpected or mismatched:
        print(f"state_dict of {ckpt_path} does not match the EfficientNet-B3 pose network:", file=sys.stderr)
        for k in missing:
            print(f"  missing     {k} {list(expected[k].shape)}", file=sys.stderr)
        for k in unexpected:
            print(f"  unexpected  {k} {list(state[k].shape)}", file=sys.stderr)
        for k, got, want in mismatched:
            print(f"  shape       {k}: checkpoint {list(got)}, expected {list(want)}", file=sys.stderr)
        print(
            f"  ({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} wrong shape; "
            "`--print-keys` lists the expected keys)",
            file=sys.stderr,
        )
        sys.exit(2)
    model.load_state_dict(state, strict=True)
    return ckpt


# --------------------------------------------------------------------------- export


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(args):
    import onnx
    import torch

    run_dir = Path(args.run_dir)
    ckpt_path = run_dir / args.checkpoint
    if not ckpt_path.is_file():
        sys.exit(f"{ckpt_path}: no such file")
    cfg_path = run_dir / "config.yaml"
    cfg = load_config(cfg_path) if cfg_path.is_file() else None
    if cfg is None and not (args.role and (args.labels or args.models_info)):
        sys.exit(f"{cfg_path}: no such file; pass --role and --labels (or --models-info)")

    if cfg is not None:
        backbone = cfg.get("backbone_str", "efficientnet-b3")
        if backbone != "efficientnet-b3":
            sys.exit(f"{cfg_path}: backbone_str = {backbone!r}; only efficientnet-b3 is supported")
        n_pose_dims = int(cfg.get("n_pose_dims", N_POSE_DIMS))
        if n_pose_dims != N_POSE_DIMS:
            sys.exit(f"{cfg_path}: n_pose_dims = {n_pose_dims}; the posed contract needs 9 (6D rotation + vx, vy, vz)")
    role = args.role or ("refiner" if cfg.get("train_refiner", False) else "coarse")
    labels, dataset = labels_from_args(args, cfg)
    name = args.name or run_dir.resolve().name
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"

    torch.manual_seed(0)
    model = build_torch_model()
    ckpt = load_state_dict_checked(model, ckpt_path, args.trust_pickle)
    model.eval()
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    print(f"loaded {ckpt_path} (role {role}, {len(labels)} labels{f', epoch {epoch}' if epoch is not None else ''})")

    # The backbone's last feature map must be 7x10 for 240x320 (static padding, spec A.3).
    gen = torch.Generator().manual_seed(0)
    dummy = torch.rand(2, 6, CROP_H, CROP_W, generator=gen)
    with torch.no_grad():
        feats = model.backbone(dummy)
    if tuple(feats.shape) != (2, N_FEATURES, 7, 10):
        sys.exit(f"backbone features are {tuple(feats.shape)}, expected (2, 1536, 7, 10): padding is wrong")

    kwargs = dict(
        input_names=["images"],
        output_names=["pose_update"],
        dynamic_axes={"images": {0: "batch"}, "pose_update": {0: "batch"}},
        opset_version=17,
        do_constant_folding=True,
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: dynamic_axes, no onnxscript needed
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), str(onnx_path), **kwargs)

    # Check the contract and record where the file came from.
    m = onnx.load(str(onnx_path))
    onnx.checker.check_model(m, full_check=True)
    (inp,), (out,) = m.graph.input, m.graph.output

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    if inp.name != "images" or dims(inp) != ["batch", 6, CROP_H, CROP_W]:
        sys.exit(f"exported input is {inp.name} {dims(inp)}, expected images ['batch', 6, 240, 320]")
    if out.name != "pose_update" or dims(out) != ["batch", 9]:
        sys.exit(f"exported output is {out.name} {dims(out)}, expected pose_update ['batch', 9]")
    ckpt_sha = sha256_file(ckpt_path)
    meta = {
        "posed.source": f"CosyPose {role} {run_dir.resolve().name}",
        "posed.checkpoint_sha256": ckpt_sha,
        "posed.exporter": f"tools/export_cosypose.py, torch {torch.__version__}",
    }
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(onnx_path))

    desc = f"CosyPose {role} ({run_dir.resolve().name}), EfficientNet-B3, exported by tools/export_cosypose.py; checkpoint sha256 {ckpt_sha[:16]}"
    (out_dir / f"{name}.toml").write_text(sidecar_text(name, role, labels, dataset, desc))
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes) and {out_dir / (name + '.toml')}")

    if args.check:
        return check(model, onnx_path, args.atol)
    return 0


def check(model, onnx_path, atol):
    """Run the ONNX file in onnxruntime and the torch model on the same inputs."""
    import numpy as np
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for b in (1, 3):  # not the export batch (2): checks the dynamic batch dim too
        x = rng.uniform(0, 1, (b, 6, CROP_H, CROP_W)).astype(np.float32)
        (y_ort,) = sess.run(["pose_update"], {"images": x})
        with torch.no_grad():
            y_torch = model(torch.from_numpy(x)).numpy()
        diff = float(np.max(np.abs(y_ort - y_torch)))
        worst = max(worst, diff)
        print(f"--check B={b}: max |onnxruntime - torch| = {diff:.3g}  (torch row 0: {np.array2string(y_torch[0], precision=4)})")
    ok = worst <= atol
    print(f"--check {'passed' if ok else 'FAILED'}: max abs difference {worst:.3g} (atol {atol})")
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(
        description="Export a CosyPose coarse/refiner checkpoint to ONNX + posed sidecar TOML.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__[__doc__.index("Examples:") :],
    )
    p.add_argument("run_dir", nargs="?", help="CosyPose run directory (checkpoint.pth.tar, config.yaml)")
    p.add_argument("--out", default="cosypose-onnx", help="output folder (default: %(default)s)")
    p.add_argument("--name", help="output file stem (default: the run directory's name)")
    p.add_argument("--checkpoint", default="checkpoint.pth.tar", help="checkpoint file in run_dir (default: %(default)s)")
    p.add_argument("--role", choices=["coarse", "refiner"], help="default: from config.yaml train_refiner")
    p.add_argument("--labels", help="comma-separated labels, or @file with one label per line")
    p.add_argument("--models-info", help="BOP models_info.json: labels obj_XXXXXX for its object ids")
    p.add_argument("--dataset", help="dataset name for the sidecar (default: from config object_ds_name)")
    p.add_argument("--check", action="store_true", help="compare onnxruntime with torch after export")
    p.add_argument("--atol", type=float, default=1e-4, help="--check tolerance (default: %(default)s)")
    p.add_argument("--trust-pickle", action="store_true", help="allow full unpickling of the checkpoint")
    p.add_argument("--print-padding", action="store_true", help="print the static padding table (no torch needed)")
    p.add_argument("--print-keys", action="store_true", help="print the expected state_dict keys (no torch needed)")
    p.add_argument("--height", type=int, default=CROP_H, help="input height for --print-padding")
    p.add_argument("--width", type=int, default=CROP_W, help="input width for --print-padding")
    args = p.parse_args()

    if args.print_padding or args.print_keys:
        if args.print_padding:
            print_padding(args.height, args.width)
        if args.print_keys:
            print_keys(6)
        return 0
    if not args.run_dir:
        p.error("run_dir is required (or use --print-padding / --print-keys)")
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("exporting needs torch (pip install torch onnx pyyaml, and onnxruntime for --check)")
    return export(args)


if __name__ == "__main__":
    sys.exit(main())
