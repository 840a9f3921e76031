"""ALIGN's claim in miniature: scale and simple frequency filtering make noisy alt-text usable.

Trains the quickstart recipe (tiny preset, synthetic corpus) at several shares of noisy captions,
with and without ALIGN's frequency filter, and prints held-out zero-shot and retrieval numbers
side by side. Every run uses the same images, seed and number of steps; only the captions (and
what the filter drops) change.

    python benchmarks/noise_robustness.py [--noise 0 0.2 0.5] [--steps 600] [--output-dir outputs/noise]

Six runs of the default recipe take about six times the quickstart's training time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from align_hf.training.quickstart import QuickstartRecipe, corpus_config, ensure_corpus, headline, train_on_corpus  # noqa: E402


def main() -> None:
    # One thread, as the quickstart trains (align-hf quickstart --threads 1): the same speed on an
    # idle and on a busy machine, where two spinning OpenMP threads were up to 10x slower.
    import torch

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    recipe = QuickstartRecipe()
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2, 0.5], help="shares of noisy captions")
    parser.add_argument("--filters", nargs="+", default=["none", "small"], choices=["none", "small", "paper"],
                        help="filter settings to compare (small: ALIGN's rules sized for this corpus)")
    parser.add_argument("--steps", type=int, default=recipe.steps)
    parser.add_argument("--num-train", type=int, default=recipe.num_train)
    parser.add_argument("--seed", type=int, default=recipe.seed)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output-dir", default="outputs/noise_robustness")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args()

    rows = []
    for noise in args.noise:
        corpus = os.path.join(args.output_dir, f"corpus_noise{noise:g}")
        base = dataclasses.replace(recipe, steps=args.steps, num_train=args.num_train, seed=args.seed)
        ensure_corpus(corpus, corpus_config(base, noise), args.workers, args.progress)
        for kind in args.filters:
            run_recipe = dataclasses.replace(base, filter=kind)
            start = time.perf_counter()
            trainer, metrics, train_seconds = train_on_corpus(
                corpus, os.path.join(args.output_dir, f"run_noise{noise:g}_{kind}"), run_recipe, progress=args.progress
            )
            stats = trainer.data_stats() or trainer.train_dataset.stats  # pre-decoded data: its one pass
            result = headline(metrics, train_seconds)
            rows.append({"noise": noise, "filter": kind, "kept": stats.kept, "read": stats.total,
                         "filtered": dict(stats.filtered), **result, "wall_seconds": time.perf_counter() - start})
            print(f"noise {noise:.0%} filter {kind}: zero-shot {result['zero_shot_top1']:.3f}, "
                  f"unseen {result['zero_shot_top1_unseen_combinations']:.3f}, "
                  f"t->i R@1 {result['text_to_image_recall@1']:.3f} ({train_seconds:.0f} s)", flush=True)

    header = "| noisy captions | ALIGN filter | pairs kept | zero-shot top-1 | unseen combos top-1 | t->i R@1 | i->t R@1 |"
    print("\n" + header + "\n|" + "---|" * 7)
    for r in rows:
        kept = f"{r['kept'] / max(r['read'], 1):.0%}"
        print(f"| {r['noise']:.0%} | {r['filter']} | {kept} | {r['zero_shot_top1']:.1%} | "
              f"{r['zero_shot_top1_unseen_combinations']:.1%} | {r['text_to_image_recall@1']:.1%} | {r['image_to_text_recall@1']:.1%} |")
    chance = rows[0]["zero_shot_chance"] if rows else float("nan")
    print(f"\nchance level of zero-shot top-1: {chance:.1%}; {args.steps} steps per run")
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
