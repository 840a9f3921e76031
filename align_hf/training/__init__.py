"""Training: :class:`~align_hf.training.trainer.AlignTrainer` (contrastive pretraining and
fine-tuning on a ``transformers.Trainer``) and what it is built from.

arguments (run arguments), factories (model, processor, filter, eval sets from them), pretrain
(``run_training``, what ``align-hf train`` runs), freezing, budget, checkpointing, stream (the
endless training loader), reporting, quickstart, classification, plotting. Import the submodules;
this package imports nothing heavy.
"""
