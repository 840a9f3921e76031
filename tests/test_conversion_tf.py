"""TensorFlow -> align_hf converters, checked against TensorFlow's own recorded outputs."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

import conversion_fixtures as fx
from align_hf import AlignConfig, AlignModel, AlignProcessor
from align_hf.conversion import tf_align as convert_tf_align, tf_towers as convert_tf_towers
from align_hf.conversion.tf_align import build_mapping, convert_coyo_align
from align_hf.conversion.tf_bert import convert_tf_bert
from align_hf.conversion.tf_efficientnet import convert_tf_efficientnet
from align_hf.conversion.tf_checkpoint import TFCheckpoint
from align_hf.conversion.tf_layouts import CheckpointLayout, ConversionError

TOL = 1e-4


def pixels(size: int) -> torch.Tensor:
    """The fixture images as the processor would hand them over: (N, 3, H, W), x/127.5 - 1."""
    x = torch.from_numpy(fx.images(size).astype(np.float32))
    return (x / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def text_inputs() -> dict[str, torch.Tensor]:
    e = fx.expected()
    return {k: torch.from_numpy(e[f"text_{k}"]).long() for k in ("input_ids", "attention_mask", "token_type_ids")}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def align_b0():
    torch.manual_seed(0)
    model, report = convert_coyo_align(fx.prefix("align_b0"))
    return model, report


# ----------------------------------------------------------------------------- coyo-align ALIGN
@pytest.mark.parametrize("size", [289, 288])
def test_image_embeddings_match_tensorflow(align_b0, size):
    model, _ = align_b0
    e = fx.expected()
    with torch.no_grad():
        raw = model.encode_image(pixels(size), normalize=False)
    normed = torch.nn.functional.normalize(raw, dim=-1).numpy()
    want = e[f"align_image_embeds_{size}"]
    np.testing.assert_allclose(raw.numpy(), want, atol=TOL, rtol=0)
    np.testing.assert_allclose(normed, unit(want), atol=TOL, rtol=0)
    # the images are told apart, so a tower that ignores its input could not pass
    assert np.abs(unit(want)[0] - unit(want)[1]).max() > 100 * TOL


def test_text_embeddings_and_temperature_match_tensorflow(align_b0):
    model, _ = align_b0
    e = fx.expected()
    with torch.no_grad():
        raw = model.encode_text(**text_inputs(), normalize=False).numpy()
        normed = model.encode_text(**text_inputs()).numpy()
    np.testing.assert_allclose(raw, e["align_text_embeds"], atol=TOL, rtol=0)
    np.testing.assert_allclose(normed, unit(e["align_text_embeds"]), atol=TOL, rtol=0)
    assert float(model.contrastive_head.temperature.detach()) == pytest.approx(float(e["align_temperature"]), abs=1e-7)


def test_keras_padding_matters_at_odd_sizes_only(align_b0):
    """The same weights with TF 'SAME' padding miss TF at 289 px but not at 288: the 289 px
    comparison above really checks Keras' fixed padding."""
    model, _ = align_b0
    config = AlignConfig.from_dict(model.config.to_dict())
    config.vision_config.padding = "same"
    same = AlignModel(config).eval()
    same.load_state_dict(model.state_dict())
    e = fx.expected()
    with torch.no_grad():
        at_289 = same.encode_image(pixels(289)[:1], normalize=False).numpy()
        at_288 = same.encode_image(pixels(288)[:1], normalize=False).numpy()
    assert np.abs(at_289 - e["align_image_embeds_289"][:1]).max() > 100 * TOL
    np.testing.assert_allclose(at_288, e["align_image_embeds_288"][:1], atol=TOL, rtol=0)


def test_architecture_inferred_from_the_checkpoint(align_b0):
    model, report = align_b0
    spec = fx.manifest()["align"]
    config = model.config
    assert report.efficientnet == "b0" and config.vision_config.model_name == "tf_efficientnet_b0"
    assert config.vision_config.padding == "keras" and config.vision_config.image_size == 289
    assert config.vision_config.image_projection_dim == spec["embed_dim"] == config.projection_dim
    text = config.text_config
    assert text.vocab_size == spec["vocab_size"]
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        assert getattr(text, field) == spec["bert"][field], field
    assert text.max_position_embeddings == 512 and text.type_vocab_size == 2


def test_every_variable_is_mapped_or_ignored_by_a_named_rule():
    keys = fx.manifest()["checkpoints"]["align_b0"]["keys"]
    with TFCheckpoint(fx.prefix("align_b0")) as ckpt:
        mapping, _, report = build_mapping(CheckpointLayout.of(ckpt))
    assert not mapping.unknown
    assert set(mapping.mapped) | set(mapping.ignored) == set(keys)
    assert not set(mapping.mapped) & set(mapping.ignored)
    ignored = report.ignored
    assert ignored["optimizer slot"] == sum("/.OPTIMIZER_SLOT/" in k for k in keys)
    assert ignored["loss tracker"] == 6 and ignored["object graph"] == 1
    assert ignored["BERT pooler (ALIGN embeds the [CLS] hidden state)"] == 2
    assert ignored["optimizer state"] == sum(k.startswith("optimizer/") for k in keys)
    # the image Dense is "dense", the text projection "dense_1": told apart by place, not by name
    names = {k: ckpt.full_name(k) for k in keys}
    text_kernel = next(k for k, (t, _) in mapping.mapped.items() if t == "text_projection.weight")
    assert names[text_kernel] == "dense_1/kernel"


def _meta_shapes(config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = AlignModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_unknown_missing_and_misshaped_variables_are_errors_naming_them():
    with TFCheckpoint(fx.prefix("align_b0")) as ckpt:
        base = CheckpointLayout.of(ckpt)
    extra = CheckpointLayout(base.prefix, {**base.shapes, "image_encoder/mystery/.ATTRIBUTES/VARIABLE_VALUE": (3,)},
                             {**base.names, "image_encoder/mystery/.ATTRIBUTES/VARIABLE_VALUE": "mystery"},
                             base.slots, True)
    mapping, config, _ = build_mapping(extra)
    with pytest.raises(ConversionError, match="match no rule.*image_encoder/mystery"):
        mapping.check(extra.shapes, _meta_shapes(config))

    drop = next(k for k, n in base.names.items() if n == "block2b_se_reduce/bias")
    missing = CheckpointLayout(base.prefix, {k: v for k, v in base.shapes.items() if k != drop}, base.names,
                               base.slots, True)
    mapping, config, _ = build_mapping(missing)
    with pytest.raises(ConversionError, match=r"have no checkpoint variable.*blocks\.1\.1\.se\.conv_reduce\.bias"):
        mapping.check(missing.shapes, _meta_shapes(config))

    mapping, config, _ = build_mapping(base)
    shapes = _meta_shapes(config)
    shapes["vision_model.backbone.blocks.3.0.conv_dw.weight"] = (1, 1, 1, 1)
    with pytest.raises(ConversionError, match=r"shape mismatches.*blocks\.3\.0\.conv_dw\.weight"):
        mapping.check(base.shapes, shapes)


def test_reference_b7_layout_converts_to_align_base():
    """The key layout of a real coyo-align B7/BERT-base checkpoint maps onto align-base, tensor for tensor."""
    with gzip.open(fx.FIXTURES / "coyo_align_b7_layout.json.gz") as fh:
        ref = json.load(fh)
    layout = CheckpointLayout(
        "coyo-align-b7",
        {key: tuple(shape) for key, shape, _, _ in ref["keys"]},
        {key: name or key for key, _, _, name in ref["keys"]},
        set(),
        True,
    )
    mapping, config, report = build_mapping(layout)
    assert report.efficientnet == "b7" and not report.image_projection and report.projection_dim == 640
    preset = AlignConfig.from_preset("align-base")
    assert config.vision_config.model_name == preset.vision_config.model_name
    assert config.vision_config.image_projection_dim is None and config.projection_dim == preset.projection_dim
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        assert getattr(config.text_config, field) == getattr(preset.text_config, field), field
    mapping.check(layout.shapes, _meta_shapes(config))  # every tensor filled, every shape right
    assert len(mapping.mapped) == 1230 and set(mapping.ignored_summary()) == {
        "BERT pooler (ALIGN embeds the [CLS] hidden state)", "loss tracker", "object graph"}


@pytest.mark.parametrize(
    "convert, name, message",
    [
        (convert_coyo_align, "bert_tf1", "not a coyo-align ALIGN checkpoint"),
        (convert_coyo_align, "dtypes", "not a coyo-align ALIGN checkpoint"),
        (convert_tf_efficientnet, "bert_tf1", "no EfficientNet variables"),
        (convert_tf_bert, "efficientnet_tf1", "no BERT variables"),
    ],
)
def test_wrong_kind_of_checkpoint_is_refused(convert, name, message):
    with pytest.raises(ConversionError, match=message):
        convert(fx.prefix(name))


def test_cli_writes_a_hub_ready_folder(tmp_path, monkeypatch):
    uploads = []
    monkeypatch.setattr("align_hf.hub.upload_folder_to_hub", lambda folder, repo, **kw: uploads.append((folder, repo)))
    out = tmp_path / "align-b0"
    argv = ["--checkpoint", str(fx.prefix("align_b0").parent), "--vocab", str(fx.FIXTURES / "vocab.txt"),
            "--output-dir", str(out), "--push-to-hub", "someone/align-b0"]
    assert convert_tf_align.main(argv) == 0
    assert uploads == [(str(out), "someone/align-b0")]
    for name in ("config.json", "model.safetensors", "processor_config.json", "README.md"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "EfficientNet-B0" in card and "optimizer slot" in card

    processor = AlignProcessor.from_pretrained(out)
    ip = processor.image_processor
    assert ip.size["height"] == ip.size["width"] == 346 and ip.crop_size["height"] == ip.crop_size["width"] == 289
    assert ip.rescale_factor == pytest.approx(1 / 127.5) and ip.rescale_offset and not ip.do_normalize
    enc = processor(text=fx.manifest()["align"]["texts"], return_tensors="pt")
    recorded = text_inputs()
    n = recorded["input_ids"].shape[1]
    assert enc["input_ids"].shape[1] == 64  # ALIGN's text length
    assert torch.equal(enc["input_ids"][:, :n], recorded["input_ids"]) and not enc["input_ids"][:, n:].any()

    model = AlignModel.from_pretrained(out).eval()
    with torch.no_grad():
        text = model.encode_text(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).numpy()
        image = model.encode_image(pixels(289)[:1]).numpy()
    np.testing.assert_allclose(text, unit(fx.expected()["align_text_embeds"]), atol=TOL, rtol=0)
    np.testing.assert_allclose(image, unit(fx.expected()["align_image_embeds_289"][:1]), atol=TOL, rtol=0)


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    argv = ["--checkpoint", str(fx.prefix("bert_tf1")), "--output-dir", str(tmp_path / "x")]
    assert convert_tf_align.main(argv) == 1
    assert "not a coyo-align ALIGN checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()



def test_align_hf_convert_hands_over_to_the_converter(tmp_path, capsys):
    import subprocess
    import sys

    from align_hf.cli import main as align_hf_main

    shown = subprocess.run([sys.executable, "-m", "align_hf.cli", "convert", "tf-align", "--help"],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "align-hf convert tf-align" in shown.stdout and "--checkpoint" in shown.stdout
    # Same arguments as test_google_bert_matches_tensorflow / test_cli_reports_errors_without_traceback.
    out = tmp_path / "text-tower"
    argv = ["convert", "tf-bert", "--checkpoint", str(fx.prefix("bert_tf1")), "--output-dir", str(out),
            "--vocab", str(fx.FIXTURES / "vocab.txt")]
    assert align_hf_main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    bad = ["convert", "tf-align", "--checkpoint", str(fx.prefix("bert_tf1")), "--output-dir", str(tmp_path / "x")]
    assert align_hf_main(bad) == 1
    assert "not a coyo-align ALIGN checkpoint" in capsys.readouterr().err

# ----------------------------------------------------------------------------- TF1 towers
@pytest.fixture(scope="module")
def tpu_b0():
    return convert_tf_efficientnet(fx.prefix("efficientnet_tf1"))


@pytest.mark.parametrize("size", [289, 288])
def test_tensorflow_tpu_efficientnet_matches_tf_same_padding(tpu_b0, size):
    model, notes = tpu_b0
    assert model.config.model_name == "tf_efficientnet_b0" and model.config.padding == "same"
    with torch.no_grad():
        pooled = model(pixels(size)).pooler_output.numpy()
    np.testing.assert_allclose(pooled, fx.expected()[f"tpu_effnet_pooled_{size}"], atol=TOL, rtol=0)


def test_moving_average_shadows_are_preferred(tpu_b0):
    _, notes = tpu_b0
    assert any("304 from moving-average shadows" in n for n in notes)
    raw, raw_notes = convert_tf_efficientnet(fx.prefix("efficientnet_tf1"), use_ema=False)
    assert any("(0 from moving-average shadows)" in n for n in raw_notes)
    with torch.no_grad():
        pooled = raw(pixels(288)[:1]).pooler_output.numpy()
    # the fixture's raw weights are zeros, unlike the shadows TensorFlow computed with
    assert np.abs(pooled - fx.expected()["tpu_effnet_pooled_288"][:1]).max() > 100 * TOL


def test_google_bert_matches_tensorflow(tmp_path):
    model, notes = convert_tf_bert(fx.prefix("bert_tf1"))
    assert model.config.num_attention_heads == 2 and model.config.num_hidden_layers == 2
    inputs = text_inputs()
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state.numpy()
    mask = inputs["attention_mask"].numpy().astype(bool)
    want = fx.expected()["bert_last_hidden_state"]
    np.testing.assert_allclose(hidden[mask], want[mask], atol=TOL, rtol=0)
    bad_config = tmp_path / "bert_config.json"
    bad_config.write_text(json.dumps({"hidden_size": 256, "num_attention_heads": 4}))
    with pytest.raises(ConversionError, match="hidden_size=256"):
        convert_tf_bert(fx.prefix("bert_tf1"), bert_config=bad_config)
    good_config = tmp_path / "good.json"
    good_config.write_text(json.dumps({"hidden_size": 128, "num_attention_heads": 4}))
    four_heads, _ = convert_tf_bert(fx.prefix("bert_tf1"), bert_config=good_config)
    assert four_heads.config.num_attention_heads == 4


def test_towers_cli_starts_an_align_model(tmp_path):
    out = tmp_path / "init"
    argv = ["--efficientnet", str(fx.prefix("efficientnet_tf1")), "--bert", str(fx.prefix("bert_tf1")),
            "--vocab", str(fx.FIXTURES / "vocab.txt"), "--projection-dim", "96", "--output-dir", str(out)]
    assert convert_tf_towers.main(argv) == 0
    model = AlignModel.from_pretrained(out).eval()
    assert model.config.projection_dim == 96 and model.config.vision_config.image_projection_dim == 96
    assert float(model.contrastive_head.temperature.detach()) == 1.0
    with torch.no_grad():
        pooled = model.vision_model(pixels(288)[:1]).pooler_output
        cls = model.text_model(**text_inputs()).pooler_output.numpy()
        embeds = model.image_projection(pooled)
    np.testing.assert_allclose(pooled.numpy(), fx.expected()["tpu_effnet_pooled_288"][:1], atol=TOL, rtol=0)
    np.testing.assert_allclose(cls, fx.expected()["bert_last_hidden_state"][:, 0], atol=TOL, rtol=0)
    assert embeds.shape == (1, 96) and torch.isfinite(embeds).all()
    assert AlignProcessor.from_pretrained(out).image_processor.crop_size["height"] == 289


def test_efficientnet_structure_that_is_no_variant_is_refused():
    with TFCheckpoint(fx.prefix("align_b0")) as ckpt:
        base = CheckpointLayout.of(ckpt)
    kept = {k: s for k, s in base.shapes.items() if not base.names[k].startswith("block6d_")}  # B0 minus a block
    layout = CheckpointLayout(base.prefix, kept, base.names, base.slots, True)
    with pytest.raises(ConversionError, match=r"matches none of .*15 blocks"):
        build_mapping(layout)


def test_keras_application_head_names_are_recognised():
    from align_hf.conversion.efficientnet_tf import parse_keras

    parsed, bad = parse_keras({"a": "top_conv/kernel", "b": "predictions/bias", "c": "block3b_se_expand/bias",
                               "d": "normalization/mean"})
    layers = {v.key: (v.layer, v.block) for v in parsed}
    assert layers == {"a": ("head_conv", None), "b": ("head_dense", None), "c": ("se_expand", (2, 1))}
    assert bad == ["d"]  # Keras' input Normalization would change preprocessing: never silently dropped
