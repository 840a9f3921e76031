"""Training: :class:`~align_hf.training.trainer.AlignTrainer` (contrastive pretraining and
fine-tuning on a ``transformers.Trainer``), its arguments, data stream, the quickstart recipe and
image-classification fine-tuning. Import the submodules; this package imports nothing heavy."""
