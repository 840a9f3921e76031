"""Image<->text retrieval recall@K with several captions per image (Flickr30K / MSCOCO protocol)."""

import datasets
import evaluate
import torch

from align_hf.evaluation import retrieval_metrics

_DESCRIPTION = """
Recall@K for zero-shot retrieval. Each example is one caption: its embedding and the index of the
image it describes. text->image R@K is the share of captions whose image is among the K most
similar images; image->text R@K is the share of images with at least one of their captions among
the K most similar captions. Scores are dot products (cosine for normalised embeddings), computed
in blocks so large test sets run in bounded memory.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: caption embeddings, one list of D floats per caption.
    references: for each caption, the row of `image_embeds` it belongs to.
    image_embeds: (N_img, D) image embeddings (array, tensor or nested lists).
    ks: the K values (default (1, 5, 10)).
    block_size: score-matrix rows computed at once (default 1024).
Returns:
    image_to_text_R@K, text_to_image_R@K (fractions in [0, 1]), num_images, num_texts,
    images_without_captions.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, image_embeds=None, ks=(1, 5, 10), block_size=1024):
        if image_embeds is None:
            raise ValueError("retrieval_recall needs image_embeds=(N_img, D) image embeddings")
        return retrieval_metrics(
            torch.as_tensor(image_embeds, dtype=torch.float32),
            torch.as_tensor(predictions, dtype=torch.float32),
            torch.as_tensor(references, dtype=torch.long),
            ks=tuple(ks),
            block_size=block_size,
        )
