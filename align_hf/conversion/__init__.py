"""Checkpoint conversion: TensorFlow (coyo-align ALIGN, tensorflow/tpu EfficientNet, google-research
BERT) and transformers-format ALIGN to and from align_hf.

TF checkpoints are read by a pure-Python reader (:mod:`align_hf.conversion.tf_checkpoint`, no
TensorFlow needed; ``pip install align_hf[tf]`` adds a fast crc32c). Each ``tf_*``/``*_transformers``
module has a ``main(argv, prog)``, run by ``align-hf convert KIND`` (:mod:`align_hf.cli.convert`),
``python -m align_hf.conversion.MODULE`` or the scripts in the repository's ``conversion/`` folder.
"""
