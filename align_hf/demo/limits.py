"""Limits and serving defaults of the demo, shared by the backend, the Gradio layout and the CLI.

Kept free of heavy imports so ``align-hf --help`` can show them without loading the model stack.
"""

from __future__ import annotations

DEFAULT_MAX_FILE_SIZE = "10mb"
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: a large phone photo; beyond that decoding alone costs seconds
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_BATCH_SIZE = 16
MAX_LABELS = 200
MAX_LABEL_CHARS = 100
MAX_QUERY_CHARS = 1000
MAX_RESULTS = 50

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_FILE_SIZE",
    "DEFAULT_MAX_PIXELS",
    "MAX_LABELS",
    "MAX_LABEL_CHARS",
    "MAX_QUERY_CHARS",
    "MAX_RESULTS",
]
