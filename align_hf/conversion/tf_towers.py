"""Start an ALIGN model from a TensorFlow EfficientNet and a TensorFlow BERT checkpoint.

    align-hf convert tf-towers --efficientnet efficientnet-b7/model.ckpt \\
        --bert uncased_L-12_H-768_A-12/bert_model.ckpt --bert-config uncased_L-12_H-768_A-12/bert_config.json \\
        --vocab uncased_L-12_H-768_A-12/vocab.txt --output-dir align-b7-init

The towers come from the checkpoints (see ``align-hf convert tf-efficientnet`` / ``tf-bert``); the
projections are freshly initialised and the temperature starts at 1.0, as in the ALIGN paper. With
no ``--projection-dim`` the image embedding is the pooled features (640 for B7, as ALIGN does);
with one, an image Dense projection is added when the widths differ.
"""

from __future__ import annotations

import torch

from align_hf.conversion.command import conversion_parser, run_conversion
from align_hf.conversion.tf_align import make_processor, write_model_folder
from align_hf.conversion.tf_bert import convert_tf_bert
from align_hf.conversion.tf_efficientnet import convert_tf_efficientnet
from align_hf.conversion.tf_checkpoint import CheckpointError
from align_hf.conversion.tf_layouts import ConversionError


def align_from_towers(vision_model, text_model, projection_dim: int | None = None, seed: int = 0,
                      temperature: float = 1.0):
    """An ``AlignModel`` whose towers are copies of ``vision_model``/``text_model`` (align_hf tower models)."""
    from align_hf import AlignConfig, AlignModel

    width = vision_model.embed_dim
    projection_dim = projection_dim or width
    vision = vision_model.config.to_dict()
    vision["image_projection_dim"] = projection_dim if projection_dim != width else None
    config = AlignConfig(vision_config=vision, text_config=text_model.config.to_dict(),
                         projection_dim=projection_dim, temperature_init_value=temperature)
    torch.manual_seed(seed)
    model = AlignModel(config)
    model.vision_model.load_state_dict(vision_model.state_dict(), strict=True)
    model.text_model.load_state_dict(text_model.state_dict(), strict=True)
    return model


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = conversion_parser(__name__, __doc__, prog)
    parser.add_argument("--efficientnet", required=True, help="EfficientNet checkpoint (tensorflow/tpu or Keras names)")
    parser.add_argument("--bert", required=True, help="BERT checkpoint (google-research or TFBertModel names)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--vocab", help="BERT uncased vocab.txt, for the processor")
    parser.add_argument("--bert-config", help="google's bert_config.json")
    parser.add_argument("--num-attention-heads", type=int)
    parser.add_argument("--projection-dim", type=int, help="embedding size (default: the image features' width)")
    parser.add_argument("--padding", choices=["same", "keras", "symmetric"],
                        help="stride-2 padding of the image tower (default: as the checkpoint's code did)")
    parser.add_argument("--no-ema", action="store_true", help="use raw EfficientNet weights, not the EMA shadows")
    parser.add_argument("--image-size", type=int, default=289)
    parser.add_argument("--seed", type=int, default=0, help="seed of the new projection layers")
    args = parser.parse_args(argv)

    def work() -> list[str]:
        vision, vision_notes = convert_tf_efficientnet(args.efficientnet, args.padding, not args.no_ema,
                                                       image_size=args.image_size, progress=True)
        text, text_notes = convert_tf_bert(args.bert, args.bert_config, args.num_attention_heads, progress=True)
        model = align_from_towers(vision, text, args.projection_dim, args.seed)
        notes = vision_notes + text_notes + ["projections: newly initialised; temperature 1.0"]
        if args.vocab:
            make_processor(args.vocab, image_size=args.image_size)  # fail early on a bad vocab file
        write_model_folder(model, args.output_dir, args.vocab, notes)
        return notes + [f"wrote {args.output_dir}"]

    return run_conversion(work, (CheckpointError, ConversionError, FileNotFoundError))


if __name__ == "__main__":
    raise SystemExit(main())
