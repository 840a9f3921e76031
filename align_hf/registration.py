"""Registration of align_hf's classes with transformers' Auto classes and for remote code."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_align import AlignConfig, AlignTextConfig, AlignVisionConfig
from .modeling_align import AlignModel, AlignTextModel, AlignVisionModel
from .processing_align import AlignImageProcessor, AlignProcessor

_done = False


def register_auto_classes() -> None:
    """Make ``Auto*.from_pretrained`` resolve ``model_type="align_hf"`` to our classes.

    The class names equal transformers' own ALIGN classes, so registration needs ``exist_ok``.
    Also marks the config and model for remote code, so ``save_pretrained`` copies their modules
    next to the weights and a saved folder loads with ``trust_remote_code=True`` without align_hf
    installed. The processor and image processor are marked by ``processing_align`` itself (it
    also runs as remote code, see there).
    """
    global _done
    if _done:
        return
    for config_class in (AlignConfig, AlignTextConfig, AlignVisionConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(AlignConfig, AlignModel, exist_ok=True)
    AutoModel.register(AlignTextConfig, AlignTextModel, exist_ok=True)
    AutoModel.register(AlignVisionConfig, AlignVisionModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(AlignConfig, AlignModel, exist_ok=True)
    AutoImageProcessor.register(
        AlignConfig, image_processor_classes={"torchvision": AlignImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(AlignConfig, AlignProcessor, exist_ok=True)

    AlignConfig.register_for_auto_class("AutoConfig")
    AlignModel.register_for_auto_class("AutoModel")
    _done = True
