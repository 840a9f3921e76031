"""align_hf: the ALIGN image-text dual encoder (EfficientNet + BERT) as a Hugging Face-compatible package.

Importing the package registers its classes with transformers' Auto classes under the model type
``"align_hf"`` (transformers' own ALIGN keeps ``"align"``).
"""

__version__ = "0.1.0"

from .configuration_align import AlignConfig, AlignTextConfig, AlignVisionConfig  # noqa: E402
from .loss import AlignContrastiveHead, contrastive_loss, sigmoid_loss  # noqa: E402
from .modeling_align import AlignModel, AlignOutput, AlignTextModel, AlignVisionModel  # noqa: E402
from .processing_align import AlignImageProcessor, AlignProcessor  # noqa: E402
from .registration import register_auto_classes  # noqa: E402

register_auto_classes()

__all__ = [
    "AlignConfig",
    "AlignTextConfig",
    "AlignVisionConfig",
    "AlignModel",
    "AlignOutput",
    "AlignTextModel",
    "AlignVisionModel",
    "AlignProcessor",
    "AlignImageProcessor",
    "AlignContrastiveHead",
    "contrastive_loss",
    "sigmoid_loss",
]
