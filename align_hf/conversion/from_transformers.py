"""Convert a transformers-format ALIGN checkpoint (``model_type="align"``, e.g. kakaobrain/align-base)
to an align_hf folder.

    align-hf convert from-transformers --model kakaobrain/align-base --output-dir align-base-hf
    python -m align_hf.conversion.from_transformers ...   # the same

``AlignModel.from_pretrained`` already reads transformers-format checkpoints on the fly; this writes
the converted weights (safetensors), config and processor once, so later loads need no renaming.
The renaming itself is ``align_hf.conversion.hf_format`` (strict: every tensor mapped or ignored by rule).
"""

from __future__ import annotations

import sys
from pathlib import Path

from align_hf.conversion.command import conversion_parser, run_conversion


def convert(model_path: str, output_dir: str | Path, allow_pickle: bool = False, push_to_hub: str | None = None):
    """Load ``model_path`` (folder or Hub id) in transformers' ALIGN format and save it as align_hf."""
    from align_hf import AlignModel, AlignProcessor
    from align_hf.hub import read_config_dict

    config = read_config_dict(model_path)
    if config is None:
        raise FileNotFoundError(f"no config.json in {model_path}")
    if config.get("model_type") != "align":
        raise ValueError(
            f"{model_path} is not a transformers ALIGN checkpoint (model_type is {config.get('model_type')!r}, "
            "expected 'align')"
        )
    model = AlignModel.from_pretrained(model_path, allow_pickle=allow_pickle)
    out = Path(output_dir)
    model.save_pretrained(out)
    processor = None
    try:
        processor = AlignProcessor.from_pretrained(model_path)
    except (OSError, ValueError) as exc:  # a weights-only repo: convert what is there
        print(f"warning: no processor copied ({exc})", file=sys.stderr)
    if processor is not None:
        processor.save_pretrained(out)
    if push_to_hub:
        model.push_to_hub(push_to_hub, processor=processor)
    return model, processor


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = conversion_parser(__name__, __doc__, prog)
    parser.add_argument("--model", required=True, help="folder or Hub id of a transformers ALIGN checkpoint")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--allow-pickle", action="store_true", help="fully unpickle pytorch_model.bin (trusted sources only; plain state dicts load without it)")
    parser.add_argument("--push-to-hub", metavar="REPO")
    args = parser.parse_args(argv)

    def work() -> list[str]:
        convert(args.model, args.output_dir, args.allow_pickle, args.push_to_hub)
        return [f"wrote {args.output_dir}"]

    return run_conversion(work, (FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
