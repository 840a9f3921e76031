"""Model identity: what an index records about the model that embedded it, and the check that a
query model embeds into the same space."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from align_hf.evaluation.encoding import encode_texts

PROBE_TEXT = "a photo of a dog playing on the beach."
# Same weights in fp16/bf16 or on another device still agree far above this.
PROBE_MIN_COSINE = 0.99


class ModelMismatchError(ValueError):
    """The query model is not the model that built the index."""


def model_signature(model: torch.nn.Module, processor: Any) -> dict[str, Any]:
    """What the index records about its model: id, embedding dim and the embedding of a probe text.

    Two models whose probe embeddings differ live in different embedding spaces, whatever their
    names; the same weights at another precision or on another device still match.
    """
    probe = encode_texts(model, processor, [PROBE_TEXT], progress=False)[0]
    config = getattr(model, "config", None)
    return {
        "model_id": str(getattr(config, "name_or_path", "") or getattr(model, "name_or_path", "") or ""),
        "embedding_dim": int(probe.shape[0]),
        "probe_embedding": [round(float(v), 6) for v in probe],
    }


def check_model(index_signature: dict[str, Any], signature: dict[str, Any]) -> None:
    """Raise :class:`ModelMismatchError` unless both signatures describe the same embedding space."""
    if index_signature["embedding_dim"] != signature["embedding_dim"]:
        raise ModelMismatchError(
            f"the index holds {index_signature['embedding_dim']}-d embeddings of model "
            f"{index_signature['model_id']!r} but the query model {signature['model_id']!r} "
            f"makes {signature['embedding_dim']}-d embeddings"
        )
    a = np.asarray(index_signature["probe_embedding"], dtype=np.float64)
    b = np.asarray(signature["probe_embedding"], dtype=np.float64)
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    if cosine < PROBE_MIN_COSINE:
        raise ModelMismatchError(
            f"the index was built with model {index_signature['model_id']!r} and the query model "
            f"{signature['model_id']!r} embeds differently (probe cosine {cosine:.3f} < {PROBE_MIN_COSINE}); "
            "query with the index's model or rebuild the index"
        )


__all__ = ["PROBE_MIN_COSINE", "PROBE_TEXT", "ModelMismatchError", "check_model", "model_signature"]
