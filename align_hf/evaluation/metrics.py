"""Evaluation metrics on embedding tensors: classification accuracy and image-text retrieval recall.

The metric functions work on plain tensors so they can be checked by hand;
:mod:`align_hf.evaluation.runner` wires them to a model, a processor and any iterable of rows (a
``datasets.Dataset``, an ``IterableDataset`` or a list of dicts).

Conventions follow CLIP_benchmark:
  * classification: top-1, top-5 (only with at least 5 classes) and mean per-class recall;
  * retrieval with several captions per image: text->image R@K is the share of captions whose image
    is among the K best images; image->text R@K is the share of images with at least one of their
    captions among the K best captions.
A candidate outranks the true match only when it scores strictly higher, so exact ties resolve in
favour of the true match.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, topk: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy and mean per-class recall.

    Args:
        logits: ``(N, C)`` scores, higher is better.
        labels: ``(N,)`` integer class ids in ``[0, C)``.
        topk: which top-k accuracies to report; a k larger than ``C`` is left out.

    Returns:
        ``{"top1": ..., "top5": ..., "mean_per_class_recall": ..., "num_samples": N}`` with values in
        [0, 1]. Mean per-class recall averages top-1 recall over the classes present in ``labels``.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    labels = torch.as_tensor(labels, dtype=torch.long, device=logits.device)
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be ({logits.shape[0]},), got shape {tuple(labels.shape)}")
    n, num_classes = logits.shape
    if n == 0:
        raise ValueError("no samples to score")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    # Rank of the true class = classes scoring strictly higher; ties count for the true class.
    true_scores = logits.gather(1, labels[:, None])
    rank = (logits > true_scores).sum(1)
    out: dict[str, float] = {}
    for k in topk:
        if k <= num_classes:
            out[f"top{k}"] = (rank < k).float().mean().item()
    hit = (rank == 0).float()
    per_class_hits = torch.zeros(num_classes, device=logits.device).index_add_(0, labels, hit)
    per_class_count = torch.bincount(labels, minlength=num_classes).float()
    present = per_class_count > 0
    out["mean_per_class_recall"] = (per_class_hits[present] / per_class_count[present]).mean().item()
    out["num_samples"] = n
    return out


def retrieval_metrics(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    block_size: int = 1024,
) -> dict[str, float]:
    """Recall@K in both directions, computed block by block.

    Only one ``(block_size, N_img)`` block of scores exists at a time (two passes over the
    caption blocks), so 25k captions x 5k images needs about 20 MB of scores with the default
    block size instead of 500 MB for the full matrix.

    Args:
        image_embeds: ``(N_img, D)`` image embeddings (normalised for cosine similarity).
        text_embeds: ``(N_txt, D)`` text embeddings.
        text_to_image: ``(N_txt,)`` index of the image each caption belongs to.
        ks: the K values.
        block_size: rows of the score matrix computed at once.

    Returns:
        ``{"image_to_text_R@K": ..., "text_to_image_R@K": ..., "num_images": ..., "num_texts": ...}``.
        Images without any caption are left out of image->text and counted in
        ``"images_without_captions"``.
    """
    image_embeds = torch.as_tensor(image_embeds)
    text_embeds = torch.as_tensor(text_embeds)
    t2i = torch.as_tensor(text_to_image, dtype=torch.long, device=text_embeds.device)
    n_img, n_txt = image_embeds.shape[0], text_embeds.shape[0]
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"embeddings must be (N_img, D) and (N_txt, D), got {tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    if n_img == 0 or n_txt == 0:
        raise ValueError(f"need at least one image and one text, got {n_img} images and {n_txt} texts")
    if t2i.shape != (n_txt,):
        raise ValueError(f"text_to_image must be ({n_txt},), got shape {tuple(t2i.shape)}")
    if t2i.min() < 0 or t2i.max() >= n_img:
        raise ValueError(f"text_to_image entries must lie in [0, {n_img})")
    if block_size < 1:
        raise ValueError("block_size must be positive")
    image_embeds = image_embeds.float()
    text_embeds = text_embeds.float().to(image_embeds.device)
    t2i = t2i.to(image_embeds.device)

    # Both directions come from the same (text block x all images) score blocks, so a caption's
    # score against its own image is bit-identical wherever it is compared.
    def text_blocks() -> Iterator[tuple[slice, torch.Tensor]]:
        for start in range(0, n_txt, block_size):
            rows = slice(start, start + block_size)
            yield rows, text_embeds[rows] @ image_embeds.T  # (b, N_img)

    # Pass 1, text -> image: rank of each caption's own image; also each image's best own caption.
    t2i_rank = torch.empty(n_txt, dtype=torch.long, device=image_embeds.device)
    own_score = torch.empty(n_txt, dtype=image_embeds.dtype, device=image_embeds.device)
    for rows, scores in text_blocks():
        own = scores.gather(1, t2i[rows, None])
        own_score[rows] = own[:, 0]
        t2i_rank[rows] = (scores > own).sum(1, dtype=torch.int32)
    best = torch.full((n_img,), float("-inf"), device=image_embeds.device)
    best = best.scatter_reduce(0, t2i, own_score, reduce="amax")

    # Pass 2, image -> text: captions scoring above the image's best own caption. Its other
    # captions cannot, so they never push it down.
    i2t_rank = torch.zeros(n_img, dtype=torch.long, device=image_embeds.device)
    for _, scores in text_blocks():
        i2t_rank += (scores > best).sum(0, dtype=torch.int32)
    has_caption = torch.isfinite(best)

    out: dict[str, float] = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = (i2t_rank[has_caption] < k).float().mean().item()
    for k in ks:
        out[f"text_to_image_R@{k}"] = (t2i_rank < k).float().mean().item()
    out["num_images"] = n_img
    out["num_texts"] = n_txt
    out["images_without_captions"] = int((~has_caption).sum())
    return out


__all__ = ["classification_metrics", "retrieval_metrics"]
