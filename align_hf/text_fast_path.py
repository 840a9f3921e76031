"""The text tower's fast path: no work on padding, and only [CLS] through the last layer's top.

ALIGN's text embedding is the last layer's [CLS] state, and :func:`cls_state` computes only what
that state depends on, with the same value to float rounding and the same gradients for every
parameter:

* the position-wise parts of every layer (query/key/value projections, attention output,
  feed-forward) run on the real tokens alone, packed ``(N, H)``; only attention sees the padded
  ``(B, L)`` layout, where padded keys are masked out. Captions of uneven length padded to the
  batch's longest (or to 64, ALIGN's length) are mostly padding;
* in the last layer, every other position's query, attention output and feed-forward block feed
  nothing the model returns, so after the keys and values only the [CLS] rows go on. Of an
  N-layer tower's work that removes 1/N less that layer's keys and values: 7% of BERT-base, 21%
  of a 4-layer BERT-256, 37% of the quickstart's 2-layer tower with a 2x feed-forward.

It applies to BERT-style encoders from transformers (``embeddings`` + ``encoder.layer`` of
post-norm layers with ``attention.self/output``, ``intermediate`` and ``output``; BERT and RoBERTa)
with eager or SDPA attention; :func:`supports_cls_only` says whether a module qualifies, and the
caller keeps the full forward for anything else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def supports_cls_only(encoder: nn.Module) -> bool:
    """Whether :func:`cls_state` can run ``encoder`` (a transformers BERT-style base model)."""
    config = getattr(encoder, "config", None)
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if config is None or not layers or getattr(encoder, "embeddings", None) is None:
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return False
    if getattr(config, "_attn_implementation", None) not in (None, "eager", "sdpa"):
        return False
    try:
        from transformers.masking_utils import create_bidirectional_mask  # noqa: F401
    except ImportError:
        return False
    last = layers[-1]
    attention = getattr(last, "attention", None)
    return (
        getattr(last, "chunk_size_feed_forward", 0) == 0
        and all(hasattr(getattr(attention, "self", None), name) for name in ("query", "key", "value", "scaling"))
        and hasattr(attention, "output")
        and hasattr(last, "intermediate")
        and hasattr(last, "output")
    )


def used_length(attention_mask: torch.Tensor) -> int:
    """Columns of a ``(B, L)`` mask up to the last one some row attends to (``L`` if none does).

    Trailing columns that are padding in every row can be dropped before the encoder runs: padded
    keys are masked out, so the result is exact. One host sync per text batch.
    """
    used = attention_mask.any(dim=0).nonzero()
    return int(used.max()) + 1 if used.numel() else attention_mask.shape[1]


def _attend(attention: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention of ``(B, Lq, H)`` queries over ``(B, L, H)`` keys/values -> ``(B, Lq, H)``."""
    heads, size = attention.num_attention_heads, attention.attention_head_size

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], heads, size).transpose(1, 2)

    if mask is not None and mask.dim() == 4 and mask.shape[2] != query.shape[1]:
        mask = mask[:, :, :1]  # bidirectional: every query row of the mask is the same
    dropout = attention.dropout.p if attention.training else 0.0
    context = F.scaled_dot_product_attention(split(query), split(key), split(value), attn_mask=mask, dropout_p=dropout,
                                             scale=attention.scaling)
    return context.transpose(1, 2).reshape(query.shape[0], query.shape[1], heads * size)


class _Packing:
    """Where the real tokens of a ``(B, L)`` batch sit: ``positions`` ``(N,)`` flat indices into
    ``B * L`` (None when nothing is packed) and ``first`` ``(B,)``, each row's [CLS] in the packed order."""

    def __init__(self, attention_mask: torch.Tensor | None, batch: int, length: int, device: torch.device):
        self.batch, self.length, self.positions = batch, length, None
        self.first = torch.arange(batch, device=device) * length
        exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
        tracing = torch.compiler.is_compiling() or exporting  # no data-dependent shapes then
        if attention_mask is not None and not tracing and bool(attention_mask[:, 0].all()) and not bool(attention_mask.all()):
            real = attention_mask.reshape(-1) != 0
            self.positions = real.nonzero().squeeze(1)
            counts = real.view(batch, length).sum(1)
            self.first = counts.cumsum(0) - counts

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``(B, L, H)`` -> ``(N, H)``."""
        flat = padded.reshape(self.batch * self.length, padded.shape[-1])
        return flat if self.positions is None else flat.index_select(0, self.positions)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, H)`` -> ``(B, L, H)``, zeros at padded positions (masked out as keys)."""
        if self.positions is not None:
            tokens = tokens.new_zeros(self.batch * self.length, tokens.shape[-1]).index_copy(0, self.positions, tokens)
        return tokens.view(self.batch, self.length, -1)


def _packed_layer(layer: nn.Module, tokens: torch.Tensor, packing: _Packing, mask: torch.Tensor | None,
                  cls_only: bool = False) -> torch.Tensor:
    """One post-norm encoder layer on packed ``(N, H)`` tokens; ``cls_only``: ``(B, H)`` [CLS] states.

    Projections, attention output and feed-forward run on real tokens only; attention itself on
    the padded layout, where padded keys are masked out. ``cls_only`` keeps, after the keys and
    values, only the rows the pooled output depends on."""
    attention = layer.attention.self
    key, value = packing.unpack(attention.key(tokens)), packing.unpack(attention.value(tokens))
    if cls_only:
        tokens = tokens.index_select(0, packing.first)
        context = _attend(attention, attention.query(tokens).unsqueeze(1), key, value, mask).squeeze(1)
    else:
        context = packing.pack(_attend(attention, packing.unpack(attention.query(tokens)), key, value, mask))
    attended = layer.attention.output(context, tokens)
    return layer.output(layer.intermediate(attended), attended)


def cls_state(
    encoder: nn.Module,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """The last layer's [CLS] state ``(B, H)`` of ``encoder`` for ``(B, L)`` inputs, as
    ``encoder(...).last_hidden_state[:, 0]``, computing only what that state depends on."""
    from transformers.masking_utils import create_bidirectional_mask

    hidden = encoder.embeddings(
        input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
    )
    mask = None
    if attention_mask is not None:
        mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)
    *body, last = encoder.encoder.layer
    # The layers' own forwards know how to checkpoint: under gradient checkpointing they run the
    # body unpacked, and only the last layer is done here.
    checkpointed = torch.is_grad_enabled() and any(getattr(layer, "gradient_checkpointing", False) for layer in body)
    if checkpointed:
        for layer in body:
            hidden = layer(hidden, mask)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # in case a transformers version returns tuples
    packing = _Packing(None if checkpointed else attention_mask, hidden.shape[0], hidden.shape[1], hidden.device)
    tokens = packing.pack(hidden)
    if not checkpointed:
        for layer in body:
            tokens = _packed_layer(layer, tokens, packing, mask)
    return _packed_layer(last, tokens, packing, mask, cls_only=True)


__all__ = ["cls_state", "supports_cls_only", "used_length"]
