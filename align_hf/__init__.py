"""align_hf: the ALIGN image-text dual encoder as a Hugging Face-compatible package."""

__version__ = "0.1.0"
