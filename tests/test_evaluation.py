"""Zero-shot classification and retrieval evaluation: metric definitions, templates, classifier maths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from align_hf.evaluation import classification_metrics, get_field, retrieval_metrics
from align_hf.evaluation.zero_shot import build_class_embeddings, load_class_names, load_templates


# ------------------------------------------------------------------------------------------
# classification metrics
# ------------------------------------------------------------------------------------------


def test_classification_metrics_hand_computed():
    # 6 classes; the true class's rank (classes scoring strictly higher) is 0, 2, 5, 0.
    logits = torch.tensor(
        [
            [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # label 0 -> rank 0
            [1.0, 2.0, 3.0, 9.0, 8.0, 0.0],  # label 2 -> 9, 8 above -> rank 2
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # label 5 -> rank 5
            [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # label 4 -> rank 0
        ]
    )
    labels = torch.tensor([0, 2, 5, 4])
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(2 / 4)
    assert m["top5"] == pytest.approx(3 / 4)
    # per-class top-1 recall: class 0 -> 1, class 2 -> 0, class 5 -> 0, class 4 -> 1; mean over 4 present classes
    assert m["mean_per_class_recall"] == pytest.approx(0.5)
    assert m["num_samples"] == 4


def test_mean_per_class_recall_weights_classes_not_samples():
    # class 0: 3 samples all right; class 1: 1 sample wrong -> accuracy 3/4, mean per-class recall 1/2
    logits = torch.tensor([[1.0, 0.0]] * 4)
    m = classification_metrics(logits, torch.tensor([0, 0, 0, 1]))
    assert m["top1"] == pytest.approx(0.75)
    assert m["mean_per_class_recall"] == pytest.approx(0.5)
    assert "top5" not in m  # fewer than 5 classes


def test_classification_metrics_match_brute_force():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 12, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 12, (300,), generator=g)
    m = classification_metrics(logits, labels, topk=(1, 3, 5))
    order = logits.argsort(dim=1, descending=True)
    for k in (1, 3, 5):
        expected = np.mean([labels[i].item() in order[i, :k].tolist() for i in range(300)])
        assert m[f"top{k}"] == pytest.approx(expected)
    pred = order[:, 0]
    recalls = [(pred[labels == c] == c).double().mean().item() for c in range(12) if (labels == c).any()]
    assert m["mean_per_class_recall"] == pytest.approx(np.mean(recalls))


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), "must be"),
        (torch.zeros(3, 4), torch.tensor([0, 1, 4]), "labels must lie"),
        (torch.zeros(3, 4), torch.tensor([0, 1]), "labels must be"),
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), "no samples"),
    ],
)
def test_classification_metrics_bad_input(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(logits, labels)


# ------------------------------------------------------------------------------------------
# retrieval metrics
# ------------------------------------------------------------------------------------------

# Images are the standard basis, so text t scores SCORES[t, i] against image i.
SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.2],  # caption of image 0, own image first            -> t2i rank 0
        [0.3, 0.5, 0.1],  # caption of image 0, image 1 above              -> rank 1
        [0.2, 0.4, 0.6],  # caption of image 1, image 2 above              -> rank 1
        [0.7, 0.2, 0.8],  # caption of image 1, images 0 and 2 above       -> rank 2
        [0.1, 0.3, 0.2],  # caption of image 2, image 1 above              -> rank 1
    ]
)
OWNER = torch.tensor([0, 0, 1, 1, 2])


@pytest.mark.parametrize("block_size", [1, 2, 1024])
def test_retrieval_metrics_hand_computed(block_size):
    m = retrieval_metrics(torch.eye(3), SCORES, OWNER, ks=(1, 2, 3), block_size=block_size)
    # text -> image ranks 0, 1, 1, 2, 1
    assert m["text_to_image_R@1"] == pytest.approx(1 / 5)
    assert m["text_to_image_R@2"] == pytest.approx(4 / 5)
    assert m["text_to_image_R@3"] == pytest.approx(1.0)
    # image 0: best own caption 0.9, nothing above -> rank 0
    # image 1: best own caption 0.4 (text 2); text 1 (0.5) above -> rank 1
    # image 2: own caption 0.2; texts 2 (0.6) and 3 (0.8) above, text 0 ties (0.2) -> rank 2
    assert m["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert m["image_to_text_R@2"] == pytest.approx(2 / 3)
    assert m["image_to_text_R@3"] == pytest.approx(1.0)
    assert (m["num_images"], m["num_texts"], m["images_without_captions"]) == (3, 5, 0)


def _brute_force_recall(img: torch.Tensor, txt: torch.Tensor, owner: torch.Tensor, k: int) -> tuple[float, float]:
    """Reference: full float64 score matrix, top-k sets by sorting."""
    s = (txt.double() @ img.double().T).numpy()
    own = owner.numpy()
    t2i = np.mean([own[t] in np.argsort(-s[t])[:k] for t in range(len(own))])
    i2t = np.mean(
        [bool(set(np.argsort(-s[:, i])[:k]) & set(np.flatnonzero(own == i))) for i in range(img.shape[0])]
    )
    return float(i2t), float(t2i)


def test_retrieval_metrics_match_brute_force_with_five_captions_per_image():
    g = torch.Generator().manual_seed(1)
    n_img, per, d = 60, 5, 16
    img = torch.nn.functional.normalize(torch.randn(n_img, d, generator=g), dim=1)
    owner = torch.arange(n_img).repeat_interleave(per)
    txt = torch.nn.functional.normalize(img[owner] + 0.9 * torch.randn(n_img * per, d, generator=g), dim=1)
    perm = torch.randperm(len(owner), generator=g)  # captions need not be grouped by image
    txt, owner = txt[perm], owner[perm]
    m = retrieval_metrics(img, txt, owner, ks=(1, 5, 10), block_size=7)
    for k in (1, 5, 10):
        i2t, t2i = _brute_force_recall(img, txt, owner, k)
        assert m[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert m[f"text_to_image_R@{k}"] == pytest.approx(t2i)
    assert 0 < m["text_to_image_R@1"] < 1  # the case is not degenerate


def test_retrieval_metrics_image_without_caption_is_left_out_and_counted():
    m = retrieval_metrics(torch.eye(4), torch.cat([SCORES, torch.zeros(5, 1)], 1), OWNER, ks=(1,))
    assert m["images_without_captions"] == 1
    assert m["image_to_text_R@1"] == pytest.approx(1 / 3)  # same three images as the hand case


def test_retrieval_metrics_blocked_run_matches_unblocked():
    # 5 captions per image (the MSCOCO layout) in uneven blocks: the result does not depend on blocking.
    g = torch.Generator().manual_seed(2)
    img = torch.nn.functional.normalize(torch.randn(2000, 8, generator=g), dim=1)
    owner = torch.arange(2000).repeat_interleave(5)
    txt = torch.nn.functional.normalize(img[owner] + 0.3 * torch.randn(10000, 8, generator=g), dim=1)
    blocked = retrieval_metrics(img, txt, owner, block_size=777)
    whole = retrieval_metrics(img, txt, owner, block_size=10000)
    assert blocked == whole
    assert 0 < blocked["text_to_image_R@1"] < blocked["text_to_image_R@10"] < 1


@pytest.mark.parametrize(
    "img, txt, owner, match",
    [
        (torch.eye(3), torch.zeros(2, 4), [0, 1], "embeddings must be"),
        (torch.eye(3), torch.zeros(0, 3), [], "at least one"),
        (torch.eye(3), torch.zeros(2, 3), [0], "text_to_image must be"),
        (torch.eye(3), torch.zeros(2, 3), [0, 3], "must lie"),
    ],
)
def test_retrieval_metrics_bad_input(img, txt, owner, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(img, txt, torch.tensor(owner, dtype=torch.long))


# ------------------------------------------------------------------------------------------
# templates, class names and the classifier maths
# ------------------------------------------------------------------------------------------


def test_builtin_templates():
    imagenet = load_templates("imagenet")
    assert len(imagenet) == 80 and len(set(imagenet)) == 80
    assert "a photo of a {}." in imagenet and "itap of a {}." in imagenet
    short = load_templates("short")
    assert 1 < len(short) < 80 and set(short) <= set(imagenet)


def test_custom_templates_and_class_names(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# my prompts\na {} here.\n\nthe {}!\n")
    assert load_templates(str(f)) == ["a {} here.", "the {}!"]
    assert load_templates(["x {}"]) == ["x {}"]
    with pytest.raises(ValueError, match="exactly one"):
        load_templates(["no placeholder"])
    with pytest.raises(FileNotFoundError):
        load_templates("no-such-template-set")
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n\n")
    assert load_class_names(names) == ["cat", "dog"]
    js = tmp_path / "classes.json"
    js.write_text('["red circle", "blue star"]')
    assert load_class_names(js) == ["red circle", "blue star"]


def test_class_embeddings_are_renormalised_means_of_normalised_prompts():
    table = {
        "a cat.": [3.0, 0.0],  # norm 3 -> (1, 0)
        "the cat!": [0.0, 0.5],  # -> (0, 1)
        "a dog.": [1.0, 1.0],  # -> (1, 1)/sqrt2
        "the dog!": [1.0, -1.0],  # -> (1, -1)/sqrt2
    }
    seen: list[str] = []

    def encode(prompts: list[str]) -> torch.Tensor:
        seen.extend(prompts)
        return torch.tensor([table[p] for p in prompts])

    w = build_class_embeddings(encode, ["cat", "dog"], ["a {}.", "the {}!"])
    assert seen == ["a cat.", "the cat!", "a dog.", "the dog!"]
    s = 2**-0.5
    # cat: mean((1,0),(0,1)) = (.5,.5) -> (s, s); dog: mean((s,s),(s,-s)) = (s,0) -> (1, 0)
    assert torch.allclose(w, torch.tensor([[s, s], [1.0, 0.0]]), atol=1e-6)


def test_get_field_reads_dotted_paths_into_json_sidecars():
    row = {"jpg": b"...", "json": b'{"label_index": 3, "meta": {"captions": ["a", "b"]}}', "label": 1}
    assert get_field(row, "label") == 1
    assert get_field(row, "json.label_index") == 3
    assert get_field(row, "json.meta.captions") == ["a", "b"]
    assert get_field(row, "json.nope", None) is None
    with pytest.raises(KeyError, match="json.nope"):
        get_field(row, "json.nope")


# ------------------------------------------------------------------------------------------
# with a tiny random model
# ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # OpenMP threads spin-wait: on a busy 2-core runner two of them run tiny models ~20x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    from align_hf.testing import tiny_model, tiny_processor

    return tiny_model(), tiny_processor()


@pytest.fixture(scope="module")
def corpus():
    from align_hf.data.synthetic import SyntheticConfig, SyntheticCorpus

    return SyntheticCorpus(SyntheticConfig(zeroshot_per_class=1, num_retrieval=12))


def _embed_one_by_one(model, processor, texts=(), images=()):
    """Reference embeddings: one unpadded item per forward pass."""
    with torch.no_grad():
        t = [model.encode_text(**processor(text=[x], return_tensors="pt", padding=False)) for x in texts]
        i = [model.encode_image(processor(images=[x], return_tensors="pt")["pixel_values"]) for x in images]
    return (torch.cat(t) if t else None), (torch.cat(i) if i else None)


def test_zero_shot_classifier_weights_and_predictions_match_direct_computation(tiny, corpus):
    from align_hf.evaluation.zero_shot import ZeroShotClassifier, logit_scale

    model, processor = tiny
    names, templates = ["red circle", "blue star", "green square"], ["a photo of a {}.", "the {} shape."]
    clf = ZeroShotClassifier(model, processor, names, templates, batch_size=4, progress=False)
    prompts = [t.format(n) for n in names for t in templates]
    text, _ = _embed_one_by_one(model, processor, texts=prompts)
    expected = torch.nn.functional.normalize(text.view(3, 2, -1).mean(1), dim=-1)
    torch.testing.assert_close(clf.weights, expected, atol=1e-5, rtol=0)

    images = [corpus.sample("zeroshot", i).image for i in range(3)]
    _, img = _embed_one_by_one(model, processor, images=images)
    probs = (logit_scale(model) * img @ expected.T).softmax(-1)
    out = clf.predict(images + [b"not an image"], top_k=2)
    assert out[3] == []  # unreadable image: empty result in its place
    for row, preds in enumerate(out[:3]):
        top = probs[row].topk(2)
        assert [p["label"] for p in preds] == [names[j] for j in top.indices.tolist()]
        assert [p["score"] for p in preds] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert logit_scale(model) == pytest.approx(1 / model.contrastive_head.temperature.item())


def test_zero_shot_class_embeddings_are_cached_on_disk(tiny, tmp_path, monkeypatch):
    import align_hf.evaluation.zero_shot as zs

    model, processor = tiny
    first = zs.ZeroShotClassifier(model, processor, ["cat", "dog"], "short", cache_dir=tmp_path, progress=False)
    weights = first.weights
    assert len(list(tmp_path.glob("zero_shot_*.pt"))) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("class embeddings should come from the cache")

    monkeypatch.setattr(zs, "encode_texts", no_encoding)
    again = zs.ZeroShotClassifier(model, processor, ["cat", "dog"], "short", cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(again.weights, weights, rtol=0, atol=0)
    # another class list is another cache entry, not a stale hit
    other = zs.ZeroShotClassifier(model, processor, ["dog", "cat"], "short", cache_dir=tmp_path, progress=False)
    with pytest.raises(AssertionError, match="from the cache"):
        other.weights


def test_evaluate_zero_shot_matches_manual_pipeline_and_counts_bad_rows(tiny, corpus):
    from align_hf.evaluation import evaluate_zero_shot
    from align_hf.evaluation.zero_shot import build_class_embeddings

    model, processor = tiny
    # zero-shot sample i has label i % 48; the first 12 classes and two templates keep this quick
    names, templates = corpus.class_names[:12], list(corpus.zeroshot_templates[:2])
    samples = [corpus.sample("zeroshot", i) for i in range(12)]
    rows = [{"image": s.image, "json": json_bytes(s.meta)} for s in samples]
    rows.insert(3, {"image": b"\x89PNG broken", "json": json_bytes({"label_index": 0})})
    rows.insert(5, {"image": samples[0].image, "json": json_bytes({"label_index": 999})})
    rows.insert(7, {"image": samples[0].image, "json": json_bytes({})})
    m = evaluate_zero_shot(
        model, processor, rows, names, templates=templates,
        image_column="image", label_column="json.label_index", batch_size=5, progress=False,
    )
    assert m["skipped"] == 3 and m["num_samples"] == 12

    text_fn = lambda prompts: _embed_one_by_one(model, processor, texts=prompts)[0]  # noqa: E731
    weights = build_class_embeddings(text_fn, names, templates)
    _, img = _embed_one_by_one(model, processor, images=[s.image for s in samples])
    expected = classification_metrics(img @ weights.T, torch.tensor([s.meta["label_index"] for s in samples]))
    for key in ("top1", "top5", "mean_per_class_recall"):
        assert m[key] == pytest.approx(expected[key])

    # labels may also be class names
    by_name = evaluate_zero_shot(
        model, processor, [{"img": s.image, "label": s.meta["label"]} for s in samples], names,
        templates=templates, image_column="img", progress=False,
    )
    assert by_name["top1"] == pytest.approx(expected["top1"]) and by_name["skipped"] == 0


def json_bytes(obj) -> bytes:
    import json

    return json.dumps(obj).encode()


def test_evaluate_retrieval_matches_manual_pipeline(tiny, corpus):
    from align_hf.evaluation import evaluate_retrieval

    model, processor = tiny
    samples = [corpus.sample("retrieval", i) for i in range(8)]
    rows = [{"image": s.image, "json": json_bytes(s.meta)} for s in samples]
    rows.append({"image": b"garbage", "json": json_bytes({"captions": ["lost"]})})
    rows.append({"image": samples[0].image, "json": json_bytes({"captions": []})})
    m = evaluate_retrieval(
        model, processor, rows, caption_column="json.captions", ks=(1, 5), batch_size=3, progress=False
    )
    assert m["skipped"] == 2 and m["num_images"] == 8 and m["num_texts"] == 16

    captions = [c for s in samples for c in s.meta["captions"]]
    txt, img = _embed_one_by_one(model, processor, texts=captions, images=[s.image for s in samples])
    expected = retrieval_metrics(img, txt, torch.arange(8).repeat_interleave(2), ks=(1, 5))
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key


def test_evaluate_metric_modules_match_library_functions():
    from align_hf.metrics import load, metric_path

    g = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(40, 7, generator=g), torch.randint(0, 7, (40,), generator=g)
    acc = load("zero_shot_accuracy")
    got = acc.compute(predictions=logits.tolist(), references=labels.tolist())
    assert got == pytest.approx(classification_metrics(logits, labels))
    # incremental use, the way evaluate users batch things
    for lo in range(0, 40, 16):
        acc.add_batch(predictions=logits[lo : lo + 16].tolist(), references=labels[lo : lo + 16].tolist())
    assert acc.compute() == pytest.approx(classification_metrics(logits, labels))

    recall = load("retrieval_recall")
    got = recall.compute(predictions=SCORES.tolist(), references=OWNER.tolist(), image_embeds=torch.eye(3), ks=[1, 2])
    assert got == pytest.approx(retrieval_metrics(torch.eye(3), SCORES, OWNER, ks=(1, 2)))
    with pytest.raises(ValueError, match="image_embeds"):
        recall.compute(predictions=SCORES.tolist(), references=OWNER.tolist())
    with pytest.raises(ValueError, match="unknown metric"):
        metric_path("bleu")


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    from align_hf.data.synthetic import SyntheticConfig
    from align_hf.data.synthetic_files import write_synthetic_corpus

    root = tmp_path_factory.mktemp("corpus")
    config = SyntheticConfig(
        colours=("red", "blue", "green"), shapes=("circle", "square"), zeroshot_per_class=2, num_retrieval=10,
        shard_size=5,
    )
    write_synthetic_corpus(root, config, progress=False, splits=("zeroshot", "retrieval"))
    return root


def _shard_samples(folder):
    """Reference reader: every sample of every shard, decoded with PIL directly."""
    import io
    import json
    import tarfile

    from PIL import Image

    samples = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".jpg")):
            stem = name[: -len(".jpg")]
            samples.append((Image.open(io.BytesIO(members[name])).convert("RGB"), json.loads(members[stem + ".json"])))
    return samples


def test_cli_zero_shot_on_synthetic_shards_matches_reference(saved_model, tiny, corpus_dir, tmp_path, capsys):
    from align_hf.cli import main
    from align_hf.evaluation.zero_shot import build_class_embeddings

    out = tmp_path / "zs.json"
    rc = main(["eval", "zero-shot", "--model", str(saved_model), "--dataset", str(corpus_dir / "zeroshot"),
               "--no-progress", "--batch-size", "5", "--output", str(out)])
    assert rc == 0
    got = json.loads(out.read_text())
    assert "top1" in capsys.readouterr().out

    # reference: class names and templates from the corpus manifest, labels from the JSON sidecars
    model, processor = tiny
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    samples = _shard_samples(corpus_dir / "zeroshot")
    text_fn = lambda prompts: _embed_one_by_one(model, processor, texts=prompts)[0]  # noqa: E731
    weights = build_class_embeddings(text_fn, manifest["class_names"], manifest["zeroshot_templates"])
    _, img = _embed_one_by_one(model, processor, images=[im for im, _ in samples])
    expected = classification_metrics(img @ weights.T, torch.tensor([meta["label_index"] for _, meta in samples]))
    assert got["classes"] == 6 and got["num_samples"] == 12 and got["skipped"] == 0
    for key in ("top1", "top5", "mean_per_class_recall"):
        assert got[key] == pytest.approx(expected[key])


def test_cli_zero_shot_on_class_folders(saved_model, tiny, corpus_dir, tmp_path, capsys):
    from align_hf.cli import main
    from align_hf.evaluation.zero_shot import build_class_embeddings

    root = tmp_path / "classes"
    samples = _shard_samples(corpus_dir / "zeroshot")
    for i, (image, meta) in enumerate(samples):
        folder = root / meta["label"].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i}.png")
    (root / "red_circle" / "corrupt.png").write_bytes(b"\x89PNG\r\n")
    out = tmp_path / "m.json"
    assert main(["eval", "zero-shot", "--model", str(saved_model), "--dataset", str(root), "--templates", "short",
                 "--no-progress", "--output", str(out)]) == 0
    got = json.loads(out.read_text())
    names = sorted({meta["label"] for _, meta in samples})  # folder order = sorted names
    model, processor = tiny
    text_fn = lambda prompts: _embed_one_by_one(model, processor, texts=prompts)[0]  # noqa: E731
    weights = build_class_embeddings(text_fn, names, load_templates("short"))
    _, img = _embed_one_by_one(model, processor, images=[im for im, _ in samples])
    expected = classification_metrics(img @ weights.T, torch.tensor([names.index(m["label"]) for _, m in samples]))
    assert got["skipped"] == 1 and got["num_samples"] == len(samples)
    assert got["top1"] == pytest.approx(expected["top1"])
    assert got["mean_per_class_recall"] == pytest.approx(expected["mean_per_class_recall"])


def test_cli_retrieval_with_several_captions_per_image(saved_model, tiny, corpus_dir, tmp_path, capsys):
    from align_hf.cli import main

    out = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--model", str(saved_model), "--dataset", str(corpus_dir / "retrieval"),
                 "--caption-column", "meta.captions", "--ks", "1", "3", "--no-progress", "--output", str(out)]) == 0
    got = json.loads(out.read_text())
    model, processor = tiny
    samples = _shard_samples(corpus_dir / "retrieval")
    captions = [c for _, meta in samples for c in meta["captions"]]
    txt, img = _embed_one_by_one(model, processor, texts=captions, images=[im for im, _ in samples])
    owner = torch.arange(len(samples)).repeat_interleave(2)
    expected = retrieval_metrics(img, txt, owner, ks=(1, 3))
    assert got["num_texts"] == 2 * len(samples) == 20
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_cli_zero_shot_needs_class_names(saved_model, tmp_path, capsys):
    from align_hf.cli import main

    folder = tmp_path / "captioned"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "a.txt").write_text("a caption")
    assert main(["eval", "zero-shot", "--model", str(saved_model), "--dataset", str(folder), "--no-progress"]) == 2
    assert "pass --classes" in capsys.readouterr().err
