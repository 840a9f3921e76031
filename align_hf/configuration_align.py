"""Configuration classes for align_hf's ALIGN dual encoder.

The image tower is described through timm (an architecture name plus the arguments that matter
for ALIGN), the text tower through a transformers BERT-like configuration.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, PreTrainedConfig

MODEL_TYPE = "align_hf"

# How stride-2 convolutions pad their input:
#   "keras":     a fixed (k//2 - 1, k//2) zero padding, Keras `correct_pad` as used by the TF ALIGN code
#                and transformers' AlignModel; equals TF "SAME" only for even input sizes.
#   "same":      TF "SAME" computed from the actual input size (timm's `tf_` models).
#   "symmetric": PyTorch-style symmetric k//2 padding.
PADDING_MODES = ("keras", "same", "symmetric")
POOLING_MODES = ("avg", "max")


class AlignVisionConfig(PreTrainedConfig):
    r"""Image tower: a timm EfficientNet (or any timm CNN) without its classification head.

    Args:
        model_name: timm architecture, e.g. ``"tf_efficientnet_b7"``.
        image_size: square training/evaluation resolution in pixels (289 for ALIGN).
        num_channels: input channels.
        padding: one of ``"keras"``, ``"same"``, ``"symmetric"`` (see ``PADDING_MODES``).
        symmetric_padding_blocks: flat indices of blocks whose stride-2 depthwise convolution pads
            symmetrically even in ``"keras"`` mode (transformers' ``depthwise_padding``).
        pooling: global pooling of the last feature map, ``"avg"`` (ALIGN) or ``"max"``.
        drop_path_rate: stochastic depth rate of the backbone blocks.
        batch_norm_eps: BatchNorm epsilon (TF default 1e-3).
        batch_norm_momentum: BatchNorm momentum in the *PyTorch* sense: TF's decay 0.99 is 0.01 here.
        image_projection_dim: when set, a linear layer maps the pooled features to this size.
        keep_head: keep the backbone's 1x1 ``conv_head`` (ALIGN drops it).
        timm_kwargs: further keyword arguments for ``timm.create_model``. With
            ``model_name="tf_efficientnet_b0"``, ``channel_multiplier`` and ``depth_multiplier``
            scale B0 to any width/depth (transformers' ``width_coefficient``/``depth_coefficient``),
            e.g. ``{"channel_multiplier": 0.5, "depth_multiplier": 0.5}``.
    """

    model_type = "align_hf_vision_model"
    base_config_key = "vision_config"

    def __init__(
        self,
        model_name: str = "tf_efficientnet_b7",
        image_size: int = 289,
        num_channels: int = 3,
        padding: str = "keras",
        symmetric_padding_blocks: list[int] | None = None,
        pooling: str = "avg",
        drop_path_rate: float = 0.0,
        batch_norm_eps: float = 1e-3,
        batch_norm_momentum: float = 0.01,
        image_projection_dim: int | None = None,
        keep_head: bool = False,
        timm_kwargs: dict[str, Any] | None = None,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if not 0.0 <= batch_norm_momentum <= 1.0:
            raise ValueError(f"batch_norm_momentum must be in [0, 1], got {batch_norm_momentum}")
        self.model_name = model_name
        self.image_size = int(image_size)
        self.num_channels = num_channels
        self.padding = padding
        self.symmetric_padding_blocks = list(symmetric_padding_blocks or [])
        self.pooling = pooling
        self.drop_path_rate = drop_path_rate
        self.batch_norm_eps = batch_norm_eps
        self.batch_norm_momentum = batch_norm_momentum
        self.image_projection_dim = image_projection_dim
        self.keep_head = keep_head
        self.timm_kwargs = dict(timm_kwargs or {})
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


# The AlignTextConfig fields its encoder's config takes under the same names (BERT's, which
# transformers' ALIGN text config uses too).
ENCODER_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
)


class AlignTextConfig(PreTrainedConfig):
    r"""Text tower: a BERT-like transformers encoder; the [CLS] state of its last layer is the embedding.

    Args:
        text_model_type: transformers ``model_type`` of the encoder (``"bert"`` for ALIGN; any
            encoder whose ``AutoModel`` returns ``last_hidden_state`` works, e.g. ``"roberta"``).
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
        hidden_act, hidden_dropout_prob, attention_probs_dropout_prob, max_position_embeddings,
        type_vocab_size, initializer_range, layer_norm_eps, pad_token_id: as in ``BertConfig``.
        encoder_kwargs: extra arguments for the encoder's own config class.
    """

    model_type = "align_hf_text_model"
    base_config_key = "text_config"

    def __init__(
        self,
        text_model_type: str = "bert",
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        encoder_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ):
        self.text_model_type = text_model_type
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.encoder_kwargs = dict(encoder_kwargs or {})
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.pad_token_id = pad_token_id

    def to_encoder_config(self) -> PreTrainedConfig:
        """The transformers config of the wrapped encoder (e.g. a ``BertConfig``), SDPA attention."""
        fields = {name: getattr(self, name) for name in ENCODER_FIELDS}
        fields.update(self.encoder_kwargs)
        return AutoConfig.for_model(self.text_model_type, **fields)


class AlignConfig(PreTrainedConfig):
    r"""Configuration of the ALIGN dual encoder.

    Args:
        text_config: ``AlignTextConfig`` or its dict.
        vision_config: ``AlignVisionConfig`` or its dict.
        projection_dim: size of the shared embedding space. The text tower always projects to it;
            the image embedding (the pooled features, or ``image_projection_dim``) must match it.
        temperature_init_value: initial softmax temperature ``t`` (logits = cosine / t); ALIGN: 1.0.
        learnable_temperature: train the temperature (ALIGN: yes).
        loss_type: ``"softmax"`` (ALIGN) or ``"sigmoid"`` (SigLIP-style).
        label_smoothing: label smoothing of the softmax loss (ALIGN: 0.1).
        gather_distributed: compute the loss over the global batch when torch.distributed is
            initialised (ALIGN); otherwise each rank uses its local batch only.
        loss_chunk_size: tile size of the memory-lean loss (``None``: automatic).
        sigmoid_bias_init: initial logit bias of the sigmoid loss.
    """

    model_type = MODEL_TYPE
    sub_configs = {"text_config": AlignTextConfig, "vision_config": AlignVisionConfig}

    def __init__(
        self,
        text_config: dict | AlignTextConfig | None = None,
        vision_config: dict | AlignVisionConfig | None = None,
        projection_dim: int = 640,
        temperature_init_value: float = 1.0,
        learnable_temperature: bool = True,
        loss_type: str = "softmax",
        label_smoothing: float = 0.1,
        gather_distributed: bool = True,
        loss_chunk_size: int | None = None,
        sigmoid_bias_init: float = -10.0,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if loss_type not in ("softmax", "sigmoid"):
            raise ValueError(f"loss_type must be 'softmax' or 'sigmoid', got {loss_type!r}")
        if temperature_init_value <= 0:
            raise ValueError("temperature_init_value must be positive")
        self.text_config = _as_config(text_config, AlignTextConfig)
        self.vision_config = _as_config(vision_config, AlignVisionConfig)
        self.projection_dim = projection_dim
        self.temperature_init_value = temperature_init_value
        self.learnable_temperature = learnable_temperature
        self.loss_type = loss_type
        self.label_smoothing = label_smoothing
        self.gather_distributed = gather_distributed
        self.loss_chunk_size = loss_chunk_size
        self.sigmoid_bias_init = sigmoid_bias_init
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @classmethod
    def from_text_vision_configs(
        cls, text_config: AlignTextConfig, vision_config: AlignVisionConfig, **kwargs
    ) -> "AlignConfig":
        return cls(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "AlignConfig":
        """A named configuration: ``"align-base"``, ``"align-l2"`` or ``"tiny"`` (see ``PRESETS``).

        Keyword overrides replace top-level fields; ``text_config``/``vision_config`` dicts are
        merged into the preset's sub-configs.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; available: {sorted(PRESETS)}")
        preset = copy.deepcopy(PRESETS[name])
        for key in ("text_config", "vision_config"):
            preset[key].update(overrides.pop(key, None) or {})
        preset.update(overrides)
        return cls(**preset)


def _as_config(value, config_class):
    if value is None:
        return config_class()
    if isinstance(value, config_class):
        return value
    if isinstance(value, PreTrainedConfig):
        return config_class(**value.to_dict())
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "model_type"}
        return config_class(**value)
    raise TypeError(f"Expected a {config_class.__name__} or a dict, got {type(value).__name__}")


_BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_BERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)

PRESETS: dict[str, dict[str, Any]] = {
    # EfficientNet-B7 without the top conv (640-d pooled features, no image projection) + BERT-base:
    # the same structure as kakaobrain/align-base and COYO-ALIGN-B7.
    "align-base": dict(
        vision_config=dict(model_name="tf_efficientnet_b7", image_size=289, padding="keras"),
        text_config=dict(**_BERT_BASE),
        projection_dim=640,
    ),
    # The paper's largest model: EfficientNet-L2 (1376-d) + BERT-large.
    "align-l2": dict(
        vision_config=dict(model_name="tf_efficientnet_l2", image_size=289, padding="keras"),
        text_config=dict(**_BERT_LARGE),
        projection_dim=1376,
    ),
    # A ~1M-parameter model for tests and CPU demos.
    "tiny": dict(
        vision_config=dict(
            model_name="test_efficientnet",
            image_size=64,
            padding="keras",
            batch_norm_eps=1e-5,
            batch_norm_momentum=0.1,
            image_projection_dim=128,
        ),
        text_config=dict(
            vocab_size=1024,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=256,
            max_position_embeddings=64,
        ),
        projection_dim=128,
    ),
}
