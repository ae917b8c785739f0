"""Benchmark: the whole H1 pipeline under the null (camstat.nullsim.null_pipeline).

Issue 10 asks for 10,000 images x 7 metrics x 200 repeats at 32x32 on 2 cores
in minutes. Synthetic maps (class template + noise, clipped to [0, 1]), 10
classes, accuracy 0.85. Run from the repository root:

    OMP_NUM_THREADS=1 python studies/benchmarks/null_pipeline_speed.py --repeats 200

``--repeats 10`` gives the per-repeat time quickly; the total is linear in
the repeats (the fixed part, reference-free metrics and the tests, is
printed separately as the time of one repeat minus the per-repeat slope).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from camstat import nullsim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cls = rng.integers(0, args.classes, args.n)
    correct = rng.random(args.n) < 0.85
    templates = rng.random((args.classes, args.size, args.size))
    maps = np.clip(0.6 * templates[cls] + rng.normal(0, 0.2, (args.n, args.size, args.size)), 0, 1)
    t0, c0 = time.perf_counter(), time.process_time()
    res = nullsim.null_pipeline(maps, correct, cls, repeats=args.repeats, seed=0, workers=args.workers)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU seconds / 2 is the wall time on 2 otherwise idle cores (the wall
    # time on a shared machine also counts other processes' turns)
    print(f"{args.n} images x {len(res.metrics)} metrics x {args.repeats} repeats at {args.size}x{args.size}, "
          f"{args.workers} workers: wall {dt:.1f} s ({dt / args.repeats:.2f} s per repeat), "
          f"CPU {cpu:.1f} s ({cpu / args.repeats:.2f} s per repeat)")
    for name, m in res.metrics.items():
        print(f"  {name:8s} rejection rate {m.rejection_rate:.3f}  AUC_w quantiles "
              + " ".join(f"{v:.3f}" for v in m.auc_within_class_quantiles))


if __name__ == "__main__":
    main()
