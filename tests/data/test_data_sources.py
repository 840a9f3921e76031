"""Every supported format loads through load_pairs and gives back the same pairs."""

import csv
import json
import os
import tarfile

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from align_hf.data import ImageTextPairs, load_pairs
from align_hf.data.decoding import clean_caption, decode_image, image_bytes
from align_hf.data.sources import expand_braces, is_pairs
from data_samples import bad_samples, good_samples, noise_samples, write_samples

SAMPLES = good_samples(6)


def decoded_pairs(pairs) -> dict[str, np.ndarray]:
    """caption -> decoded pixels, for comparing sources that may not keep keys."""
    out = {}
    for record in pairs:
        text, _ = clean_caption(record["text"])
        out[text] = np.asarray(decode_image(image_bytes(record["image"])).image)
    return out


def expected_pairs() -> dict[str, np.ndarray]:
    return {s["text"]: np.asarray(decode_image(s["data"]).image) for s in SAMPLES}


def assert_same_pairs(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for text, pixels in expected.items():
        np.testing.assert_array_equal(got[text], pixels)


def test_webdataset_shards_glob_brace_and_directory(tmp_path):
    paths = write_samples(str(tmp_path / "wds"), SAMPLES, per_shard=2)
    assert len(paths) == 3
    for source in (str(tmp_path / "wds" / "*.tar"), str(tmp_path / "wds" / "shard-{00000..00002}.tar"), str(tmp_path / "wds"), paths):
        pairs = load_pairs(source)
        assert pairs.n_shards == 3
        assert_same_pairs(decoded_pairs(pairs), expected_pairs())
    keys = [r["key"] for r in load_pairs(paths)]
    assert keys == [s["key"] for s in SAMPLES]


def test_webdataset_json_caption_and_mixed_extensions(tmp_path):
    # datasets' own webdataset builder rejects a shard mixing .jpg and .png; ours takes both,
    # and falls back to the caption in the .json sidecar as img2dataset writes it.
    shard = tmp_path / "mixed.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in [
            ("a.jpg", bad_samples()[0]["data"]), ("a.txt", b"caption a"),
            ("b.png", SAMPLES[0]["data"]), ("b.json", json.dumps({"caption": "caption b", "url": "x"}).encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    records = list(load_pairs(str(shard)))
    assert [(r["key"], clean_caption(r["text"])[0]) for r in records] == [("a", "caption a"), ("b", "caption b")]
    assert json.loads(records[1]["meta"])["url"] == "x"
    assert all(decode_image(image_bytes(r["image"])).image is not None for r in records)


def test_truncated_tar_keeps_earlier_samples_and_reports_error(tmp_path):
    samples = noise_samples(6)
    (path,) = write_samples(str(tmp_path), samples, per_shard=len(samples))
    data = open(path, "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])  # inside the data of the fourth image
    records = list(load_pairs(str(cut)))
    assert records[-1]["error"].startswith("corrupt_shard")
    good = [r for r in records if r["error"] is None and decode_image(image_bytes(r["image"])).image is not None]
    assert [r["key"] for r in good] == [s["key"] for s in samples[:3]]
    dataset = ImageTextPairs(load_pairs(str(cut)))
    kept = list(dataset)
    assert len(kept) == len(good)
    assert dataset.stats.skipped["corrupt_shard"] == 1


def write_folder(root, metadata: str) -> None:
    os.makedirs(root / "sub", exist_ok=True)
    rows = []
    for i, s in enumerate(SAMPLES):
        name = f"sub/{s['key']}.png" if i % 2 else f"{s['key']}.png"
        (root / name).write_bytes(s["data"])
        rows.append({"file_name": name, "caption": s["text"]})
    if metadata == "jsonl":
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif metadata == "csv":
        with open(root / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["file_name", "caption"])
            writer.writeheader()
            writer.writerows(rows)
    else:  # a caption file beside each image
        for row in rows:
            (root / row["file_name"].replace(".png", ".txt")).write_text(row["caption"])


@pytest.mark.parametrize("metadata", ["jsonl", "csv", "sidecar"])
def test_image_folder(tmp_path, metadata):
    write_folder(tmp_path, metadata)
    pairs = load_pairs(str(tmp_path))
    assert_same_pairs(decoded_pairs(pairs), expected_pairs())


def test_image_folder_missing_file_is_counted_not_fatal(tmp_path):
    write_folder(tmp_path, "jsonl")
    os.remove(tmp_path / f"{SAMPLES[0]['key']}.png")
    dataset = ImageTextPairs(load_pairs(str(tmp_path)))
    assert len(list(dataset)) == len(SAMPLES) - 1
    assert dict(dataset.stats.skipped) == {"missing_image": 1}


def test_parquet_bytes_structs_and_paths(tmp_path):
    texts = [s["text"] for s in SAMPLES]
    pq.write_table(pa.table({"jpg": [s["data"] for s in SAMPLES], "caption": texts}), tmp_path / "bytes.parquet")
    assert_same_pairs(decoded_pairs(load_pairs(str(tmp_path / "bytes.parquet"))), expected_pairs())

    # datasets' Image feature stores {"bytes", "path"} structs.
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": s["data"], "path": None} for s in SAMPLES], "text": texts}, features=features)
    ds.to_parquet(str(tmp_path / "structs" / "part-0.parquet"))
    assert_same_pairs(decoded_pairs(load_pairs(str(tmp_path / "structs"))), expected_pairs())

    # Relative paths resolve against the parquet file's directory.
    os.makedirs(tmp_path / "paths" / "img")
    for s in SAMPLES:
        (tmp_path / "paths" / "img" / f"{s['key']}.png").write_bytes(s["data"])
    pq.write_table(pa.table({"image_path": [f"img/{s['key']}.png" for s in SAMPLES], "text": texts}), tmp_path / "paths" / "p.parquet")
    assert_same_pairs(decoded_pairs(load_pairs(str(tmp_path / "paths" / "*.parquet"))), expected_pairs())


def test_datasets_objects_and_saved_directory(tmp_path):
    features = datasets.Features({"picture": datasets.Image(), "alt": datasets.Value("string"), "id": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict(
        {"picture": [{"bytes": s["data"], "path": None} for s in SAMPLES], "alt": [s["text"] for s in SAMPLES], "id": list(range(len(SAMPLES)))},
        features=features,
    )
    # The Image-typed column is found without being named; decoding stays ours.
    pairs = load_pairs(ds, text_column="alt")
    assert pairs.n_shards == len(SAMPLES)
    assert sorted(r["key"] for r in pairs) == [str(i) for i in range(len(SAMPLES))]
    assert_same_pairs(decoded_pairs(pairs), expected_pairs())
    assert_same_pairs(decoded_pairs(load_pairs(ds.to_iterable_dataset(), text_column="alt")), expected_pairs())
    ds.save_to_disk(str(tmp_path / "saved"))
    assert_same_pairs(decoded_pairs(load_pairs(str(tmp_path / "saved"), text_column="alt")), expected_pairs())
    assert is_pairs(pairs) and load_pairs(pairs) is pairs


def test_helpful_errors(tmp_path):
    ds = datasets.Dataset.from_dict({"picture": [b"x"], "words": ["y"]})
    with pytest.raises(ValueError, match="image_column"):
        load_pairs(ds)
    with pytest.raises(ValueError, match=r"no text column found among \['picture', 'words'\]; pass text_column="):
        load_pairs(ds, image_column="picture")
    assert next(iter(load_pairs(ds, image_column="picture", text_column="words")))["text"] == "y"
    with pytest.raises(FileNotFoundError):
        load_pairs(str(tmp_path / "nothing-*.tar"))
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(ValueError, match="unrecognised data layout"):
        load_pairs(str(tmp_path))


def test_expand_braces():
    assert expand_braces("s-{08..11}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar", "s-11.tar"]
    assert expand_braces("{a,b}/x-{1..2}") == ["a/x-1", "a/x-2", "b/x-1", "b/x-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]
