"""CLIP_benchmark interop: its webdataset layout read by ``align-hf eval``, its result JSON, and an
align_hf model run by CLIP_benchmark's own evaluation code through :func:`load_align_hf`.

The references are CLIP_benchmark itself (its dataset builder, its metric functions, its command
line) and a brute-force recall written here; the data is a tiny synthetic set written in the layout.
"""

from __future__ import annotations

import builtins
import json
import math

import numpy as np
import pytest
import torch

from align_hf.evaluation import evaluate_retrieval, evaluate_zero_shot, retrieval_metrics
from align_hf.evaluation.clip_benchmark import (
    clip_benchmark_metrics,
    load_align_hf,
    open_clip_benchmark_dataset,
    templates_from_clip_benchmark,
    templates_to_clip_benchmark,
    write_clip_benchmark_dataset,
)

# The tiny model and the one-thread setting of the evaluation tests.
from test_evaluation import one_thread, tiny  # noqa: E402,F401,F811  (pytest fixtures)

TEMPLATES = ["a photo of the {}.", "the {} shape.", "a {} in {braces}"]
KS = (1, 2, 5)


@pytest.fixture(scope="module")
def corpus():
    from align_hf.data.synthetic import SyntheticConfig, SyntheticCorpus

    return SyntheticCorpus(SyntheticConfig(colours=("red", "blue", "green"), shapes=("circle", "square"),
                                           zeroshot_per_class=2, num_retrieval=9))


@pytest.fixture(scope="module")
def zs_samples(corpus):
    """12 ``(PIL image, label index)`` over 6 classes."""
    samples = [corpus.sample("zeroshot", i) for i in range(12)]
    return [(s.image, s.meta["label_index"]) for s in samples]


@pytest.fixture(scope="module")
def rt_samples(corpus):
    """9 ``(PIL image, captions)``: 1, 2 or 3 captions an image, all distinct (no exact score ties)."""
    out = []
    for i in range(9):
        sample = corpus.sample("retrieval", i)
        text = sample.meta["description"]
        variants = [text, f"a picture of {text}", f"the {text} image"]
        out.append((sample.image, variants[: 1 + i % 3]))
    captions = [c for _, caps in out for c in caps]
    assert len(set(captions)) == len(captions) == 18
    return out


@pytest.fixture(scope="module")
def zs_root(tmp_path_factory, corpus, zs_samples):
    root = tmp_path_factory.mktemp("cb") / "shapes"
    write_clip_benchmark_dataset(root, zs_samples, classes=corpus.class_names, templates=TEMPLATES, max_count=5)
    return root


@pytest.fixture(scope="module")
def rt_root(tmp_path_factory, rt_samples):
    root = tmp_path_factory.mktemp("cb") / "scenes"
    write_clip_benchmark_dataset(root, rt_samples, retrieval=True, image_format="webp", max_count=4)
    return root


def _cli_eval(command, saved_model, root, tmp_path, name, *extra):
    from align_hf.cli import main

    out = tmp_path / name
    assert main(["eval", command, "--model", str(saved_model), "--dataset", str(root), "--no-progress",
                 "--batch-size", "4", "--output", str(out), *extra]) == 0
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------
# the layout
# ------------------------------------------------------------------------------------------


def test_templates_convert_both_ways_with_clip_benchmark_format_rules():
    cb = templates_to_clip_benchmark(TEMPLATES)
    assert cb == ["a photo of the {c}.", "the {c} shape.", "a {c} in {{braces}}"]
    # CLIP_benchmark fills prompts with str.format(c=name); ours replaces "{}": same prompts.
    assert [t.format(c="red circle") for t in cb] == [t.replace("{}", "red circle") for t in TEMPLATES]
    assert templates_from_clip_benchmark(cb + ["  "]) == TEMPLATES
    with pytest.raises(ValueError, match="no '{}'"):
        templates_to_clip_benchmark(["no placeholder"])


def test_written_layout_is_what_clip_benchmark_reads(zs_root, rt_root, corpus, zs_samples, rt_samples):
    from clip_benchmark.datasets.builder import build_dataset

    assert sorted(p.name for p in (zs_root / "test").iterdir()) == ["0.tar", "1.tar", "2.tar", "nshards.txt"]
    theirs = build_dataset("wds/shapes", root=str(zs_root), transform=None, split="test", task="zeroshot_classification")
    assert theirs.classes == corpus.class_names
    assert theirs.templates == templates_to_clip_benchmark(TEMPLATES)
    got = list(theirs)
    assert [label for _, label in got] == [label for _, label in zs_samples]
    for (image, _), (original, _) in zip(got, zs_samples):
        assert np.array_equal(np.asarray(image), np.asarray(original))  # PNG: lossless

    theirs = build_dataset("wds/scenes", root=str(rt_root), transform=None, split="test", task="zeroshot_retrieval")
    got = list(theirs)
    assert [caps for _, caps in got] == [caps for _, caps in rt_samples]
    for (image, _), (original, _) in zip(got, rt_samples):
        assert np.array_equal(np.asarray(image), np.asarray(original))  # lossless WebP

    ours = open_clip_benchmark_dataset(zs_root)
    assert (ours.name, ours.dataset_type, ours.classes, ours.templates) == (
        "wds/shapes", "classification", corpus.class_names, TEMPLATES)
    assert [int(row["label"]) for row in ours.rows()] == [label for _, label in zs_samples]
    ours = open_clip_benchmark_dataset(rt_root)
    assert ours.dataset_type == "retrieval" and ours.classes is None
    assert [row["captions"] for row in ours.rows()] == [caps for _, caps in rt_samples]


# ------------------------------------------------------------------------------------------
# (a) align-hf eval on the layout == the in-process evaluation on the original images
# ------------------------------------------------------------------------------------------


def test_align_hf_eval_zero_shot_on_the_layout(saved_model, tiny, zs_root, zs_samples, corpus, tmp_path, capsys):
    model, processor = tiny
    rows = [{"image": image, "label": label} for image, label in zs_samples]
    expected = evaluate_zero_shot(model, processor, rows, corpus.class_names, TEMPLATES, batch_size=4, progress=False)

    flat = _cli_eval("zero-shot", saved_model, zs_root, tmp_path, "flat.json")  # classes and templates from the folder
    assert flat["classes"] == 6 and flat["num_samples"] == 12 and flat["skipped"] == 0
    for key in ("top1", "top5", "mean_per_class_recall"):
        assert flat[key] == pytest.approx(expected[key], abs=1e-9), key

    result = _cli_eval("zero-shot", saved_model, zs_root, tmp_path, "cb.json", "--format", "clip_benchmark")
    assert result == {
        "dataset": "wds/shapes", "model": str(saved_model), "pretrained": "align_hf",
        "task": "zeroshot_classification", "language": "en",
        "metrics": {"acc1": pytest.approx(expected["top1"]), "acc5": pytest.approx(expected["top5"]),
                    "mean_per_class_recall": pytest.approx(expected["mean_per_class_recall"])},
    }
    assert "acc1" in capsys.readouterr().out

    # --classes / --templates still override what the folder says.
    names = [name.upper() for name in corpus.class_names]
    other = evaluate_zero_shot(model, processor, rows, names, "short", batch_size=4, progress=False)
    flat = _cli_eval("zero-shot", saved_model, zs_root, tmp_path, "o.json", "--classes", ",".join(names),
                     "--templates", "short")
    assert flat["top1"] == pytest.approx(other["top1"]) and flat["mean_per_class_recall"] == pytest.approx(
        other["mean_per_class_recall"])


def test_align_hf_eval_retrieval_on_the_layout(saved_model, tiny, rt_root, rt_samples, tmp_path):
    model, processor = tiny
    rows = [{"image": image, "caption": caps} for image, caps in rt_samples]
    expected = evaluate_retrieval(model, processor, rows, ks=KS, batch_size=4, progress=False)
    assert expected["num_texts"] == 18 and expected["num_images"] == 9

    ks = [str(k) for k in KS]
    flat = _cli_eval("retrieval", saved_model, rt_root, tmp_path, "flat.json", "--ks", *ks)
    for key, value in expected.items():
        assert flat[key] == pytest.approx(value, abs=1e-9), key
    result = _cli_eval("retrieval", saved_model, rt_root, tmp_path, "cb.json", "--ks", *ks, "--format", "clip_benchmark")
    assert result["task"] == "zeroshot_retrieval" and result["dataset"] == "wds/scenes"
    assert result["metrics"] == {
        key: pytest.approx(value) for k in KS for key, value in (
            (f"image_retrieval_recall@{k}", expected[f"text_to_image_R@{k}"]),
            (f"text_retrieval_recall@{k}", expected[f"image_to_text_R@{k}"]),
        )
    }
    assert list(result["metrics"])[:2] == ["image_retrieval_recall@1", "text_retrieval_recall@1"]


def test_align_hf_eval_refuses_the_wrong_task_for_a_layout(saved_model, zs_root, rt_root, capsys):
    from align_hf.cli import main

    assert main(["eval", "retrieval", "--model", str(saved_model), "--dataset", str(zs_root), "--no-progress"]) == 2
    assert main(["eval", "zero-shot", "--model", str(saved_model), "--dataset", str(rt_root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "use `align-hf eval zero-shot`" in err and "use `align-hf eval retrieval`" in err


# ------------------------------------------------------------------------------------------
# (b) CLIP_benchmark's own evaluation, running our model through load_align_hf
# ------------------------------------------------------------------------------------------


def test_tokenizer_tensor_carries_the_attention_mask(saved_model, tiny):
    model, processor = tiny
    wrapped, _, tokenizer = load_align_hf(str(saved_model), device="cpu")
    texts = ["a red circle", "a large blue square at the top left on a grainy white background"]
    tokens = tokenizer(texts)
    assert tokens.dtype == torch.long and tokens.shape[:2] == (2, 2)
    assert tokens[0, 1].sum() < tokens[1, 1].sum()  # the short text is padded, its mask says so
    with torch.no_grad():
        batched = wrapped.encode_text(tokens)
        alone = torch.cat([model.encode_text(**processor(text=[t], return_tensors="pt")) for t in texts])
        unmasked = model.encode_text(input_ids=tokens[:, 0], attention_mask=torch.ones_like(tokens[:, 0]))
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    # Without the mask the padded text embeds differently: the mask is what makes them agree.
    assert (unmasked[0] - alone[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="ids and mask"):
        wrapped.encode_text(tokens[:, 0])


@pytest.fixture
def numpy_fix(monkeypatch):
    """CLIP_benchmark's accuracy() under NumPy >= 2.4 (see fix_numpy_scalar_conversion), undone afterwards."""
    from clip_benchmark.metrics import zeroshot_classification

    from align_hf.evaluation.clip_benchmark import fix_numpy_scalar_conversion

    monkeypatch.setattr(zeroshot_classification, "float", builtins.float, raising=False)  # removed afterwards
    fix_numpy_scalar_conversion()


def test_size_one_float_is_float_elsewhere():
    from align_hf.evaluation.clip_benchmark import size_one_float

    assert size_one_float(np.array([0.25])) == 0.25 and size_one_float(3) == 3.0 and math.isnan(size_one_float("nan"))
    with pytest.raises(TypeError):
        size_one_float(np.ones(2))


def test_clip_benchmark_metric_functions_with_our_loader(saved_model, zs_root, rt_root, tmp_path, numpy_fix):
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    model, transform, tokenizer = load_align_hf(str(saved_model), pretrained="align_hf", device="cpu")

    def loader(name, root, task):
        dataset = build_dataset(name, root=str(root), transform=transform, split="test", task=task)
        # As clip_benchmark's command line builds it for a wds/ dataset.
        return dataset, torch.utils.data.DataLoader(dataset.batched(5), batch_size=None, num_workers=0)

    dataset, dataloader = loader("wds/shapes", zs_root, "zeroshot_classification")
    theirs = zeroshot_classification.evaluate(model, dataloader, tokenizer, dataset.classes, dataset.templates,
                                              device="cpu", amp=False)
    ours = _cli_eval("zero-shot", saved_model, zs_root, tmp_path, "zs.json", "--format", "clip_benchmark")["metrics"]
    assert theirs == {key: pytest.approx(value, abs=1e-6) for key, value in ours.items()}
    assert 0 < theirs["acc1"] < theirs["acc5"] < 1  # not a degenerate result

    _, dataloader = loader("wds/scenes", rt_root, "zeroshot_retrieval")
    theirs = zeroshot_retrieval.evaluate(model, dataloader, tokenizer, device="cpu", amp=False, recall_k_list=list(KS))
    ours = _cli_eval("retrieval", saved_model, rt_root, tmp_path, "rt.json", "--format", "clip_benchmark",
                     "--ks", *map(str, KS))["metrics"]
    assert theirs == {key: pytest.approx(value, abs=1e-6) for key, value in ours.items()}
    assert len(set(theirs.values())) > 1  # not a degenerate all-0 / all-1 result


def test_clip_benchmark_command_line_runs_align_hf(saved_model, zs_root, rt_root, tmp_path, monkeypatch, numpy_fix):
    from clip_benchmark import models

    from align_hf.evaluation.clip_benchmark import main

    monkeypatch.setattr(models, "TYPE2FUNC", dict(models.TYPE2FUNC))  # leave the registry as found
    before = list(models.MODEL_TYPES)
    monkeypatch.chdir(tmp_path)
    common = ["--model", str(saved_model), "--no_amp", "--num_workers", "0", "--batch_size", "5", "--quiet"]
    try:
        assert main(["eval", "--dataset", "wds/shapes", "--dataset_root", str(zs_root), *common,
                     "--output", "zs.json"]) == 0
        # Default output name: the model path's "/" would make CLIP_benchmark write into missing folders.
        assert main(["eval", "--dataset", "wds/scenes", "--dataset_root", str(rt_root), *common,
                     "--task", "zeroshot_retrieval", "--recall_k", *map(str, KS)]) == 0
    finally:
        models.MODEL_TYPES[:] = before
    zs = json.loads((tmp_path / "zs.json").read_text())
    slug = str(saved_model).strip("/").replace("/", "_")
    rt = json.loads((tmp_path / f"scenes_align_hf_{slug}_en_zeroshot_retrieval.json").read_text())
    assert (zs["model"], zs["pretrained"], zs["task"]) == (str(saved_model), "align_hf", "zeroshot_classification")
    assert rt["task"] == "zeroshot_retrieval"

    ours = _cli_eval("zero-shot", saved_model, zs_root, tmp_path, "a.json", "--format", "clip_benchmark")
    assert set(zs) == set(ours) and zs["dataset"] == ours["dataset"] == "wds/shapes"
    assert zs["metrics"] == {key: pytest.approx(value, abs=1e-6) for key, value in ours["metrics"].items()}
    ours = _cli_eval("retrieval", saved_model, rt_root, tmp_path, "b.json", "--format", "clip_benchmark",
                     "--ks", *map(str, KS))
    assert rt["metrics"] == {key: pytest.approx(value, abs=1e-6) for key, value in ours["metrics"].items()}


# ------------------------------------------------------------------------------------------
# (c) recall semantics against a brute-force reference
# ------------------------------------------------------------------------------------------


def _brute_force_recall(scores: torch.Tensor, owner: list[int], k: int) -> tuple[float, float]:
    """``(text->image, image->text)`` R@K from a full ``(texts, images)`` score matrix, by sorting.

    A query counts when ANY of its positives is among the K best candidates.
    """
    n_txt, n_img = scores.shape
    rows = scores.tolist()
    t2i = [owner[t] in sorted(range(n_img), key=lambda j: -rows[t][j])[:k] for t in range(n_txt)]
    i2t = []
    for i in range(n_img):
        top = sorted(range(n_txt), key=lambda t: -rows[t][i])[:k]
        i2t.append(any(owner[t] == i for t in top))
    return sum(t2i) / n_txt, sum(i2t) / n_img


def _clip_benchmark_recall(scores: torch.Tensor, owner: list[int], k: int) -> tuple[float, float]:
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k

    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(owner)), torch.tensor(owner)] = True
    return ((recall_at_k(scores, positives, k) > 0).float().mean().item(),
            (recall_at_k(scores.T, positives.T, k) > 0).float().mean().item())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_any_positive_matches_brute_force_and_clip_benchmark(seed):
    g = torch.Generator().manual_seed(seed)
    captions_per_image = [1, 2, 3, 5, 1, 4, 2, 1, 3, 2]
    owner = [i for i, n in enumerate(captions_per_image) for _ in range(n)]
    images = torch.nn.functional.normalize(torch.randn(10, 8, generator=g), dim=-1)
    # Captions near their image, so that some land in the top K and some do not.
    texts = torch.nn.functional.normalize(images[owner] + 0.9 * torch.randn(len(owner), 8, generator=g), dim=-1)
    ours = clip_benchmark_metrics(retrieval_metrics(images, texts, owner, ks=(1, 2, 3, 5)), "retrieval")
    scores = texts @ images.T
    for k in (1, 2, 3, 5):
        t2i, i2t = _brute_force_recall(scores, owner, k)
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(t2i), k
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(i2t), k
        assert _clip_benchmark_recall(scores, owner, k) == pytest.approx((t2i, i2t)), k
    assert 0 < ours["text_retrieval_recall@1"] < 1 and 0 < ours["image_retrieval_recall@1"] < 1


def test_an_image_counts_with_its_second_caption_and_its_other_captions_do_not_push_it_down():
    # Images are the standard basis, text t scores SCORES[t, i] against image i.
    scores = torch.tensor([
        [0.1, 0.9, 0.0],  # caption 0 of image 0: image 1 wins
        [0.8, 0.0, 0.0],  # caption 1 of image 0: its best caption
        [0.7, 0.0, 0.0],  # caption 2 of image 0
        [0.9, 0.5, 0.0],  # caption of image 1: scores higher for image 0 than any image-0 caption
        [0.0, 0.0, 0.3],  # caption of image 2
    ])
    owner = [0, 0, 0, 1, 2]
    ours = clip_benchmark_metrics(retrieval_metrics(torch.eye(3), scores, owner, ks=(1, 2)), "retrieval")
    # image->text: image 0's best own caption (0.8) ranks 2nd (behind 0.9) -> miss at 1, hit at 2;
    # image 1's own caption (0.5) is behind 0.9 -> miss at 1, hit at 2; image 2 -> hit.
    assert ours["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert ours["text_retrieval_recall@2"] == pytest.approx(1.0)
    # text->image: captions 1, 2, 4 find their image first; 0 (image 1 first) and 3 (image 0 first) at 2.
    assert ours["image_retrieval_recall@1"] == pytest.approx(3 / 5)
    assert ours["image_retrieval_recall@2"] == pytest.approx(1.0)
    for k in (1, 2):
        pair = (ours[f"image_retrieval_recall@{k}"], ours[f"text_retrieval_recall@{k}"])
        assert pair == pytest.approx(_brute_force_recall(scores, owner, k))
        assert pair == pytest.approx(_clip_benchmark_recall(scores, owner, k))


def test_exact_ties_count_for_the_true_match_and_clip_benchmark_can_only_score_lower():
    # Two identical images: every caption ties between them. Ours counts a tie as found
    # (strictly higher scores only outrank); CLIP_benchmark's torch.topk keeps one of the tied
    # candidates, so it can only score lower, never higher.
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    owner = [0, 1, 2]
    ours = clip_benchmark_metrics(retrieval_metrics(images, texts, owner, ks=(1,)), "retrieval")
    assert ours == {"image_retrieval_recall@1": 1.0, "text_retrieval_recall@1": 1.0}
    theirs = _clip_benchmark_recall(texts @ images.T, owner, 1)
    assert theirs[0] <= ours["image_retrieval_recall@1"] and theirs[1] <= ours["text_retrieval_recall@1"]
    # Identical score rows get the same pick from topk, so one of each tied pair misses.
    assert theirs == pytest.approx((2 / 3, 2 / 3))


def test_clip_benchmark_metrics_keys_and_nan_top5():
    cb = clip_benchmark_metrics({"top1": 0.5, "mean_per_class_recall": 0.25, "num_samples": 4}, "zero_shot")
    assert list(cb) == ["acc1", "acc5", "mean_per_class_recall"] and math.isnan(cb["acc5"])
    with pytest.raises(ValueError, match="task"):
        clip_benchmark_metrics({}, "captioning")


def test_launcher_defaults():
    from align_hf.evaluation.clip_benchmark import _with_defaults

    args = _with_defaults(["eval", "--model", "org/align", "--dataset", "wds/x"])
    assert args[-6:] == ["--model_type", "align_hf", "--pretrained", "align_hf",
                         "--output", "{dataset}_{pretrained}_org_align_{language}_{task}.json"]
    given = ["eval", "--model=m", "--model_type", "open_clip", "--pretrained", "p", "--output", "o.json"]
    assert _with_defaults(given) == given
    assert _with_defaults(["build", "a.json"]) == ["build", "a.json"]
    several = _with_defaults(["eval", "--model", "a/x", "b/y", "--dataset", "wds/x"])
    assert "--output" not in several  # one name for two models would overwrite: CLIP_benchmark's template stays
