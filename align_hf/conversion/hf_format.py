"""Conversion between transformers' ALIGN format (``model_type="align"``, e.g. kakaobrain/align-base)
and align_hf's layout, in both directions.

transformers keeps the EfficientNet blocks as one flat list with its own layer names; align_hf keeps
timm's ``blocks.<stage>.<block>`` names. Both describe the same network (same tensors, same
order), so conversion is a renaming plus the config translation.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import torch

from align_hf.configuration_align import ENCODER_FIELDS, AlignConfig
from align_hf.conversion.efficientnet_family import B0_STAGES, EFFICIENTNET_SCALES, round_filters, variant_blocks
from align_hf.hub import hub_options, load_weight_files, resolve_file, weight_files
from align_hf.image_backbone import SCALE_KWARGS


def _transformers_stages() -> dict[str, list[int]]:
    """B0's stages as transformers' EfficientNet config spells them."""
    return dict(
        kernel_sizes=[s.kernel for s in B0_STAGES],
        in_channels=[s.in_channels for s in B0_STAGES],
        out_channels=[s.out_channels for s in B0_STAGES],
        strides=[s.stride for s in B0_STAGES],
        num_block_repeats=[s.repeats for s in B0_STAGES],
        expand_ratios=[s.expand_ratio for s in B0_STAGES],
    )


def _efficientnet_variant(width: float, depth: float) -> str | None:
    """The named variant (``"b0"``..``"l2"``) scaled by ``(width, depth)``, or None."""
    for name, (w, d) in EFFICIENTNET_SCALES.items():
        if math.isclose(w, width) and math.isclose(d, depth):
            return name
    return None


def efficientnet_scale(vision) -> tuple[float, float]:
    """``(width, depth)`` coefficients of an align_hf EfficientNet tower: a named
    ``tf_efficientnet_<variant>``, or ``tf_efficientnet_b0`` rescaled through ``timm_kwargs``."""
    scale = {k: vision.timm_kwargs[k] for k in SCALE_KWARGS if k in vision.timm_kwargs}
    if scale:
        if vision.model_name != "tf_efficientnet_b0":
            raise ValueError(f"timm_kwargs {sorted(scale)} rescale tf_efficientnet_b0 only, got {vision.model_name!r}")
        return float(scale.get("channel_multiplier", 1.0)), float(scale.get("depth_multiplier", 1.0))
    match = re.fullmatch(r"tf_efficientnet_(b\d|l2)", vision.model_name)
    if not match:
        raise ValueError(f"{vision.model_name!r} is not a tf_efficientnet_b0..b8/l2 tower")
    return EFFICIENTNET_SCALES[match.group(1)]


def _vision_tower(width: float, depth: float) -> dict[str, Any]:
    """``model_name``/``timm_kwargs`` of the timm EfficientNet with these coefficients: the named
    variant when one has them (so existing configs keep their names), else a rescaled B0."""
    if width <= 0 or depth <= 0:
        raise ValueError(f"width_coefficient and depth_coefficient must be positive, got {width} and {depth}")
    variant = _efficientnet_variant(width, depth)
    if variant is not None:
        return dict(model_name=f"tf_efficientnet_{variant}", timm_kwargs={})
    return dict(model_name="tf_efficientnet_b0", timm_kwargs=dict(channel_multiplier=width, depth_multiplier=depth))


def config_from_hf(hf_config: dict[str, Any], image_size: int = 289) -> AlignConfig:
    """Translate a transformers ``AlignConfig`` dict (``model_type="align"``) to an align_hf config."""
    if hf_config.get("model_type") != "align":
        raise ValueError(f"Expected a transformers ALIGN config (model_type 'align'), got {hf_config.get('model_type')!r}")
    vision = dict(hf_config.get("vision_config") or {})
    text = dict(hf_config.get("text_config") or {})
    for key, expected in _transformers_stages().items():
        if key in vision and list(vision[key]) != expected:
            raise ValueError(f"vision_config.{key}={vision[key]} is not EfficientNet's; cannot map it to timm")
    if vision.get("depth_divisor", 8) != 8 or vision.get("squeeze_expansion_ratio", 0.25) != 0.25:
        raise ValueError("Only EfficientNet's depth_divisor=8 and squeeze_expansion_ratio=0.25 can be converted")
    if vision.get("hidden_act", "swish") not in ("swish", "silu"):
        raise ValueError(f"Unsupported vision activation {vision.get('hidden_act')!r}")
    tower = _vision_tower(float(vision.get("width_coefficient", 2.0)), float(vision.get("depth_coefficient", 3.1)))
    pooling = {"mean": "avg", "max": "max"}[vision.get("pooling_type", "mean")]
    tf_momentum = vision.get("batch_norm_momentum", 0.99)
    vision_config = dict(
        **tower,
        image_size=image_size,
        num_channels=vision.get("num_channels", 3),
        padding="keras",
        symmetric_padding_blocks=list(vision.get("depthwise_padding") or []),
        pooling=pooling,
        batch_norm_eps=vision.get("batch_norm_eps", 1e-3),
        # transformers hands TF's decay (0.99) to torch, where momentum means the opposite.
        batch_norm_momentum=round(1.0 - tf_momentum, 6) if tf_momentum > 0.5 else tf_momentum,
        drop_path_rate=0.0,
    )
    text_config = {k: text[k] for k in ENCODER_FIELDS if k in text}
    return AlignConfig(
        vision_config=vision_config,
        text_config=text_config,
        projection_dim=hf_config.get("projection_dim", 640),
        temperature_init_value=hf_config.get("temperature_init_value", 1.0),
    )


def config_to_hf(config: AlignConfig) -> dict[str, Any]:
    """The transformers ``AlignConfig`` dict for an align_hf config (EfficientNet towers only)."""
    vision = config.vision_config
    try:
        width, depth = efficientnet_scale(vision)
    except ValueError as exc:
        raise ValueError(f"transformers' ALIGN has EfficientNet image towers only: {exc}") from exc
    extra = sorted(set(vision.timm_kwargs) - set(SCALE_KWARGS))
    if vision.padding != "keras" or vision.image_projection_dim or vision.keep_head or extra:
        raise ValueError(
            "Only EfficientNet towers with keras padding, no image projection, no head conv and no timm_kwargs "
            f"besides {SCALE_KWARGS} exist in transformers' ALIGN; this model has {vision.model_name!r} "
            f"(padding={vision.padding!r}, image_projection_dim={vision.image_projection_dim}, "
            f"keep_head={vision.keep_head}, timm_kwargs={vision.timm_kwargs})"
        )
    if config.text_config.text_model_type != "bert":
        raise ValueError("transformers' ALIGN has a BERT text tower only")
    last_width = round_filters(320, width)
    vision_dict = dict(
        _transformers_stages(),
        num_channels=vision.num_channels,
        image_size=vision.image_size,
        width_coefficient=width,
        depth_coefficient=depth,
        depth_divisor=8,
        depthwise_padding=list(vision.symmetric_padding_blocks),
        squeeze_expansion_ratio=0.25,
        hidden_act="swish",
        hidden_dim=max(2560, last_width),
        pooling_type={"avg": "mean", "max": "max"}[vision.pooling],
        batch_norm_eps=vision.batch_norm_eps,
        batch_norm_momentum=0.99,
    )
    text = config.text_config
    text_dict = {k: getattr(text, k) for k in ENCODER_FIELDS}
    return dict(
        model_type="align",
        architectures=["AlignModel"],
        projection_dim=config.projection_dim,
        temperature_init_value=config.temperature_init_value,
        text_config=text_dict,
        vision_config=vision_dict,
    )


def _stage_of_flat_blocks(config: AlignConfig) -> list[tuple[int, int, bool]]:
    """(stage, index in stage, has expansion conv) for every block, in transformers' flat order."""
    width, depth = efficientnet_scale(config.vision_config)
    return [(block.stage, block.index, block.expanded) for block in variant_blocks(width, depth)]


# transformers block layer -> timm layer, for blocks with (InvertedResidual) and without
# (DepthwiseSeparableConv) an expansion conv.
_EXPANDED = {
    "expansion.expand_conv": "conv_pw",
    "expansion.expand_bn": "bn1",
    "depthwise_conv.depthwise_conv": "conv_dw",
    "depthwise_conv.depthwise_norm": "bn2",
    "squeeze_excite.reduce": "se.conv_reduce",
    "squeeze_excite.expand": "se.conv_expand",
    "projection.project_conv": "conv_pwl",
    "projection.project_bn": "bn3",
}
_SEPARABLE = {
    "depthwise_conv.depthwise_conv": "conv_dw",
    "depthwise_conv.depthwise_norm": "bn1",
    "squeeze_excite.reduce": "se.conv_reduce",
    "squeeze_excite.expand": "se.conv_expand",
    "projection.project_conv": "conv_pw",
    "projection.project_bn": "bn2",
}
# Keys of a transformers checkpoint that have no counterpart (the unused BERT pooler, buffers).
_HF_IGNORED = re.compile(r"^(text_model\.pooler\..*|text_model\.embeddings\.(position_ids|token_type_ids))$")


def _key_map(config: AlignConfig) -> dict[str, str]:
    """transformers key -> align_hf key for every tensor of the model described by ``config``."""
    mapping = {
        "temperature": "contrastive_head.temperature",
        "text_projection.weight": "text_projection.weight",
        "text_projection.bias": "text_projection.bias",
    }
    bn_fields = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for field in bn_fields:
        mapping[f"vision_model.embeddings.batchnorm.{field}"] = f"vision_model.backbone.bn1.{field}"
    mapping["vision_model.embeddings.convolution.weight"] = "vision_model.backbone.conv_stem.weight"
    for flat, (stage, index, expanded) in enumerate(_stage_of_flat_blocks(config)):
        layers = _EXPANDED if expanded else _SEPARABLE
        for hf_layer, timm_layer in layers.items():
            if hf_layer.endswith(("_conv", "conv")) and "squeeze" not in hf_layer:
                fields = ("weight",)
            elif "squeeze" in hf_layer:
                fields = ("weight", "bias")
            else:
                fields = bn_fields
            for field in fields:
                mapping[f"vision_model.encoder.blocks.{flat}.{hf_layer}.{field}"] = (
                    f"vision_model.backbone.blocks.{stage}.{index}.{timm_layer}.{field}"
                )
    return mapping


def _text_key_to_ours(key: str) -> str | None:
    if key.startswith(("text_model.embeddings.", "text_model.encoder.")):
        return "text_model.transformer." + key[len("text_model.") :]
    return None


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], config: AlignConfig) -> dict[str, torch.Tensor]:
    """Rename a transformers ALIGN state dict to align_hf's keys.

    Raises ``ValueError`` listing every key that is neither mapped nor ignored by rule.
    """
    mapping = _key_map(config)
    converted, unknown = {}, []
    for key, tensor in hf_state.items():
        target = mapping.get(key) or _text_key_to_ours(key)
        if target is not None:
            converted[target] = tensor
        elif not _HF_IGNORED.match(key):
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} tensors of the transformers checkpoint have no place in align_hf: {unknown[:20]}")
    return converted


def state_dict_to_hf(state: dict[str, torch.Tensor], config: AlignConfig) -> dict[str, torch.Tensor]:
    """Rename an align_hf state dict to transformers' ALIGN keys (adds the unused BERT pooler)."""
    inverse = {ours: theirs for theirs, ours in _key_map(config).items()}
    converted, unknown = {}, []
    for key, tensor in state.items():
        if key in inverse:
            converted[inverse[key]] = tensor
        elif key.startswith("text_model.transformer."):
            converted["text_model." + key[len("text_model.transformer.") :]] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"These align_hf tensors have no place in transformers' ALIGN: {unknown[:20]}")
    hidden = config.text_config.hidden_size
    # transformers' text tower owns a BERT pooler that ALIGN never uses; give it a neutral value.
    converted["text_model.pooler.dense.weight"] = torch.eye(hidden)
    converted["text_model.pooler.dense.bias"] = torch.zeros(hidden)
    return converted


def load_transformers_format(model_class, repo, config_dict: dict[str, Any], allow_pickle: bool = False, **kwargs):
    """An align_hf ``model_class`` instance (eval mode) from a transformers-format ALIGN folder or
    Hub repo whose ``config.json`` holds ``config_dict``.

    ``kwargs``: the hub options of ``from_pretrained`` (``revision``, ``token``...), ``dtype`` and
    ``use_safetensors``. The image size comes from the repo's processor settings (289 without them).
    Weights: safetensors when present, else ``pytorch_model.bin`` (single or sharded) read with
    ``torch.load(weights_only=True)``; ``allow_pickle=True`` (or transformers' ``weights_only=False``)
    trusts a pickle to be fully unpickled.
    """
    options = hub_options(kwargs)
    image_size = 289
    for name in ("preprocessor_config.json", "processor_config.json"):
        processor_path = resolve_file(repo, name, **options)
        if processor_path:
            with open(processor_path, encoding="utf-8") as handle:
                settings = json.load(handle)
            settings = settings.get("image_processor", settings)
            image_size = (settings.get("crop_size") or {}).get("height", image_size)
            break
    config = config_from_hf(config_dict, image_size=image_size)
    config.name_or_path = str(repo)
    # transformers' own switch for full unpickling means the same as ours.
    allow_pickle = allow_pickle or kwargs.get("weights_only") is False
    paths = weight_files(repo, allow_pickle=allow_pickle, use_safetensors=kwargs.get("use_safetensors"), **options)
    hf_state = load_weight_files(paths, allow_pickle=allow_pickle)
    state = state_dict_from_hf(hf_state, config)
    model = model_class(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong_shape = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or wrong_shape:
        raise ValueError(
            f"The transformers checkpoint at {repo} does not fit the model its config describes: "
            f"missing {missing[:20]}, wrong shapes {wrong_shape[:20]}"
        )
    model.load_state_dict(state, strict=True)
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    if isinstance(dtype, torch.dtype):
        model = model.to(dtype)
    return model.eval()
