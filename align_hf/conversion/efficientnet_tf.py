"""EfficientNet variables of TensorFlow checkpoints -> timm ``tf_efficientnet_*`` tensors.

Two naming schemes are understood:

* Keras applications (coyo-align's image tower): ``stem_conv``, ``stem_bn``,
  ``block{stage}{letter}_{expand_conv,expand_bn,dwconv,bn,se_reduce,se_expand,project_conv,project_bn}``,
  ``top_conv``/``top_bn``;
* tensorflow/tpu TF1 (``efficientnet-bN/...``): ``stem/conv2d``, ``blocks_{i}/conv2d``,
  ``depthwise_conv2d``, ``tpu_batch_normalization{,_1,_2}``, ``se/conv2d{,_1}``, ``head/...``, where
  the layer suffixes shift for blocks without an expansion conv.

Both are parsed into one canonical description, from which the architecture (B0..B8, L2) is
inferred by comparing every block's kernel size and widths with each variant's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from align_hf.conversion.efficientnet_family import EFFICIENTNET_SCALES, Block, round_filters, variant_blocks
from align_hf.conversion.tf_layouts import ConversionError, Mapping, conv_kernel, depthwise_kernel, vector

BN_LEAVES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
# canonical block layer -> timm module, with (InvertedResidual) and without (DepthwiseSeparableConv) expansion
TIMM_EXPANDED = {"expand_conv": "conv_pw", "expand_bn": "bn1", "dwconv": "conv_dw", "bn": "bn2",
                 "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand", "project_conv": "conv_pwl",
                 "project_bn": "bn3"}
TIMM_SEPARABLE = {"dwconv": "conv_dw", "bn": "bn1", "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand",
                  "project_conv": "conv_pw", "project_bn": "bn2"}


@dataclass(frozen=True)
class EffVar:
    """One parsed EfficientNet variable."""

    key: str  # checkpoint key
    layer: str  # stem_conv, stem_bn, head_conv, head_bn, head_dense, or a block layer (TIMM_EXPANDED keys)
    leaf: str  # kernel, depthwise_kernel, bias, gamma, beta, moving_mean, moving_variance
    block: tuple[int, int] | None = None  # (stage, index in stage); tensorflow/tpu names give (-1, flat index)


# ---------------------------------------------------------------------------- parsing
_KERAS = re.compile(
    r"(?:^|/)(?:(?P<stem>stem_conv|stem_bn|top_conv|top_bn|predictions)|block(?P<stage>\d+)(?P<letter>[a-z])_"
    r"(?P<layer>expand_conv|expand_bn|dwconv|bn|se_reduce|se_expand|project_conv|project_bn))"
    r"/(?P<leaf>kernel|depthwise_kernel|bias|gamma|beta|moving_mean|moving_variance)$"
)


def parse_keras(names: dict[str, str]) -> tuple[list[EffVar], list[str]]:
    """Parse {checkpoint key: Keras variable name}; returns (variables, keys that did not parse)."""
    out, bad = [], []
    for key, name in names.items():
        m = _KERAS.search(name)
        if not m:
            bad.append(key)
            continue
        if m["stem"]:
            layer = {"stem_conv": "stem_conv", "stem_bn": "stem_bn", "top_conv": "head_conv", "top_bn": "head_bn",
                     "predictions": "head_dense"}[m["stem"]]
            out.append(EffVar(key, layer, m["leaf"]))
        else:
            out.append(EffVar(key, m["layer"], m["leaf"], (int(m["stage"]) - 1, ord(m["letter"]) - 97)))
    return out, bad


_TPU = re.compile(
    r"^(?P<scope>[^/]+)/(?:(?P<stem>stem|head)|blocks_(?P<block>\d+))/(?P<layer>[\w/]+?)"
    r"/(?P<leaf>kernel|depthwise_kernel|bias|gamma|beta|moving_mean|moving_variance)$"
)
_TPU_BN = re.compile(r"^(?:tpu_)?batch_normalization(?:_(\d+))?$")


def parse_tpu(names: dict[str, str]) -> tuple[list[EffVar], list[str], str | None]:
    """Parse {checkpoint key: tensorflow/tpu variable name}; returns (variables, keys that did not
    parse, the model scope such as ``efficientnet-b0``)."""
    parsed, bad, scopes = [], [], set()
    by_block: dict[int, set[str]] = {}
    for key, name in names.items():
        m = _TPU.match(name)
        if not m:
            bad.append(key)
            continue
        scopes.add(m["scope"])
        if m["block"] is not None:
            by_block.setdefault(int(m["block"]), set()).add(m["layer"])
        parsed.append((key, m))
    out = []
    for key, m in parsed:
        layer, leaf = m["layer"], m["leaf"]
        bn = _TPU_BN.match(layer)
        if m["stem"]:
            if layer == "conv2d":
                canon = f"{m['stem']}_conv"
            elif bn and bn.group(1) is None:
                canon = f"{m['stem']}_bn"
            elif layer == "dense" and m["stem"] == "head":
                canon = "head_dense"
            else:
                bad.append(key)
                continue
            out.append(EffVar(key, canon, leaf))
            continue
        index = int(m["block"])
        expanded = "conv2d_1" in by_block[index]
        bn_order = ["expand_bn", "bn", "project_bn"] if expanded else ["bn", "project_bn"]
        if layer == "conv2d":
            canon = "expand_conv" if expanded else "project_conv"
        elif layer == "conv2d_1":
            canon = "project_conv"
        elif layer == "depthwise_conv2d":
            canon = "dwconv"
        elif layer == "se/conv2d":
            canon = "se_reduce"
        elif layer == "se/conv2d_1":
            canon = "se_expand"
        elif bn:
            position = int(bn.group(1) or 0)
            if position >= len(bn_order):
                bad.append(key)
                continue
            canon = bn_order[position]
        else:
            bad.append(key)
            continue
        out.append(EffVar(key, canon, leaf, (-1, index)))
    scope = next(iter(scopes)) if len(scopes) == 1 else None
    if len(scopes) > 1:
        raise ConversionError(f"variables of several EfficientNets in one checkpoint: {sorted(scopes)}")
    return out, bad, scope


# ---------------------------------------------------------------------------- architecture
@dataclass(frozen=True)
class EfficientNetArch:
    variant: str  # b0..b8, l2
    width: float
    depth: float
    blocks: list[Block]  # variant_blocks(width, depth)

    @property
    def timm_name(self) -> str:
        return f"tf_efficientnet_{self.variant}"

    @property
    def out_channels(self) -> int:
        return self.blocks[-1].out_channels


def infer_architecture(variables: list[EffVar], shapes: dict[str, tuple[int, ...]]) -> EfficientNetArch:
    """Find the EfficientNet variant whose every block matches the checkpoint's shapes."""
    stem = [v for v in variables if v.layer == "stem_conv" and v.leaf == "kernel"]
    if not stem:
        raise ConversionError("no EfficientNet stem convolution (stem_conv / stem/conv2d kernel) in the checkpoint")
    stem_width = shapes[stem[0].key][-1]
    found: dict[tuple[int, int], dict] = {}
    for v in variables:
        if v.block is None:
            continue
        info = found.setdefault(v.block, {"expanded": False})
        shape = shapes[v.key]
        if v.layer == "dwconv" and v.leaf == "depthwise_kernel":
            info["kernel"], info["mid"] = shape[0], shape[2] * shape[3]
        elif v.layer == "project_conv" and v.leaf == "kernel":
            info["out"] = shape[-1]
        elif v.layer == "expand_conv":
            info["expanded"] = True
    order = sorted(found)
    signature = []
    for b in order:
        info = found[b]
        if "kernel" not in info or "out" not in info:
            raise ConversionError(f"block {b} lacks its depthwise or projection convolution")
        signature.append((info["kernel"], info["mid"], info["out"], info["expanded"]))
    stages_found = sorted({b[0] for b in order if b[0] >= 0})
    for variant, (width, depth) in EFFICIENTNET_SCALES.items():
        blocks = variant_blocks(width, depth)
        if round_filters(32, width) != stem_width or len(blocks) != len(signature):
            continue
        if [(b.kernel, b.mid_channels, b.out_channels, b.expanded) for b in blocks] != signature:
            continue
        if stages_found:  # Keras names also give each block's stage: check it too
            if [b[0] for b in order] != [block.stage for block in blocks]:
                continue
        return EfficientNetArch(variant, width, depth, blocks)
    per_stage = {}
    for b in order:
        per_stage[b[0]] = per_stage.get(b[0], 0) + 1
    raise ConversionError(
        f"the EfficientNet in the checkpoint matches none of {list(EFFICIENTNET_SCALES)}: stem width "
        f"{stem_width}, {len(signature)} blocks (per stage: {per_stage if stages_found else 'unnamed'}), "
        f"last width {signature[-1][2] if signature else None}"
    )


def stage_positions(arch: EfficientNetArch) -> list[tuple[int, int]]:
    """(stage, index in stage) of every block, in flat order."""
    return [(block.stage, block.index) for block in arch.blocks]


# ---------------------------------------------------------------------------- mapping
def map_efficientnet(variables: list[EffVar], arch: EfficientNetArch, mapping: Mapping, prefix: str,
                     keep_head: bool = False) -> None:
    """Add every variable to ``mapping`` under timm key names (``prefix`` + timm key)."""
    flat = stage_positions(arch)
    expanded_of = {(block.stage, block.index): block.expanded for block in arch.blocks}
    for v in variables:
        if v.layer == "head_dense":
            mapping.ignore(v.key, "classifier head (ALIGN pools features, no classifier)")
            continue
        if v.layer in ("head_conv", "head_bn") and not keep_head:
            mapping.ignore(v.key, "head conv/BN (ALIGN drops EfficientNet's top 1x1 conv)")
            continue
        if v.layer == "stem_conv":
            module = "conv_stem"
        elif v.layer == "stem_bn":
            module = "bn1"
        elif v.layer == "head_conv":
            module = "conv_head"
        elif v.layer == "head_bn":
            module = "bn2"
        else:
            stage, index = v.block if v.block[0] >= 0 else flat[v.block[1]]
            table = TIMM_EXPANDED if expanded_of[(stage, index)] else TIMM_SEPARABLE
            if v.layer not in table:
                mapping.unknown.append(v.key)
                continue
            module = f"blocks.{stage}.{index}.{table[v.layer]}"
        if v.leaf in BN_LEAVES:
            mapping.map(v.key, f"{prefix}{module}.{BN_LEAVES[v.leaf]}", vector)
        elif v.leaf == "kernel":
            mapping.map(v.key, f"{prefix}{module}.weight", conv_kernel)
        elif v.leaf == "depthwise_kernel":
            mapping.map(v.key, f"{prefix}{module}.weight", depthwise_kernel)
        else:
            mapping.map(v.key, f"{prefix}{module}.bias", vector)
