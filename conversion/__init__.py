"""Checkpoint conversion for align_hf.

TensorFlow checkpoints are read by a pure-Python reader (no TensorFlow needed); see
``conversion/tf_checkpoint.py``. The ``convert_*.py`` scripts turn coyo-align ALIGN, tensorflow/tpu
EfficientNet, google-research BERT and transformers ALIGN checkpoints into align_hf folders.
"""
