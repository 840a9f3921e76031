"""Builders of small transformers-format ALIGN models, the numerical oracle of our tests."""

from __future__ import annotations

import math

import torch
import transformers
from torch import nn
from transformers.models.align.modeling_align import round_filters

# EfficientNet-B0 widths and depths with a 2-layer BERT: small, but every block type is present.
HF_VISION = dict(width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280, image_size=64)
HF_TEXT = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


def healthy_hf_align(seed: int = 0, **vision_overrides) -> transformers.AlignModel:
    """A random transformers AlignModel whose activations stay O(1) in eval mode.

    transformers' own init (normal std 0.02 on convs) makes the image embedding vanish; here
    convs get variance-preserving weights and BatchNorms random affine parameters and running
    statistics, so any mismatch in the image tower shows up in the outputs. The projection
    size is the width of the last block (ALIGN has no image projection), as transformers'
    own ``round_filters`` computes it for the vision config's ``width_coefficient``.
    """
    torch.manual_seed(seed)
    vision_config = transformers.AlignVisionConfig(**{**HF_VISION, **vision_overrides})
    image_width = round_filters(vision_config, vision_config.out_channels[-1])
    config = transformers.AlignConfig(
        text_config=HF_TEXT, vision_config=vision_config.to_dict(), projection_dim=image_width
    )
    model = transformers.AlignModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
                module.weight.normal_(0, 1.6 / math.sqrt(fan_in), generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-0.02, 0.02, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.8, 1.2, generator=generator)
                module.bias.uniform_(-0.02, 0.02, generator=generator)
                module.running_mean.uniform_(-0.02, 0.02, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
        model.temperature.fill_(0.07)
    return model
