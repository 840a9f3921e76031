"""`align-hf data synth | check | count` through the package's CLI entry point."""

import json
from collections import Counter

from align_hf.cli import main
from align_hf.data import FrequencyCounts, load_manifest
from align_hf.data.filtering import unigrams
from data_samples import bad_samples, write_samples


def test_synth_writes_a_loadable_corpus(tmp_path, capsys):
    out = tmp_path / "corpus"
    code = main(["data", "synth", "--output", str(out), "--num-train", "25", "--zeroshot-per-class", "1",
                 "--num-retrieval", "6", "--shard-size", "10", "--image-size", "32", "--workers", "1", "--no-progress"])
    assert code == 0
    manifest = load_manifest(out)
    assert manifest["config"]["image_size"] == 32
    assert [len(manifest["splits"][s]["shards"]) for s in ("train", "zeroshot", "retrieval")] == [3, 5, 1]
    printed = capsys.readouterr().out
    assert "unseen in training" in printed and "manifest.json" in printed


def test_synth_config_overrides_and_rejects_bad_ones(tmp_path):
    import pytest

    out = tmp_path / "corpus"
    common = ["data", "synth", "--num-train", "10", "--zeroshot-per-class", "1", "--num-retrieval", "2",
              "--workers", "1", "--no-progress", "--splits", "train"]
    assert main(common + ["--output", str(out), "--config", '{"position_in_caption": 0.3, "background_in_caption": 0.1}']) == 0
    config = load_manifest(out)["config"]
    assert config["position_in_caption"] == 0.3 and config["background_in_caption"] == 0.1
    with pytest.raises(SystemExit, match="--config"):
        main(common + ["--output", str(tmp_path / "bad"), "--config", '{"no_such_field": 1}'])
    with pytest.raises(SystemExit, match="--config"):
        main(common + ["--output", str(tmp_path / "bad"), "--config", "[1, 2]"])


def test_check_reports_skips_filter_and_lengths(tmp_path, capsys):
    write_samples(str(tmp_path / "wds"), bad_samples(), per_shard=4)
    report_path = tmp_path / "report.json"
    assert main(["data", "check", str(tmp_path / "wds"), "--json", str(report_path), "--no-progress", "--save-counts", str(tmp_path / "c.json")]) == 0
    report = json.loads(report_path.read_text())
    expected = Counter(s["expect"] for s in bad_samples() if s["expect"] is not None)
    kept = sum(s["expect"] is None for s in bad_samples())
    assert report["total"] == len(bad_samples())
    assert report["decodable"] == kept
    assert report["skipped"] == dict(expected)
    # Paper thresholds: every test image is under 200 px, so all decodable pairs are dropped for size.
    assert report["filter"]["checked"] == kept and report["filter"]["kept"] == 0
    assert report["filter"]["dropped"]["image_too_small"] == kept
    non_empty = [s["text"] for s in bad_samples() if s["text"].strip()]
    assert sum(report["caption_words"]["buckets"].values()) == len(non_empty)
    assert report["caption_words"]["exact"] == {str(k): v for k, v in sorted(Counter(len(unigrams(t)) for t in non_empty).items())}
    printed = capsys.readouterr().out
    assert "too_many_pixels" in printed and "ALIGN filter" in printed
    assert FrequencyCounts.load(tmp_path / "c.json").num_texts == len(non_empty)

    # Looser thresholds from the command line change the outcome.
    main(["data", "check", str(tmp_path / "wds"), "--json", str(report_path), "--no-progress", "--filter", "small", "--image-size", "16", "--min-token-count", "1"])
    assert json.loads(report_path.read_text())["filter"]["kept"] > 0


def test_count_command(tmp_path, capsys):
    write_samples(str(tmp_path / "wds"), bad_samples(), per_shard=100)
    assert main(["data", "count", str(tmp_path / "wds"), "--output", str(tmp_path / "counts.json"), "--count-images", "--no-progress"]) == 0
    counts = FrequencyCounts.load(tmp_path / "counts.json")
    assert counts.counted_images and counts.num_texts == 10 and counts.token_counts["png"] == 4
    assert "distinct unigrams" in capsys.readouterr().out


def test_count_store_command_feeds_check(tmp_path, capsys):
    from align_hf.data.count_store import CountStore
    from data_samples import good_samples

    samples = good_samples(24, size=(40, 40))
    for s in samples[:12]:
        s["text"] = "the same boilerplate caption"
    write_samples(str(tmp_path / "wds"), samples + bad_samples(), per_shard=5)
    store_dir = tmp_path / "store"
    assert main(["data", "count", str(tmp_path / "wds"), "--output", str(store_dir), "--engine", "local", "--partitions", "4",
                 "--count-images", "--filter", "small", "--image-size", "16", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "distinct bigrams" in printed and "pairs/s" in printed and "filter index (small)" in printed
    store = CountStore(store_dir)
    assert store.num_texts == len(samples) + 10 and store.counted_images and store.skipped == {"empty_caption": 1}
    assert any((store_dir / "filter_index").rglob("*.npy"))  # the small preset's arrays, prebuilt

    # `data check` with the store decides exactly as with its own in-memory counting pass.
    flags = ["--no-progress", "--filter", "small", "--image-size", "16"]
    main(["data", "check", str(tmp_path / "wds"), "--json", str(tmp_path / "a.json")] + flags)
    main(["data", "check", str(tmp_path / "wds"), "--json", str(tmp_path / "b.json"), "--counts", str(store_dir)] + flags)
    memory, stored = (json.loads((tmp_path / name).read_text())["filter"] for name in ("a.json", "b.json"))
    assert stored["dropped"] == memory["dropped"] and stored["kept"] == memory["kept"]
    assert memory["dropped"]["text_shared_by_many_images"] == 12
    import pytest

    with pytest.raises(SystemExit, match="--limit"):
        main(["data", "count", str(tmp_path / "wds"), "--output", str(tmp_path / "s2"), "--limit", "3", "--engine", "local"])
