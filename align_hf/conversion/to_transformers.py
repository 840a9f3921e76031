"""Convert an align_hf model folder to transformers' own ALIGN format (``transformers.AlignModel``).

    align-hf convert to-transformers --model my-align --output-dir my-align-transformers
    python -m align_hf.conversion.to_transformers ...   # the same

Only what transformers' ALIGN can express converts: a ``tf_efficientnet_bN`` tower with keras
padding, no image projection, a BERT text tower. The weights are renamed by
``align_hf.conversion.hf_format.state_dict_to_hf`` (the unused BERT pooler gets an identity); the processor
is rewritten as transformers' ``AlignProcessor`` (EfficientNetImageProcessor + BERT tokenizer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from align_hf.conversion.command import conversion_parser, run_conversion

# Settings of align_hf's image processor that EfficientNetImageProcessor shares.
_IMAGE_FIELDS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                 "rescale_offset", "do_normalize", "image_mean", "image_std", "include_top")


def convert(model_path: str, output_dir: str | Path):
    """Write ``config.json``, ``model.safetensors`` and (when present) the processor for transformers."""
    from safetensors.torch import save_file

    import transformers
    from align_hf import AlignModel
    from align_hf.conversion.hf_format import config_to_hf, state_dict_to_hf

    model = AlignModel.from_pretrained(model_path)
    hf_config = config_to_hf(model.config)  # raises ValueError for towers transformers cannot express
    state = state_dict_to_hf(model.state_dict(), model.config)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_config["transformers_version"] = transformers.__version__
    (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    try:
        from align_hf import AlignProcessor

        ours = AlignProcessor.from_pretrained(model_path)
    except (OSError, ValueError):
        return out
    settings = ours.image_processor.to_dict()
    image_processor = transformers.EfficientNetImageProcessor(**{k: settings[k] for k in _IMAGE_FIELDS if k in settings})
    transformers.AlignProcessor(image_processor=image_processor, tokenizer=ours.tokenizer).save_pretrained(out)
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = conversion_parser(__name__, __doc__, prog)
    parser.add_argument("--model", required=True, help="align_hf folder or Hub id")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)

    def work() -> list[str]:
        convert(args.model, args.output_dir)
        return [f"wrote {args.output_dir}"]

    return run_conversion(work, (FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
