"""BERT variables of TensorFlow checkpoints -> transformers ``BertModel`` tensors.

Understands transformers' TFBertModel names (``.../bert/encoder/layer_._0/attention/self/query/kernel``,
``embeddings/word_embeddings/weight``, ``position_embeddings/embeddings``), as in coyo-align
checkpoints, and google-research/bert TF1 names (``bert/encoder/layer_0/...``,
``bert/embeddings/word_embeddings``). The model size is read off the shapes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from align_hf.conversion.tf_layouts import ConversionError, Mapping, dense_kernel, same, vector

# A BERT variable name from "bert/" on, in either naming.
_BERT = re.compile(r"(?:^|/)bert/(?P<rest>.+)$")
_EMBEDDING = re.compile(r"^embeddings/(?P<which>word|position|token_type)_embeddings(?:/(?:weight|embeddings))?$")
_LAYER = re.compile(r"^encoder/layer_(?:\._)?(?P<index>\d+)/(?P<rest>.+)$")
_SUBLAYERS = {
    "attention/self/query",
    "attention/self/key",
    "attention/self/value",
    "attention/output/dense",
    "attention/output/LayerNorm",
    "intermediate/dense",
    "output/dense",
    "output/LayerNorm",
}


@dataclass(frozen=True)
class BertVar:
    key: str  # checkpoint key
    target: str  # BertModel state-dict key, or "" for the pooler
    kind: str  # "embedding", "kernel", "vector" or "pooler"


def parse_bert_name(key: str, name: str) -> BertVar | None:
    """Parse one variable name; None when it is not a BERT encoder variable."""
    m = _BERT.search(name)
    if not m:
        return None
    rest = m["rest"]
    if rest.startswith("pooler/"):
        return BertVar(key, "", "pooler")
    e = _EMBEDDING.match(rest)
    if e:
        return BertVar(key, f"embeddings.{e['which']}_embeddings.weight", "embedding")
    if rest in ("embeddings/LayerNorm/gamma", "embeddings/LayerNorm/beta"):
        leaf = "weight" if rest.endswith("gamma") else "bias"
        return BertVar(key, f"embeddings.LayerNorm.{leaf}", "vector")
    layer = _LAYER.match(rest)
    if not layer:
        return None
    sub, _, leaf = layer["rest"].rpartition("/")
    if sub not in _SUBLAYERS:
        return None
    base = f"encoder.layer.{int(layer['index'])}.{sub.replace('/', '.')}"
    if leaf == "kernel" and "LayerNorm" not in sub:
        return BertVar(key, f"{base}.weight", "kernel")
    if leaf == "bias" and "LayerNorm" not in sub:
        return BertVar(key, f"{base}.bias", "vector")
    if leaf in ("gamma", "beta") and "LayerNorm" in sub:
        return BertVar(key, f"{base}.{'weight' if leaf == 'gamma' else 'bias'}", "vector")
    return None


def map_bert(variables: list[BertVar], mapping: Mapping, prefix: str) -> None:
    for v in variables:
        if v.kind == "pooler":
            mapping.ignore(v.key, "BERT pooler (ALIGN embeds the [CLS] hidden state)")
        elif v.kind == "kernel":
            mapping.map(v.key, prefix + v.target, dense_kernel)
        elif v.kind == "embedding":
            mapping.map(v.key, prefix + v.target, same)
        else:
            mapping.map(v.key, prefix + v.target, vector)


def infer_bert_config(variables: list[BertVar], shapes: dict[str, tuple[int, ...]],
                      num_attention_heads: int | None = None, bert_config: str | Path | None = None) -> dict:
    """AlignTextConfig fields read off the shapes (plus google's ``bert_config.json`` when given).

    Shapes fix everything but the number of attention heads; every released BERT uses 64-wide
    heads, so ``hidden_size // 64`` is assumed unless told otherwise.
    """
    by_target = {v.target: shapes[v.key] for v in variables if v.kind != "pooler"}
    try:
        vocab, hidden = by_target["embeddings.word_embeddings.weight"]
        positions = by_target["embeddings.position_embeddings.weight"][0]
        types = by_target["embeddings.token_type_embeddings.weight"][0]
        intermediate = by_target["encoder.layer.0.intermediate.dense.weight"][-1]
    except KeyError as exc:
        raise ConversionError(f"BERT variables incomplete: no {exc.args[0]} found") from None
    layers = 1 + max(int(t.split(".")[2]) for t in by_target if t.startswith("encoder.layer."))
    fields = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                  max_position_embeddings=positions, type_vocab_size=types)
    if bert_config is not None:
        given = json.loads(Path(bert_config).read_text())
        for k, v in fields.items():
            if k in given and given[k] != v:
                raise ConversionError(f"{bert_config} says {k}={given[k]} but the checkpoint has {v}")
        for k in ("num_attention_heads", "hidden_act", "layer_norm_eps", "hidden_dropout_prob",
                  "attention_probs_dropout_prob", "initializer_range"):
            if k in given:
                fields[k] = given[k]
    if num_attention_heads is not None:
        fields["num_attention_heads"] = num_attention_heads
    if "num_attention_heads" not in fields:
        if hidden % 64:
            raise ConversionError(
                f"cannot infer the number of attention heads for hidden size {hidden}; pass it explicitly"
            )
        fields["num_attention_heads"] = hidden // 64
    if hidden % fields["num_attention_heads"]:
        raise ConversionError(f"hidden size {hidden} is not divisible by {fields['num_attention_heads']} heads")
    return fields
