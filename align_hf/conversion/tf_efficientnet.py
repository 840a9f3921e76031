"""Convert a TensorFlow EfficientNet checkpoint to an align_hf image tower (no TensorFlow needed).

    align-hf convert tf-efficientnet --checkpoint efficientnet-b7/model.ckpt --output-dir vision-b7

Reads tensorflow/tpu checkpoints (TF1 names ``efficientnet-bN/blocks_i/...``; the
``ExponentialMovingAverage`` shadows are used when present, as for evaluation) and Keras-named ones
(``stem_conv``, ``block1a_dwconv``...). The variant B0..B8/L2 is inferred from the blocks. The
result is an ``AlignVisionModel`` folder; start ALIGN training from it with
``align-hf convert tf-towers`` (both towers) or by loading it into ``AlignModel.vision_model``.

tensorflow/tpu models pad stride-2 convolutions like TF 'SAME', Keras applications with a fixed
``correct_pad``: the default ``--padding`` follows the naming, so outputs match the original.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from align_hf.conversion.command import conversion_parser, run_conversion
from align_hf.conversion.efficientnet_tf import EfficientNetArch, infer_architecture, map_efficientnet, parse_keras, parse_tpu
from align_hf.conversion.tf_checkpoint import CheckpointError
from align_hf.conversion.tf_layouts import CheckpointLayout, ConversionError, Mapping, describe_ignored, load_checkpoint

EMA_SUFFIX = "/ExponentialMovingAverage"
# Optimizer slots and bookkeeping of TF1 and TF2 training checkpoints.
SLOT_OR_STEP = re.compile(
    r"(/(RMSProp(_\d+)?|Momentum|Adam(_\d+)?|adam_[mv]|LAMB(_\d+)?|lamb_[mv]|Adagrad|ftrl)$|"
    r"^global_step$|^_CHECKPOINTABLE_OBJECT_GRAPH$|/\.OPTIMIZER_SLOT/|^optimizer/|^save_counter/)"
)


@dataclass
class VisionConversion:
    arch: EfficientNetArch
    naming: str  # "tpu" or "keras"
    padding: str
    mapping: Mapping
    ema_used: int = 0
    notes: list[str] = field(default_factory=list)


def efficientnet_mapping(layout: CheckpointLayout, prefix: str, use_ema: bool = True, keep_head: bool = False,
                         padding: str | None = None) -> VisionConversion:
    """Classify the checkpoint's variables for an EfficientNet image tower whose keys start with ``prefix``."""
    mapping = Mapping()
    names: dict[str, str] = {}  # key to read -> variable name
    variables = layout.names
    for key in layout.keys():
        if SLOT_OR_STEP.search(key) or key in layout.slots:
            mapping.ignore(key, "optimizer slot or step counter")
        elif key.endswith(EMA_SUFFIX):
            base = key[: -len(EMA_SUFFIX)]
            if base not in variables:
                mapping.unknown.append(key)
            elif not use_ema:
                mapping.ignore(key, "moving-average shadow (--no-ema)")
        else:
            names[key] = variables[key]
    ema_used = 0
    if use_ema:
        for key in list(names):
            if key + EMA_SUFFIX in variables:
                mapping.ignore(key, "raw weight (its ExponentialMovingAverage shadow is used)")
                names[key + EMA_SUFFIX] = names.pop(key)
                ema_used += 1
    tpu_like = sum(1 for n in names.values() if re.match(r"^[^/]+/(stem|blocks_\d+|head)/", n))
    if tpu_like > len(names) // 2:
        parsed, bad, scope = parse_tpu(names)
        naming = "tpu"
    else:
        parsed, bad = parse_keras(names)
        naming = "keras"
        scope = None
    if not parsed:
        raise ConversionError(
            f"{layout.prefix} holds no EfficientNet variables (neither tensorflow/tpu 'efficientnet-bN/blocks_i/...' "
            f"nor Keras 'block1a_dwconv/...' names); first keys: {layout.keys()[:5]}"
        )
    mapping.unknown.extend(bad)
    arch = infer_architecture(parsed, layout.shapes)
    if scope and not scope.endswith(arch.variant):
        raise ConversionError(f"the checkpoint calls its model {scope!r} but its blocks are EfficientNet-{arch.variant}")
    map_efficientnet(parsed, arch, mapping, prefix, keep_head=keep_head)
    padding = padding or ("same" if naming == "tpu" else "keras")
    ema_used = sum(1 for k in mapping.mapped if k.endswith(EMA_SUFFIX))
    return VisionConversion(arch, naming, padding, mapping, ema_used)


def convert_tf_efficientnet(checkpoint, padding: str | None = None, use_ema: bool = True, keep_head: bool = False,
                            image_size: int = 289, verify: bool = True, progress: bool = False):
    """Read an EfficientNet checkpoint into an ``AlignVisionModel``; returns (model, notes)."""
    from align_hf import AlignVisionConfig, AlignVisionModel

    def plan(layout: CheckpointLayout):
        conv = efficientnet_mapping(layout, "backbone.", use_ema, keep_head, padding)
        config = AlignVisionConfig(model_name=conv.arch.timm_name, image_size=image_size, padding=conv.padding,
                                   batch_norm_eps=1e-3, batch_norm_momentum=0.01, keep_head=keep_head)
        return conv.mapping, AlignVisionModel(config), (layout.prefix, conv)

    model, mapping, (prefix, conv) = load_checkpoint(checkpoint, plan, verify, progress)
    notes = [
        f"checkpoint: {prefix} ({conv.naming} names)",
        f"EfficientNet-{conv.arch.variant.upper()} -> timm {conv.arch.timm_name}, padding={conv.padding}",
        f"variables mapped: {len(mapping.mapped)} ({conv.ema_used} from moving-average shadows); "
        f"ignored: {describe_ignored(mapping.ignored_summary())}",
    ]
    return model, notes


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = conversion_parser(__name__, __doc__, prog)
    parser.add_argument("--checkpoint", required=True, help="checkpoint prefix, .index file or directory")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--padding", choices=["same", "keras", "symmetric"],
                        help="stride-2 padding; default: 'same' for tensorflow/tpu names, 'keras' for Keras names")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the moving-average shadows")
    parser.add_argument("--keep-head", action="store_true", help="keep the 1x1 head conv (ALIGN drops it)")
    parser.add_argument("--image-size", type=int, default=289)
    parser.add_argument("--no-verify", action="store_true", help="skip the CRC32C check of the tensors read")
    args = parser.parse_args(argv)

    def work() -> list[str]:
        model, notes = convert_tf_efficientnet(args.checkpoint, args.padding, not args.no_ema, args.keep_head,
                                               args.image_size, not args.no_verify, progress=True)
        model.save_pretrained(args.output_dir)
        return notes + [f"wrote {args.output_dir}"]

    return run_conversion(work, (CheckpointError, ConversionError))


if __name__ == "__main__":
    raise SystemExit(main())
