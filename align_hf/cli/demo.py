"""``align-hf demo``: start the Gradio web demo.

The work happens in :mod:`align_hf.demo.setup` (model, index, backend) and :mod:`align_hf.demo.ui`
(layout, serving); this module only turns the flags into their arguments.
"""

from __future__ import annotations

import argparse
import sys

from align_hf.cli.common import add_progress_arg
from align_hf.demo.limits import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_PIXELS,
)
from align_hf.demo.setup import (
    DEFAULT_GALLERY_SIZE,
    DEFAULT_INDEX_DIR,
    QUICKSTART_MODEL,
    DemoSetupError,
    create_backend,
)


def run_demo(args: argparse.Namespace) -> int:
    try:
        backend = create_backend(
            model=args.model,
            index=args.index,
            no_index=args.no_index,
            device=args.device,
            gallery_size=args.gallery_size,
            index_dir=args.index_dir,
            rebuild_index=args.rebuild_index,
            max_pixels=int(args.max_megapixels * 1e6),
            max_batch_size=args.max_batch_size,
            progress=not args.no_progress,
        )
    except DemoSetupError as err:
        print(f"align-hf demo: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(backend.about_markdown())
        backend.close()
        return 0
    from align_hf.demo import ui  # Gradio loads only when serving

    ui.launch_demo(
        ui.build_demo(backend),
        host=args.host,
        port=args.port,
        share=args.share,
        max_file_size=args.max_file_size,
        concurrency=args.concurrency,
        open_browser=args.open_browser,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="start the Gradio web demo (zero-shot classification, text/image search)",
        description=(
            "Start the Gradio web demo. Without --model and --index it serves the quickstart model "
            f"({QUICKSTART_MODEL}) over an index of the synthetic held-out gallery (built on first use)."
        ),
    )
    parser.add_argument(
        "--model",
        help="checkpoint folder or Hub id (align_hf or transformers ALIGN format); default: the quickstart model",
    )
    parser.add_argument(
        "--index",
        help="index folder built by `align-hf index build`, or a Hub dataset repo holding one; default: the synthetic gallery",
    )
    parser.add_argument("--no-index", action="store_true", help="classification only, no search index")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it)",
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    parser.add_argument(
        "--share", action="store_true", help="also open a public gradio.live share link (off by default)"
    )
    parser.add_argument(
        "--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help=f"largest upload (default: {DEFAULT_MAX_FILE_SIZE})"
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=DEFAULT_MAX_PIXELS / 1e6,
        help=f"largest image in megapixels (default: {DEFAULT_MAX_PIXELS / 1e6:g})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests handled at once per endpoint (default: {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help=f"most concurrent images/texts merged into one forward pass (default: {DEFAULT_MAX_BATCH_SIZE})",
    )
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--gallery-size",
        type=int,
        default=DEFAULT_GALLERY_SIZE,
        help=f"synthetic gallery images when no --index is given (default: {DEFAULT_GALLERY_SIZE})",
    )
    parser.add_argument(
        "--index-dir",
        default=str(DEFAULT_INDEX_DIR),
        help=f"where the synthetic gallery index is kept (default: {DEFAULT_INDEX_DIR})",
    )
    parser.add_argument(
        "--rebuild-index", action="store_true", help="rebuild the synthetic gallery index even if a matching one exists"
    )
    parser.add_argument("--open-browser", action="store_true", help="open the demo in the default web browser")
    parser.add_argument(
        "--check", action="store_true", help="load model and index, print what was loaded, and exit without serving"
    )
    add_progress_arg(parser)
    parser.set_defaults(func=run_demo)
