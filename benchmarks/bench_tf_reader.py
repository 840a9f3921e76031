"""Speed of the pure-Python TensorFlow checkpoint reader, side by side with simple references.

    python benchmarks/bench_tf_reader.py [--mb 64]

Rows: CRC32C of the chunked numpy code against a byte-at-a-time table loop (the textbook
algorithm); reading every tensor of the committed ALIGN-B0 fixture (48 MB with Adam slots) with and
without CRC checks against a plain read of its data file; the whole coyo-align conversion.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="buffer size for the CRC rows")
    args = parser.parse_args()

    import conversion_fixtures as fx
    from align_hf.conversion import checksum
    from align_hf.conversion.tf_align import convert_coyo_align
    from align_hf.conversion.tf_checkpoint import TFCheckpoint

    rows = []
    data = np.random.default_rng(0).integers(0, 256, args.mb << 20, dtype=np.uint8)
    small = data[: 1 << 20].tobytes()
    t_numpy = best_of(lambda: checksum._fallback_extend(0, data))
    t_loop = best_of(lambda: checksum._python_update(0xFFFFFFFF, small), repeats=1)
    numpy_mbs, loop_mbs = args.mb / t_numpy, 1 / t_loop
    rows.append(("CRC32C, chunked numpy", f"{numpy_mbs:.0f} MB/s", "byte loop", f"{loop_mbs:.1f} MB/s",
                 f"{numpy_mbs / loop_mbs:.0f}x"))

    prefix = fx.prefix("align_b0")
    data_file = Path(str(prefix) + ".data-00000-of-00001")
    size_mb = data_file.stat().st_size / 2**20

    def read_all(verify: bool):
        with TFCheckpoint(prefix, verify=verify) as ckpt:
            for key in ckpt.keys():
                np.asarray(ckpt.get_tensor(key)).sum() if ckpt.entry(key).dtype != "string" else ckpt.get_tensor(key)

    def plain_read():
        np.frombuffer(data_file.read_bytes(), dtype=np.uint8).sum()

    t_plain = best_of(plain_read)
    t_noverify = best_of(lambda: read_all(False))
    t_verify = best_of(lambda: read_all(True))
    rows.append((f"read all {size_mb:.0f} MB, CRC checked", f"{t_verify * 1e3:.0f} ms", "file read + sum",
                 f"{t_plain * 1e3:.0f} ms", f"{t_verify / t_plain:.1f}x"))
    rows.append((f"read all {size_mb:.0f} MB, unchecked", f"{t_noverify * 1e3:.0f} ms", "file read + sum",
                 f"{t_plain * 1e3:.0f} ms", f"{t_noverify / t_plain:.1f}x"))
    t_convert = best_of(lambda: convert_coyo_align(prefix), repeats=1)
    rows.append(("convert ALIGN-B0 fixture", f"{t_convert:.2f} s", "", "", ""))

    header = ("what", "ours", "reference", "reference time", "ratio")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    print(f"CRC32C backend: {checksum.BACKEND}")
    for row in [header] + rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
