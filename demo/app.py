"""Hugging Face Space entry point for the align_hf demo (also runs locally: `python demo/app.py`).

The Space is configured with environment variables (Space settings -> Variables):

- ``ALIGN_MODEL``: Hub model id or folder (align_hf or transformers ALIGN format);
  default ``kakaobrain/align-base``.
- ``ALIGN_INDEX``: Hub *dataset* repo id or folder holding an index built by
  ``align-hf index build``; unset = index the synthetic held-out gallery at start-up.
- ``ALIGN_GALLERY_SIZE``: synthetic gallery size when ``ALIGN_INDEX`` is unset (default 100).
- ``ALIGN_CONCURRENCY``, ``ALIGN_MAX_FILE_SIZE``: serving limits (defaults 4, 10mb).

A Space sets ``GRADIO_SERVER_NAME=0.0.0.0``; run locally, the demo binds 127.0.0.1 only.
"""

from __future__ import annotations

import os
import sys

# On a Space the align_hf package is uploaded next to this file (see demo/README.md).
HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(HERE, "align_hf")):
    sys.path.insert(0, HERE)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from align_hf.demo.setup import create_backend  # noqa: E402
from align_hf.demo.ui import build_demo, launch_demo  # noqa: E402

DEFAULT_MODEL = "kakaobrain/align-base"


def make_demo():
    """Build the Blocks app from the environment variables above."""
    backend = create_backend(
        model=os.environ.get("ALIGN_MODEL", DEFAULT_MODEL),
        index=os.environ.get("ALIGN_INDEX") or None,
        gallery_size=int(os.environ.get("ALIGN_GALLERY_SIZE", "100")),
        index_dir=os.environ.get("ALIGN_INDEX_DIR", os.path.join(HERE, "outputs", "index")),
        progress=False,
    )
    return build_demo(backend)


demo = make_demo()

if __name__ == "__main__":
    launch_demo(
        demo,
        host=None,  # Gradio reads GRADIO_SERVER_NAME (0.0.0.0 on Spaces), else 127.0.0.1
        concurrency=int(os.environ.get("ALIGN_CONCURRENCY", "4")),
        max_file_size=os.environ.get("ALIGN_MAX_FILE_SIZE", "10mb"),
    )
