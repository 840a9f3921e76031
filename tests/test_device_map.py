"""``from_pretrained(device_map=...)``: ``_no_split_modules`` keeps residual blocks, BERT layers and
the contrastive head whole, and a model placed by "auto" (on CPU, and with ``max_memory`` forcing
part of it to be offloaded to disk, its weights then on the meta device until used) gives the
outputs of a plain load, for align_hf folders and converted transformers-format ones."""

from __future__ import annotations

import pytest
import torch
import transformers
from accelerate.utils import compute_module_sizes
from hf_reference import healthy_hf_align

from align_hf import AlignModel
from align_hf.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def ours_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("device_map") / "ours"
    tiny_model(seed=4).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A transformers-format ALIGN folder (converted on load by align_hf)."""
    folder = tmp_path_factory.mktemp("device_map") / "hf"
    healthy_hf_align(seed=5).save_pretrained(folder)
    image_processor = transformers.EfficientNetImageProcessor(
        size={"height": 77, "width": 77}, crop_size={"height": 65, "width": 65}, rescale_factor=1 / 127.5,
        rescale_offset=True, do_normalize=False, include_top=False,
    )
    transformers.AlignProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer()).save_pretrained(folder)
    return folder


def _outputs(model: AlignModel, image_size: int, vocab_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, image_size, image_size, generator=g)
    ids = torch.randint(5, vocab_size, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    return {k: out[k] for k in ("loss", "logits_per_image", "image_embeds", "text_embeds", "temperature")}


def _inside_no_split_module(model: AlignModel, device_map: dict[str, str]) -> list[str]:
    """Entries of ``device_map`` that place a part of a module that must stay whole."""
    whole = {name for name, m in model.named_modules() if type(m).__name__ in model._no_split_modules}
    return [key for key in device_map if any(key.startswith(w + ".") for w in whole)]


def test_no_split_modules_cover_every_residual_block():
    model = tiny_model()
    names = set(model._no_split_modules)
    assert {"BertLayer", "AlignContrastiveHead"} <= names  # BERT's own list is collected from the text tower
    residual = {type(m).__name__ for m in model.modules() if hasattr(m, "has_skip")}
    assert residual and residual <= names


@pytest.mark.parametrize("layout", ["align_hf", "transformers"])
def test_device_map_auto_and_disk_offload_match_a_plain_load(layout, ours_folder, hf_folder, tmp_path):
    folder = ours_folder if layout == "align_hf" else hf_folder
    plain = AlignModel.from_pretrained(folder).eval()
    image_size = plain.config.vision_config.image_size
    vocab = plain.config.text_config.vocab_size
    want = _outputs(plain, image_size, vocab)

    auto = AlignModel.from_pretrained(folder, device_map="auto").eval()
    assert {p.device.type for p in auto.parameters()} == {"cpu"}
    for key, value in _outputs(auto, image_size, vocab).items():
        torch.testing.assert_close(value, want[key], atol=1e-6, rtol=0, msg=key)

    # 90% of the model fits in "CPU memory": the rest is offloaded to disk, block by block.
    budget = int(0.9 * compute_module_sizes(plain)[""])
    offloaded = AlignModel.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": budget}, offload_folder=str(tmp_path / "offload")
    ).eval()
    placed = offloaded.hf_device_map
    assert set(placed.values()) == {"cpu", "disk"}, placed
    assert not _inside_no_split_module(offloaded, placed), placed
    assert any(p.device.type == "meta" for p in offloaded.parameters())  # loaded from disk on use
    for key, value in _outputs(offloaded, image_size, vocab).items():
        torch.testing.assert_close(value, want[key], atol=1e-6, rtol=0, msg=key)


def test_an_explicit_map_may_offload_the_contrastive_head(ours_folder, tmp_path):
    """The head's temperature is read outside its forward (logits, the output's temperature)."""
    plain = AlignModel.from_pretrained(ours_folder).eval()
    device_map = {"text_model": "cpu", "vision_model": "disk", "image_projection": "cpu", "text_projection": "disk",
                  "contrastive_head": "disk"}
    model = AlignModel.from_pretrained(ours_folder, device_map=device_map, offload_folder=str(tmp_path)).eval()
    assert model.contrastive_head.temperature.device.type == "meta"
    want = _outputs(plain, 64, plain.config.text_config.vocab_size)
    for key, value in _outputs(model, 64, plain.config.text_config.vocab_size).items():
        torch.testing.assert_close(value, want[key], atol=1e-6, rtol=0, msg=key)
    assert model.contrastive_head.temperature.device.type == "meta"  # offloaded again after use
