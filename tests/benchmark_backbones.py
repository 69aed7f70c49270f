"""Benchmark of every backbone: parameters, training and inference throughput (a script).

Not a test (pytest collects only ``test_*.py``). Run it from the repository root::

    python tests/benchmark_backbones.py --size 64 --batch 32 [--backbones alexnet squeezenet]
        [--steps 3] [--warmup 2] [--mixed-precision]

For each backbone: the classifier ``build_classifier(name, head="paper000", weights=None,
freeze="none", num_classes=2)`` at ``--size`` pixels, its parameter count, training images/s
(``train_on_batch`` after a few untimed warm-up steps) and inference images/s
(``predict_on_batch``). Prints a Markdown table. ``--mixed-precision`` sets Keras' global
policy to ``mixed_float16`` (for a GPU). Backbones whose minimum input is above ``--size`` are
listed with the minimum instead of numbers.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from helpers.models import BACKBONES, build_classifier  # noqa: E402
from helpers.training import compile_classifier  # noqa: E402

COLUMNS = ("backbone", "input", "parameters", "train images/s", "inference images/s")


def _timed(step, batches: int, warmup: int) -> float:
    """Seconds for ``batches`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    return time.perf_counter() - start


def benchmark(name: str, *, size: int, batch: int, steps: int, warmup: int) -> dict[str, str]:
    """One table row for backbone ``name``."""
    spec = BACKBONES[name]
    row = {"backbone": spec.display_name, "input": f"{size}x{size}"}
    if size < spec.min_input_size:
        return {**row, "parameters": "-", "train images/s": f"needs >= {spec.min_input_size} px",
                "inference images/s": "-"}
    keras.backend.clear_session()
    model = build_classifier(name, head="paper000", weights=None, freeze="none",
                             input_shape=(size, size, 3), num_classes=2, seed=0)
    compile_classifier(model, optimiser="adam", learning_rate=1e-4)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 2, batch)
    train_s = _timed(lambda: model.train_on_batch(x, y), steps, warmup)
    infer_s = _timed(lambda: model.predict_on_batch(x), steps, warmup)
    return {**row, "parameters": f"{model.count_params():,}",
            "train images/s": f"{steps * batch / train_s:,.1f}",
            "inference images/s": f"{steps * batch / infer_s:,.1f}"}


def markdown_table(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[column] for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="input height and width (px)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES),
                        choices=sorted(BACKBONES), metavar="NAME",
                        help=f"subset of: {', '.join(BACKBONES)} (default: all)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="use the mixed_float16 policy (GPU)")
    args = parser.parse_args(argv)
    if min(args.size, args.batch, args.steps) < 1 or args.warmup < 0:
        parser.error("--size, --batch and --steps must be >= 1, --warmup >= 0")
    policy = "mixed_float16" if args.mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    rows = []
    for name in args.backbones:
        rows.append(benchmark(name, size=args.size, batch=args.batch, steps=args.steps,
                              warmup=args.warmup))
        print(f"done: {name}", flush=True)
    table = (f"backend {keras.config.backend()}, policy {policy}, batch {args.batch}, "
             f"{args.steps} timed steps after {args.warmup} warm-up steps\n\n"
             + markdown_table(rows))
    print(table)
    return table


if __name__ == "__main__":
    main()
