"""ALIGN dual encoder: a timm EfficientNet image tower and a transformers BERT text tower.

Both embeddings are L2-normalised and compared by cosine similarity divided by a learnable
temperature; the contrastive loss is computed by :class:`~align_hf.loss.AlignContrastiveHead`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    BaseModelOutputWithPoolingAndNoAttention,
)
from transformers.utils import ModelOutput

from .configuration_align import AlignConfig, AlignTextConfig, AlignVisionConfig
from .image_backbone import build_image_backbone
from .loss import AlignContrastiveHead
from .text_fast_path import cls_state, supports_cls_only, used_length

# Keeps the normalisation finite for an all-zero embedding (transformers' AlignModel returns NaN there).
NORM_EPS = 1e-12


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit-norm rows, computed in at least fp32 and returned in the input dtype. ``x``: ``(N, D)``."""
    return F.normalize(x.float(), dim=-1, eps=NORM_EPS).to(x.dtype)


@dataclass
class AlignOutput(ModelOutput):
    """Output of :class:`AlignModel`.

    Args:
        loss: contrastive loss, when ``return_loss=True``.
        logits_per_image: ``(num_images, num_texts)`` cosine similarities divided by the temperature.
        logits_per_text: ``(num_texts, num_images)``, the transpose.
        text_embeds: ``(num_texts, projection_dim)`` L2-normalised text embeddings.
        image_embeds: ``(num_images, projection_dim)`` L2-normalised image embeddings.
        text_model_output: output of :class:`AlignTextModel`.
        vision_model_output: output of :class:`AlignVisionModel`.
        temperature: the current temperature (scalar).
        image_to_text_accuracy / text_to_image_accuracy: in-batch retrieval accuracy, with the loss.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPoolingAndNoAttention | None = None
    temperature: torch.FloatTensor | None = None
    image_to_text_accuracy: torch.FloatTensor | None = None
    text_to_image_accuracy: torch.FloatTensor | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k] if k not in ("text_model_output", "vision_model_output") else getattr(self, k).to_tuple()
            for k in self.keys()
        )


class AlignPreTrainedModel(PreTrainedModel):
    config_class = AlignConfig
    config: AlignConfig
    base_model_prefix = "align"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    input_modalities = ("image", "text")
    # Kept whole on one device by device_map="auto": residual blocks add their input to their
    # output, and the head's parameters are read outside its forward (logits, temperature).
    # BERT's own layers come from its _no_split_modules.
    _no_split_modules = [
        "InvertedResidual", "DepthwiseSeparableConv", "EdgeResidual", "CondConvResidual", "ConvBnAct", "AlignContrastiveHead",
        "FastInvertedResidual", "FastDepthwiseSeparableConv",  # fast_blocks' subclasses of timm's blocks
    ]

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, nn.Conv2d):
            # Variance-preserving fan-out init (EfficientNet's): keeps activations O(1) through
            # the tower at random init, so embeddings are never degenerate.
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            init.normal_(module.weight, mean=0.0, std=(2.0 / fan_out) ** 0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if isinstance(module, AlignModel):
            init.xavier_uniform_(module.text_projection.weight)
            init.zeros_(module.text_projection.bias)
            if module.image_projection is not None:
                init.xavier_uniform_(module.image_projection.weight)
                init.zeros_(module.image_projection.bias)
            head = module.contrastive_head
            init.constant_(head.temperature, self.config.temperature_init_value)
            if getattr(head, "bias", None) is not None:
                init.constant_(head.bias, self.config.sigmoid_bias_init)


class AlignVisionModel(AlignPreTrainedModel):
    """The image tower: a timm EfficientNet without classifier, followed by global pooling."""

    config_class = AlignVisionConfig
    config: AlignVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: AlignVisionConfig):
        super().__init__(config)
        self.backbone, self.embed_dim = build_image_backbone(config)
        # The fast path (align_hf.fast_blocks; channels-last input, contiguous outputs) is off by
        # default so that features are bitwise those of transformers' AlignModel.
        self.fast_path = False
        self.channels_last = True
        self.post_init()

    def set_fast_path(self, enabled: bool = True) -> "AlignVisionModel":
        """Turn the fast path on (see :mod:`align_hf.fast_blocks`; same features to float rounding,
        training included) or off (timm's forwards: transformers' AlignModel op for op)."""
        from .fast_blocks import set_fast_path

        self.fast_path = bool(enabled)
        set_fast_path(self.backbone, enabled)
        return self

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs):
        self.backbone.set_grad_checkpointing(enable)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        """``pixel_values``: ``(B, C, H, W)``. Returns ``last_hidden_state`` ``(B, C', H', W')`` and
        ``pooler_output`` ``(B, C')``, the globally pooled features."""
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must be (batch, {self.config.num_channels}, height, width), got {tuple(pixel_values.shape)}"
            )
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if self.fast_path and self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        hidden_states = None
        if output_hidden_states:
            hidden_states = tuple(
                h.contiguous() for h in self.backbone.forward_intermediates(pixel_values, intermediates_only=True)
            )
        features = self.backbone.forward_features(pixel_values).contiguous()
        if self.config.pooling == "avg":
            pooled = features.mean(dim=(2, 3))
        else:
            pooled = features.amax(dim=(2, 3))
        if return_dict is False:
            return (features, pooled) + ((hidden_states,) if hidden_states is not None else ())
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=features, pooler_output=pooled, hidden_states=hidden_states
        )


class AlignTextModel(AlignPreTrainedModel):
    """The text tower: a BERT-like encoder; ``pooler_output`` is the last layer's [CLS] state.

    Trailing columns that are padding in every row are dropped before the encoder runs (exact, since
    padded keys are masked out) and the hidden states are zero-padded back to the input length.
    With the fast path on (:meth:`set_fast_path`) and no per-token outputs asked for, the layers skip
    padding and the last one runs its top for [CLS] alone (:mod:`align_hf.text_fast_path`);
    ``last_hidden_state`` is then None.
    """

    config_class = AlignTextConfig
    config: AlignTextConfig
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config: AlignTextConfig):
        super().__init__(config)
        encoder_config = config.to_encoder_config()
        encoder_config._attn_implementation = getattr(config, "_attn_implementation", None) or "sdpa"
        extra = {"add_pooling_layer": False} if config.text_model_type in ("bert", "roberta") else {}
        self.transformer = AutoModel.from_config(encoder_config, **extra)
        self.fast_path = False
        self.post_init()

    def set_fast_path(self, enabled: bool = True) -> "AlignTextModel":
        """When only ``pooler_output`` is needed, skip padding in every layer and run the last layer's
        top for [CLS] alone (same value to float rounding); a no-op for encoders
        :mod:`align_hf.text_fast_path` cannot run."""
        self.fast_path = bool(enabled) and supports_cls_only(self.transformer)
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.transformer.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """``input_ids``/``attention_mask``/``token_type_ids``: ``(B, L)``. Returns ``last_hidden_state``
        ``(B, L, hidden)`` and ``pooler_output`` ``(B, hidden)`` (the [CLS] state, unprojected)."""
        if input_ids is None and inputs_embeds is None:
            raise ValueError("You have to specify input_ids or inputs_embeds")
        full_length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        keep = full_length
        if attention_mask is not None and not output_attentions and not torch.compiler.is_compiling():
            keep = used_length(attention_mask)

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                  "position_ids": position_ids, "inputs_embeds": inputs_embeds}
        inputs = {k: v[:, :keep] if v is not None and keep < full_length else v for k, v in inputs.items()}
        # A compiled encoder (compile_towers) is called as a whole; the fast path would bypass it.
        compiled = getattr(self.transformer, "_compiled_call_impl", None) is not None
        if self.fast_path and not compiled and not output_hidden_states and not output_attentions and not kwargs:
            pooled = cls_state(self.transformer, **inputs)
            return (None, pooled) if return_dict is False else BaseModelOutputWithPooling(pooler_output=pooled)
        if output_attentions:
            kwargs["output_attentions"] = True
        if output_hidden_states:
            kwargs["output_hidden_states"] = True
        outputs = self.transformer(**inputs, return_dict=True, **kwargs)
        last_hidden_state = outputs.last_hidden_state
        hidden_states = outputs.hidden_states
        if keep < full_length:
            pad = (0, 0, 0, full_length - keep)
            last_hidden_state = F.pad(last_hidden_state, pad)
            if hidden_states is not None:
                hidden_states = tuple(F.pad(h, pad) for h in hidden_states)
        pooled = last_hidden_state[:, 0, :]
        if return_dict is False:
            return (last_hidden_state, pooled)
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            hidden_states=hidden_states,
            attentions=outputs.attentions,
        )


class AlignModel(AlignPreTrainedModel):
    """The ALIGN dual encoder.

    Example::

        >>> from align_hf import AlignConfig, AlignModel
        >>> model = AlignModel(AlignConfig.from_preset("tiny"))
        >>> out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
        >>> out.logits_per_image.shape  # (num_images, num_texts)
    """

    config_class = AlignConfig
    config: AlignConfig
    main_input_name = "input_ids"
    # The loss is a mean over one micro-batch's pairs, never normalised by a token count, so the
    # stock Trainer must not pass num_items_in_batch (it divides by the accumulation steps instead).
    accepts_loss_kwargs = False

    def __init__(self, config: AlignConfig):
        super().__init__(config)
        self.text_model = AlignTextModel(config.text_config)
        self.vision_model = AlignVisionModel(config.vision_config)
        image_width = self.vision_model.embed_dim
        if config.vision_config.image_projection_dim:
            self.image_projection = nn.Linear(image_width, config.vision_config.image_projection_dim)
            image_width = config.vision_config.image_projection_dim
        else:
            self.image_projection = None
        if image_width != config.projection_dim:
            raise ValueError(
                f"The image embedding has {image_width} features but projection_dim is {config.projection_dim}; "
                "set vision_config.image_projection_dim or projection_dim so they agree."
            )
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim)
        self.contrastive_head = AlignContrastiveHead(
            loss_type=config.loss_type,
            temperature_init=config.temperature_init_value,
            learnable_temperature=config.learnable_temperature,
            label_smoothing=config.label_smoothing,
            gather_distributed=config.gather_distributed,
            chunk_size=config.loss_chunk_size,
            sigmoid_bias_init=config.sigmoid_bias_init,
        )
        self.post_init()

    @property
    def temperature(self) -> torch.Tensor:
        return self.contrastive_head.temperature

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs):
        self.vision_model.backbone.set_grad_checkpointing(enable)
        self.text_model.transformer._set_gradient_checkpointing(
            enable, **({"gradient_checkpointing_func": gradient_checkpointing_func} if gradient_checkpointing_func else {}), **kwargs
        )

    # loading, saving, publishing ----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, allow_pickle: bool = False, **kwargs):
        """Load an align_hf checkpoint, or a transformers-format ALIGN one (``model_type="align"``,
        e.g. ``kakaobrain/align-base``) converted on the fly. Safetensors are preferred; a
        ``pytorch_model.bin`` is read with ``torch.load(weights_only=True)`` as in transformers, and
        ``allow_pickle=True`` trusts it fully. ``device_map``/``max_memory``/``offload_folder`` place
        either kind as transformers does."""
        from .hub import hub_options, read_config_dict

        options = hub_options(kwargs)
        config_dict = read_config_dict(pretrained_model_name_or_path, **options)
        if config_dict is not None and config_dict.get("model_type") == "align":
            # In a try block so transformers' remote-code import check skips it: a saved folder
            # never holds this format, and loading it is an align_hf feature.
            try:
                from align_hf.conversion.hf_format import load_transformers_format
                from align_hf.conversion.placement import PLACEMENT_OPTIONS, dispatch_loaded
            except ImportError as exc:
                raise ImportError(
                    "Loading a transformers-format ALIGN checkpoint (model_type 'align') needs the align_hf package"
                ) from exc
            placement = {k: kwargs.pop(k) for k in PLACEMENT_OPTIONS if k in kwargs}
            model = load_transformers_format(cls, pretrained_model_name_or_path, config_dict, allow_pickle, **kwargs)
            return dispatch_loaded(model, **placement)
        from .hub import prepare_weights

        state = prepare_weights(pretrained_model_name_or_path, allow_pickle, kwargs)
        if state is not None:  # a trusted pickle, unpickled by prepare_weights
            config = kwargs.pop("config", None) or cls.config_class.from_pretrained(pretrained_model_name_or_path, **options)
            return super().from_pretrained(None, *model_args, config=config, state_dict=state, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` plus the remote-code entry for zero-shot pipelines."""
        if getattr(self, "_inference_only", False):
            raise RuntimeError("A for_inference() copy has BatchNorm folded away; save the original model instead")
        from .hub import add_zero_shot_auto_map

        result = super().save_pretrained(save_directory, *args, **kwargs)
        add_zero_shot_auto_map(save_directory)
        return result

    def push_to_hub(self, repo_id: str, *, processor=None, metrics=None, tags=None, max_shard_size="5GB", **options):
        """Upload weights, config, remote code, ``processor`` files and a model card to ``repo_id``.

        ``options``: ``commit_message``, ``private``, ``token``, ``revision``, ``create_pr``.
        ``metrics``: ``{dataset: {metric: value}}`` written into the model card.
        """
        from .hub import push_model_to_hub

        return push_model_to_hub(
            self, repo_id, processor=processor, metrics=metrics, tags=tags, max_shard_size=max_shard_size, **options
        )

    def set_fast_path(self, enabled: bool = True) -> "AlignModel":
        """Train and embed faster: channels-last image tower, BatchNorm folded on the fly in eval
        mode, convolution + activation + residual fused on CPU (see :mod:`align_hf.fast_blocks`).
        Same results to float rounding; off by default, when features are bitwise transformers'.
        The text tower's fast path skips padding and runs the last layer's top for [CLS] alone
        (:mod:`align_hf.text_fast_path`); its ``last_hidden_state`` is then None unless hidden states
        or attentions are asked for."""
        self.vision_model.set_fast_path(enabled)
        self.text_model.set_fast_path(enabled)
        return self

    def compile_towers(self, vision: bool = True, text: bool = True, **compile_kwargs) -> "AlignModel":
        """``torch.compile`` the towers in place (state-dict keys unchanged).

        On CPU this fuses EfficientNet's BatchNorm/SiLU/squeeze-excite chains and is several times
        faster once compiled (the first call pays the compilation). The text tower sees a new
        sequence length per batch after padding is trimmed, so it is compiled with dynamic shapes.
        """
        if vision:
            self.vision_model.backbone.compile(**compile_kwargs)
        if text:
            self.text_model.transformer.compile(**{"dynamic": True, **compile_kwargs})
        return self

    def for_inference(self, channels_last: bool = True, copy: bool = True) -> "AlignModel":
        """A copy for embedding and search (see :func:`~align_hf.batchnorm_folding.inference_model`):
        BatchNorm folded, fast path on, eval mode; ``copy=False`` prepares this model in place."""
        from .batchnorm_folding import inference_model

        return inference_model(self, channels_last=channels_last, copy=copy)

    def train(self, mode: bool = True):
        if mode and getattr(self, "_inference_only", False):
            raise RuntimeError("This model comes from for_inference() (BatchNorm folded); train the original model")
        return super().train(mode)

    # transformers-compatible feature getters -------------------------------------------------
    def get_text_features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Like transformers' ``AlignModel.get_text_features``: the text tower output whose
        ``pooler_output`` ``(B, projection_dim)`` is the projected, *unnormalised* text embedding."""
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPoolingAndNoAttention:
        """Like transformers' ``AlignModel.get_image_features``: the vision tower output whose
        ``pooler_output`` ``(B, projection_dim)`` is the *unnormalised* image embedding."""
        outputs = self.vision_model(pixel_values=pixel_values, **kwargs)
        if self.image_projection is not None:
            outputs.pooler_output = self.image_projection(outputs.pooler_output)
        return outputs

    # open_clip-style convenience -------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(B, C, H, W)`` pixels -> ``(B, projection_dim)`` embeddings (unit norm by default)."""
        embeds = self.get_image_features(pixel_values).pooler_output
        return l2_normalize(embeds) if normalize else embeds

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """``(B, L)`` token ids -> ``(B, projection_dim)`` embeddings (unit norm by default)."""
        embeds = self.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).pooler_output
        return l2_normalize(embeds) if normalize else embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        return_logits: bool = True,
        **kwargs,
    ) -> AlignOutput | tuple:
        """Embed texts ``(T, L)`` and images ``(I, C, H, W)``; logits are ``(I, T)`` and ``(T, I)``.

        With ``return_loss=True`` (needs ``I == T``, pairs on the diagonal) the contrastive loss of
        the configured head is returned, over the global batch when running distributed. The loss
        never materialises the logits; pass ``return_logits=False`` to skip them too (large batches).
        As in transformers' CLIP/ALIGN no loss is computed unless asked: for the stock ``Trainer``,
        batches from ``ImageTextCollator(..., return_loss=True)`` ask for it.
        """
        vision_outputs = self.get_image_features(pixel_values=pixel_values, output_hidden_states=output_hidden_states)
        text_outputs = self.get_text_features(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        image_embeds = l2_normalize(vision_outputs.pooler_output)
        text_embeds = l2_normalize(text_outputs.pooler_output)
        head = self.contrastive_head
        logits_per_image = logits_per_text = None
        # Under device_map (accelerate) an offloaded head holds its weights only during its forward,
        # so its hook loads them around these reads; the towers may sit on other devices.
        hook = getattr(head, "_hf_hook", None)
        if hook is not None:
            hook.pre_forward(head)
        device = head.temperature.device
        temperature = head.get_temperature().detach()
        if return_logits:
            logits_per_image = head.logits(image_embeds.to(device), text_embeds.to(device))
            logits_per_text = logits_per_image.t()
        if hook is not None:
            hook.post_forward(head, None)

        loss = i2t_acc = t2i_acc = None
        if return_loss:
            if image_embeds.shape[0] != text_embeds.shape[0]:
                raise ValueError(
                    f"return_loss needs as many images as texts, got {image_embeds.shape[0]} and {text_embeds.shape[0]}"
                )
            head_out = head(image_embeds, text_embeds)
            loss, i2t_acc, t2i_acc = head_out.loss, head_out.i2t_accuracy, head_out.t2i_accuracy

        output = AlignOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            temperature=temperature,
            image_to_text_accuracy=i2t_acc,
            text_to_image_accuracy=t2i_acc,
        )
        return output.to_tuple() if return_dict is False else output


__all__ = ["AlignModel", "AlignTextModel", "AlignVisionModel", "AlignPreTrainedModel", "AlignOutput", "l2_normalize"]
