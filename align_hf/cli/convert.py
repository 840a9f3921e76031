"""``align-hf convert KIND ...``: the checkpoint converters of :mod:`align_hf.conversion`.

Each kind hands the rest of the command line to its module's ``main(argv, prog)``, so
``align-hf convert tf-align --help`` shows that converter's own options. Converter modules are
imported only when one runs, keeping ``align-hf --help`` fast.
"""

from __future__ import annotations

import argparse
import importlib

# kind -> (module with main(argv, prog), one-line help)
CONVERTERS: dict[str, tuple[str, str]] = {
    "tf-align": ("align_hf.conversion.tf_align", "kakaobrain/coyo-align TensorFlow checkpoint -> align_hf model"),
    "tf-efficientnet": ("align_hf.conversion.tf_efficientnet", "TensorFlow EfficientNet -> align_hf image tower"),
    "tf-bert": ("align_hf.conversion.tf_bert", "google-research BERT TensorFlow checkpoint -> align_hf text tower"),
    "tf-towers": ("align_hf.conversion.tf_towers", "TF EfficientNet + TF BERT -> a new align_hf model"),
    "from-transformers": ("align_hf.conversion.from_transformers", "transformers ALIGN (kakaobrain/align-base) -> align_hf"),
    "to-transformers": ("align_hf.conversion.to_transformers", "align_hf model -> transformers' ALIGN format"),
}


def run_converter(args: argparse.Namespace) -> int:
    module = importlib.import_module(CONVERTERS[args.converter][0])
    return module.main(args.converter_args, prog=f"align-hf convert {args.converter}")


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert TensorFlow or transformers-format checkpoints to and from align_hf",
        description="Convert checkpoints; `align-hf convert KIND --help` lists a converter's options.",
    )
    parser.set_defaults(func=lambda args: _print_help(parser))
    kinds = parser.add_subparsers(dest="converter", metavar="KIND")
    for kind, (_, help_text) in CONVERTERS.items():
        # The converter parses every argument after KIND, --help included: this parser has no
        # options of its own ('+' is a prefix no argument uses), so '-'-strings stay positional.
        sub = kinds.add_parser(kind, help=help_text, add_help=False, prefix_chars="+")
        sub.add_argument("converter_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        sub.set_defaults(func=run_converter)
