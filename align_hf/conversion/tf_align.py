"""Convert a kakaobrain/coyo-align TensorFlow checkpoint to an align_hf model folder (no TensorFlow needed).

    align-hf convert tf-align --checkpoint model-weights --vocab vocab.txt --output-dir align-b7
    align-hf convert tf-align --checkpoint ckpt_dir/ --vocab vocab.txt --output-dir out --push-to-hub me/align-b7
    python -m align_hf.conversion.tf_align ...   # the same

The architecture is read from the checkpoint: EfficientNet B0..B7 from its blocks, BERT size and
vocabulary from the shapes, whether an image Dense exists, the embedding size. Every variable is
mapped or ignored by a named rule (optimizer slots, loss trackers, the BERT pooler...) and every
model tensor must be filled, otherwise the conversion stops with the list of offending names.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from align_hf.conversion.bert_tf import BertVar, infer_bert_config, map_bert, parse_bert_name
from align_hf.conversion.command import conversion_parser, run_conversion
from align_hf.conversion.efficientnet_tf import infer_architecture, map_efficientnet, parse_keras
from align_hf.conversion.tf_checkpoint import CheckpointError
from align_hf.conversion.tf_layouts import (
    CheckpointLayout,
    ConversionError,
    Mapping,
    dense_kernel,
    describe_ignored,
    load_checkpoint,
    scalar,
    vector,
)

VISION_PREFIX = "vision_model.backbone."
TEXT_PREFIX = "text_model.transformer."

# Top-level objects of a coyo-align checkpoint that hold no model weights.
_IGNORE_RULES = [
    (re.compile(r"^_CHECKPOINTABLE_OBJECT_GRAPH$"), "object graph"),
    (re.compile(r"/\.OPTIMIZER_SLOT/"), "optimizer slot"),
    (re.compile(r"^optimizer/"), "optimizer state"),
    (re.compile(r"^save_counter/"), "save counter"),
    (re.compile(r"^(loss|loss_\w+|\w+_tracker|\w+_metric)/(count|total)/"), "loss tracker"),
]
_IMAGE_DENSE = re.compile(r"^image_encoder/layer_with_weights-\d+/(kernel|bias)/\.ATTRIBUTES/VARIABLE_VALUE$")
_TEXT_DENSE = re.compile(r"^text_encoder/layer_with_weights-\d+/(kernel|bias)/\.ATTRIBUTES/VARIABLE_VALUE$")
_TEMPERATURE = re.compile(r"^temperature/\.ATTRIBUTES/VARIABLE_VALUE$")


@dataclass
class ConversionReport:
    """What the converter inferred and did, for the log and the model card."""

    checkpoint: str
    efficientnet: str = ""
    bert: dict = field(default_factory=dict)
    image_projection: bool = False
    projection_dim: int = 0
    temperature: float = 1.0
    mapped: int = 0
    ignored: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [
            f"checkpoint: {self.checkpoint}",
            f"image tower: EfficientNet-{self.efficientnet.upper()}"
            + (" + Dense projection" if self.image_projection else " (pooled features are the embedding)"),
            "text tower: BERT " + ", ".join(f"{k}={v}" for k, v in self.bert.items()),
            f"embedding size: {self.projection_dim}; temperature: {self.temperature:.6g}",
            f"variables mapped: {self.mapped}; ignored: {describe_ignored(self.ignored)}",
        ]


def build_mapping(layout: CheckpointLayout, num_attention_heads: int | None = None):
    """Classify every checkpoint key; returns (mapping, AlignConfig, report). Reads no tensor data."""
    from align_hf import AlignConfig

    keys = layout.keys()
    if not layout.object_based or not any(k.startswith("image_encoder/") for k in keys) or not any(
        k.startswith("text_encoder/") for k in keys
    ):
        tops = sorted({k.split("/")[0] for k in keys})[:15]
        raise ConversionError(
            f"{layout.prefix} is not a coyo-align ALIGN checkpoint (expected TF2 object-based keys under "
            f"image_encoder/, text_encoder/ and temperature/; found top-level names {tops}). "
            "For tensorflow/tpu EfficientNet or google-research BERT checkpoints use "
            "`align-hf convert tf-efficientnet` / `align-hf convert tf-bert`."
        )
    mapping = Mapping()
    keras_names: dict[str, str] = {}
    bert_vars: list[BertVar] = []
    image_dense: dict[str, str] = {}
    text_dense: dict[str, str] = {}
    for key in keys:
        rule = next((name for pattern, name in _IGNORE_RULES if pattern.search(key)), None)
        if rule is None and key in layout.slots:
            rule = "optimizer slot"
        if rule is not None:
            mapping.ignore(key, rule)
            continue
        full_name = layout.names[key]
        if _TEMPERATURE.match(key):
            mapping.map(key, "contrastive_head.temperature", scalar)
        elif _IMAGE_DENSE.match(key):
            image_dense[_IMAGE_DENSE.match(key).group(1)] = key
        elif _TEXT_DENSE.match(key):
            text_dense[_TEXT_DENSE.match(key).group(1)] = key
        elif key.startswith("image_encoder/") and full_name:
            keras_names[key] = full_name
        elif key.startswith("text_encoder/") and full_name and (var := parse_bert_name(key, full_name)):
            bert_vars.append(var)
        else:
            mapping.unknown.append(key)
    if "contrastive_head.temperature" not in {t for t, _ in mapping.mapped.values()}:
        raise ConversionError(f"{layout.prefix}: no temperature variable (temperature/.ATTRIBUTES/VARIABLE_VALUE)")

    effnet_vars, bad = parse_keras(keras_names)
    mapping.unknown.extend(bad)
    shapes = layout.shapes
    arch = infer_architecture(effnet_vars, shapes)
    map_efficientnet(effnet_vars, arch, mapping, VISION_PREFIX)

    bert = infer_bert_config(bert_vars, shapes, num_attention_heads)
    map_bert(bert_vars, mapping, TEXT_PREFIX)

    if set(text_dense) != {"kernel", "bias"}:
        raise ConversionError(f"{layout.prefix}: the text projection Dense (kernel and bias) was not found")
    hidden, projection_dim = shapes[text_dense["kernel"]]
    mapping.map(text_dense["kernel"], "text_projection.weight", dense_kernel)
    mapping.map(text_dense["bias"], "text_projection.bias", vector)
    image_projection_dim = None
    if image_dense:
        if set(image_dense) != {"kernel", "bias"}:
            raise ConversionError(f"{layout.prefix}: incomplete image Dense: {sorted(image_dense.values())}")
        image_projection_dim = shapes[image_dense["kernel"]][1]
        mapping.map(image_dense["kernel"], "image_projection.weight", dense_kernel)
        mapping.map(image_dense["bias"], "image_projection.bias", vector)
    image_dim = image_projection_dim or arch.out_channels
    if image_dim != projection_dim:
        raise ConversionError(
            f"image embeddings have {image_dim} features but text embeddings {projection_dim}; not an ALIGN pair"
        )
    config = AlignConfig(
        vision_config=dict(model_name=arch.timm_name, image_size=289, padding="keras",
                           batch_norm_eps=1e-3, batch_norm_momentum=0.01, image_projection_dim=image_projection_dim),
        text_config=bert,
        projection_dim=projection_dim,
    )
    report = ConversionReport(
        checkpoint=layout.prefix,
        efficientnet=arch.variant,
        bert=dict(bert),
        image_projection=image_projection_dim is not None,
        projection_dim=projection_dim,
        mapped=len(mapping.mapped),
        ignored=mapping.ignored_summary(),
    )
    return mapping, config, report


def convert_coyo_align(checkpoint: str | Path, num_attention_heads: int | None = None, verify: bool = True,
                       progress: bool = False):
    """Read a coyo-align checkpoint into an ``AlignModel`` (eval mode); returns (model, report)."""
    from align_hf import AlignModel

    def plan(layout: CheckpointLayout):
        mapping, config, report = build_mapping(layout, num_attention_heads)
        return mapping, AlignModel(config), report

    model, _, report = load_checkpoint(checkpoint, plan, verify, progress)
    report.temperature = float(model.contrastive_head.temperature.detach())
    return model, report


def make_processor(vocab_file: str | Path, image_size: int = 289, resize: int | None = None, max_length: int = 64):
    """ALIGN's processor: resize to ``resize`` (346 for 289, in proportion otherwise), centre crop
    ``image_size``, x/127.5 - 1, BERT uncased WordPiece padded to ``max_length``."""
    from transformers import BertTokenizer

    from align_hf import AlignImageProcessor, AlignProcessor

    if not Path(vocab_file).is_file():
        raise FileNotFoundError(f"vocabulary file not found: {vocab_file}")
    tokenizer = BertTokenizer(str(vocab_file), do_lower_case=True, model_max_length=max_length)
    image_processor = AlignImageProcessor.for_image_size(image_size, resize=resize)
    return AlignProcessor(image_processor=image_processor, tokenizer=tokenizer)


def write_model_folder(model, output_dir: str | Path, vocab_file: str | Path | None, notes: list[str],
                       repo_id: str | None = None) -> Path:
    """Save weights, config, processor and a model card with the conversion notes."""
    from align_hf.hub import build_model_card

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if vocab_file is not None:
        processor = make_processor(vocab_file, image_size=model.config.vision_config.image_size)
        vocab_size = len(processor.tokenizer)
        if vocab_size > model.config.text_config.vocab_size:
            raise ConversionError(
                f"{vocab_file} has {vocab_size} tokens but the BERT embedding has "
                f"{model.config.text_config.vocab_size} rows; wrong vocabulary file?"
            )
        processor.save_pretrained(out)
    card = build_model_card(model.config, repo_id, tags=["converted-from-tensorflow"])
    card.text += "\n## Conversion\n\nConverted from a TensorFlow checkpoint by `align-hf convert`:\n\n"
    card.text += "\n".join(f"- {line}" for line in notes) + "\n"
    card.save(out / "README.md")
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = conversion_parser(__name__, __doc__, prog)
    parser.add_argument("--checkpoint", required=True, help="checkpoint prefix, .index file or directory")
    parser.add_argument("--output-dir", required=True, help="folder to write the align_hf model to")
    parser.add_argument("--vocab", help="BERT uncased vocab.txt for the tokenizer (without it no processor is written)")
    parser.add_argument("--num-attention-heads", type=int, help="default: hidden size / 64, as in every released BERT")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--no-verify", action="store_true", help="skip the CRC32C check of the tensors read")
    args = parser.parse_args(argv)

    def work() -> list[str]:
        model, report = convert_coyo_align(args.checkpoint, args.num_attention_heads, not args.no_verify, progress=True)
        if args.vocab is None:
            print("warning: no --vocab given: the folder gets no tokenizer/processor", file=sys.stderr)
        out = write_model_folder(model, args.output_dir, args.vocab, report.lines(), args.push_to_hub)
        return report.lines() + [f"wrote {out}"]

    code = run_conversion(work, (CheckpointError, ConversionError, FileNotFoundError))
    if code == 0 and args.push_to_hub:
        from align_hf.hub import upload_folder_to_hub

        upload_folder_to_hub(str(Path(args.output_dir)), args.push_to_hub, private=args.private or None,
                             commit_message="Convert coyo-align TensorFlow checkpoint")
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    return code


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
