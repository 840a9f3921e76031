"""Scanning a dataset: how many pairs decode, why the others are skipped, what ALIGN's filter keeps."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from tqdm.auto import tqdm

from align_hf.data.decoding import DecodeLimits, clean_caption, decode_image, image_bytes
from align_hf.data.filtering import AlignFilter, unigrams
from align_hf.data.sources import iter_records

# Caption-length buckets (unigrams); 3 and 20 are ALIGN's bounds.
WORD_BUCKETS = ((0, 2), (3, 5), (6, 10), (11, 15), (16, 20), (21, 30), (31, 50), (51, None))


def _bucket(words: int) -> str:
    for low, high in WORD_BUCKETS:
        if high is None or words <= high:
            return f"{low}+" if high is None else f"{low}-{high}"
    raise AssertionError("unreachable")


def check_pairs(
    pairs: Iterable[dict],
    filter: AlignFilter | None = None,  # noqa: A002
    limits: DecodeLimits = DecodeLimits(),
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode every record of a ``load_pairs`` stream and count outcomes.

    Images are decoded fully (JPEGs at a reduced DCT scale, which still reads every byte), so
    ``decodable`` means the pair would reach the model. Records with a bad image are counted
    under the image's reason even if the caption is bad too.

    Returns a JSON-ready dict: ``total``, ``decodable``, ``skipped`` (reason -> count),
    ``filter`` (kept/dropped per rule over decodable pairs, or ``None``), ``caption_words``
    (bucketed and exact histograms of unigram counts), ``image_short_side`` (min/median/max).
    """
    skipped: Counter = Counter()
    word_counts: Counter = Counter()
    short_sides: list[int] = []
    total = decodable = 0
    records = iter_records(pairs)
    for record in tqdm(records, desc="checking", unit=" pairs", disable=not progress):
        if limit is not None and total >= limit:
            break
        total += 1
        if record.get("error"):
            skipped[record["error"].split(":", 1)[0]] += 1
            continue
        data = image_bytes(record.get("image"))
        decoded = decode_image(data, limits, draft_size=(32, 32))
        text, text_reason = clean_caption(record.get("text"))
        if text is not None:
            word_counts[len(unigrams(text))] += 1
        if decoded.image is None:
            skipped[decoded.reason] += 1
            continue
        if text_reason is not None:
            skipped[text_reason] += 1
            continue
        decodable += 1
        width, height = decoded.original_size
        short_sides.append(min(width, height))
        if filter is not None:
            filter.check(text, width, height, data)
    short_sides.sort()
    buckets = Counter()
    for words, count in word_counts.items():
        buckets[_bucket(words)] += count
    return {
        "total": total,
        "decodable": decodable,
        "skipped": dict(sorted(skipped.items())),
        "filter": None if filter is None else {**filter.report.as_dict(), **filter.describe()},
        "caption_words": {
            "buckets": {_bucket(low): buckets.get(_bucket(low), 0) for low, _ in WORD_BUCKETS},
            "exact": {str(k): v for k, v in sorted(word_counts.items())},
        },
        "image_short_side": (
            {"min": short_sides[0], "median": short_sides[len(short_sides) // 2], "max": short_sides[-1]}
            if short_sides else None
        ),
    }


def format_report(report: dict[str, Any]) -> str:
    """Human-readable table of a :func:`check_pairs` report."""
    total = max(report["total"], 1)
    lines = [f"total pairs      {report['total']:>10}", f"decodable        {report['decodable']:>10}  ({report['decodable'] / total:.1%})"]
    if report["skipped"]:
        lines.append("skipped:")
        lines += [f"  {reason:<24}{count:>8}" for reason, count in report["skipped"].items()]
    if report["filter"] is not None:
        f = report["filter"]
        lines.append(f"ALIGN filter: kept {f['kept']} of {f['checked']} decodable ({f['kept'] / max(f['checked'], 1):.1%})")
        lines += [f"  dropped by {rule:<28}{count:>8}" for rule, count in f["dropped"].items()]
        if not f["has_counts"]:
            lines.append("  (no frequency counts: shared-text and rare-token rules were off)")
    lines.append("caption length (unigrams):")
    peak = max(report["caption_words"]["buckets"].values() or [1]) or 1
    for bucket, count in report["caption_words"]["buckets"].items():
        lines.append(f"  {bucket:>6} {count:>8} {'#' * round(30 * count / peak)}")
    if report["image_short_side"]:
        s = report["image_short_side"]
        lines.append(f"image short side: min {s['min']}, median {s['median']}, max {s['max']} px")
    return "\n".join(lines)
