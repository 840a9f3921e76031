"""Convert a google-research/bert TensorFlow checkpoint to an align_hf text tower (no TensorFlow needed).

    align-hf convert tf-bert --checkpoint uncased_L-12_H-768_A-12/bert_model.ckpt \\
        --bert-config uncased_L-12_H-768_A-12/bert_config.json --vocab uncased_L-12_H-768_A-12/vocab.txt \\
        --output-dir text-bert-base

Reads TF1 names (``bert/encoder/layer_0/...``) and transformers' TFBertModel names
(``.../bert/encoder/layer_._0/...``). The size comes from the shapes; the number of heads from
``--bert-config``/``--num-attention-heads`` or, failing those, hidden size / 64. The pooler, the
pre-training heads (``cls/...``), Adam slots and ``global_step`` are ignored. The result is an
``AlignTextModel`` folder (plus the tokenizer when ``--vocab`` is given).
"""

from __future__ import annotations

import re
from pathlib import Path

from align_hf.conversion.bert_tf import BertVar, infer_bert_config, map_bert, parse_bert_name
from align_hf.conversion.command import conversion_parser, run_conversion
from align_hf.conversion.tf_checkpoint import CheckpointError
from align_hf.conversion.tf_layouts import CheckpointLayout, ConversionError, Mapping, load_checkpoint

_IGNORE = [
    (re.compile(r"(/adam_[mv]|/Adam(_\d+)?|/LAMB(_\d+)?|/lamb_[mv]|/Momentum)$|/\.OPTIMIZER_SLOT/"), "optimizer slot"),
    (re.compile(r"^(global_step|_CHECKPOINTABLE_OBJECT_GRAPH)$|^optimizer/|^save_counter/"), "step counter or optimizer state"),
    (re.compile(r"^cls/|(^|/)(mlm|nsp)___cls/"), "pre-training heads (masked LM / next sentence)"),
]


def bert_mapping(layout: CheckpointLayout, prefix: str, num_attention_heads: int | None = None,
                 bert_config: str | Path | None = None) -> tuple[Mapping, dict]:
    """Classify the checkpoint's variables for a BERT text tower whose keys start with ``prefix``."""
    mapping = Mapping()
    parsed: list[BertVar] = []
    for key, name in layout.names.items():
        rule = next((r for pattern, r in _IGNORE if pattern.search(key) or pattern.search(name)), None)
        if rule is None and key in layout.slots:
            rule = "optimizer slot"
        if rule is not None:
            mapping.ignore(key, rule)
        elif var := parse_bert_name(key, name):
            parsed.append(var)
        else:
            mapping.unknown.append(key)
    if not parsed:
        raise ConversionError(
            f"{layout.prefix} holds no BERT variables (expected names like 'bert/encoder/layer_0/...'); "
            f"first keys: {layout.keys()[:5]}"
        )
    fields = infer_bert_config(parsed, layout.shapes, num_attention_heads, bert_config)
    map_bert(parsed, mapping, prefix)
    return mapping, fields


def convert_tf_bert(checkpoint, bert_config=None, num_attention_heads: int | None = None, verify: bool = True,
                    progress: bool = False):
    """Read a BERT checkpoint into an ``AlignTextModel``; returns (model, notes)."""
    from align_hf import AlignTextConfig, AlignTextModel

    def plan(layout: CheckpointLayout):
        mapping, fields = bert_mapping(layout, "transformer.", num_attention_heads, bert_config)
        return mapping, AlignTextModel(AlignTextConfig(**fields)), (layout.prefix, fields)

    model, mapping, (prefix, fields) = load_checkpoint(checkpoint, plan, verify, progress)
    notes = [f"checkpoint: {prefix}", "BERT " + ", ".join(f"{k}={v}" for k, v in fields.items()), mapping.describe()]
    return model, notes


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = conversion_parser(__name__, __doc__, prog)
    parser.add_argument("--checkpoint", required=True, help="checkpoint prefix, .index file or directory")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--bert-config", help="google's bert_config.json (checked against the shapes)")
    parser.add_argument("--num-attention-heads", type=int)
    parser.add_argument("--vocab", help="vocab.txt: also save an uncased BERT tokenizer")
    parser.add_argument("--no-verify", action="store_true", help="skip the CRC32C check of the tensors read")
    args = parser.parse_args(argv)

    def work() -> list[str]:
        model, notes = convert_tf_bert(args.checkpoint, args.bert_config, args.num_attention_heads,
                                       not args.no_verify, progress=True)
        model.save_pretrained(args.output_dir)
        if args.vocab:
            from transformers import BertTokenizer

            BertTokenizer(args.vocab, do_lower_case=True, model_max_length=64).save_pretrained(args.output_dir)
        return notes + [f"wrote {args.output_dir}"]

    return run_conversion(work, (CheckpointError, ConversionError))


if __name__ == "__main__":
    raise SystemExit(main())
