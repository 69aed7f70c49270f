"""Benchmark of every backbone: parameters, training and inference throughput (a script).

Not a test (pytest collects only ``test_*.py``). Run it from the repository root::

    python tests/benchmark_backbones.py --size 64 --batch 32 [--backbones alexnet squeezenet]
        [--steps 3] [--warmup 2] [--mixed-precision | --precision auto]
    python tests/benchmark_backbones.py --compare --backbones squeezenet --size 64 [--epochs 2]
        [--repeats 3] [--workers 1]

For each backbone: the classifier ``build_classifier(name, head="paper000", weights=None,
freeze="none", num_classes=2)`` at ``--size`` pixels, its parameter count, training images/s
(``train_on_batch`` after a few untimed warm-up steps) and inference images/s
(``predict_on_batch``). Prints a Markdown table. ``--mixed-precision`` sets Keras' global
policy to ``mixed_float16`` (for a GPU); ``--precision`` takes the run setting's values
(``auto``: mixed_float16 where the backend sees a GPU; :func:`helpers.training.resolve_precision`).
Backbones whose minimum input is above ``--size`` are listed with the minimum instead of numbers.

``--compare``: our :func:`helpers.training.train` against a minimal hand-written Keras loop,
``model.compile(...)`` once and ``model.fit(x, y, batch_size=..., epochs=..., validation_data=...)``,
on two copies of the same model (same initial weights, both reset before every run) and the same
random data (``--steps`` batches per epoch, one batch of validation images, both do the same
work). After one untimed run of each (graph tracing), ``--repeats`` timed runs of each alternate
(ours first, then the hand-written one first, and so on);
images/s of each is its total training images over its total seconds, and the ratio is the median
over the repeats of (hand-written seconds / our seconds) of the two runs made back to back, which
a machine shared with other work disturbs less (1.0: no overhead). ``train`` has a fixed cost per
call of building two ``tf.data`` pipelines from its ``PyDataset``s (about 0.1 to 0.5 s), so use
runs of many steps (``--steps``, default 20 with ``--compare``), as real training is. The device-busy share is the mean of ``nvidia-smi``'s
``utilization.gpu`` sampled every 0.2 s in a thread while ours runs ("n/a" without nvidia-smi).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from helpers import backend  # noqa: E402  (first: Keras as the study imports it, oneDNN off unless set)
import keras  # noqa: E402
import numpy as np  # noqa: E402

from helpers.models import BACKBONES, build_classifier  # noqa: E402
from helpers import training  # noqa: E402
from helpers.training import compile_classifier  # noqa: E402

COLUMNS = ("backbone", "input", "parameters", "train images/s", "inference images/s")
COMPARE_COLUMNS = ("backbone", "input", "parameters", "train images/s", "plain fit images/s",
                   "ratio", "device busy")


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


class DeviceBusy:
    """The GPU's utilisation sampled with ``nvidia-smi`` in a thread while inside ``with``; ``share``
    is the mean of the samples (0 to 1), None where nvidia-smi is missing or gave nothing."""

    QUERY = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s, self.samples = interval_s, []
        self._stop, self._thread = threading.Event(), None

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(self.QUERY, capture_output=True, text=True, timeout=5).stdout
                values = [float(v) for v in out.split()]
                if values:
                    self.samples.append(sum(values) / len(values) / 100.0)  # several GPUs: their mean
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "DeviceBusy":
        self._stop.clear()  # entered once per timed run: the samples add up
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def share(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def compare(name: str, *, size: int, batch: int, steps: int, epochs: int, repeats: int,
            workers: int) -> dict[str, str]:
    """One row of the side-by-side: our ``train`` against a plain ``fit`` on backbone ``name``."""
    spec = BACKBONES[name]
    row = {"backbone": spec.display_name, "input": f"{size}x{size}"}
    if size < spec.min_input_size:
        return {**row, "parameters": "-", "train images/s": f"needs >= {spec.min_input_size} px",
                "plain fit images/s": "-", "ratio": "-", "device busy": "-"}
    keras.backend.clear_session()
    models = [build_classifier(name, head="paper000", weights=None, freeze="none",
                               input_shape=(size, size, 3), num_classes=2, seed=0) for _ in range(2)]
    start = models[0].get_weights()
    ours, plain = (compile_classifier(model, optimiser="adam", learning_rate=1e-4) for model in models)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (steps * batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 2, len(x))
    x_val, y_val = x[:batch], y[:batch]
    work = Path(tempfile.mkdtemp(prefix="benchmark-"))

    def run_ours() -> None:
        ours.set_weights(start)
        training.train(ours, x, y, x_val, y_val, epochs=epochs, batch_size=batch, run_dir=work, seed=0,
                       verbose=0, save_model=False, workers=workers)

    def run_plain() -> None:
        plain.set_weights(start)
        plain.fit(x, training.encode_labels(y, plain), batch_size=batch, epochs=epochs, verbose=0,
                  validation_data=(x_val, training.encode_labels(y_val, plain)))

    seconds = {"ours": 0.0, "plain": 0.0}
    ratios = []
    busy = DeviceBusy()
    try:
        run_ours(), run_plain()  # untimed: graph tracing
        for repeat in range(repeats):
            pair = {}
            order = (("ours", run_ours), ("plain", run_plain))
            for key, run in order if repeat % 2 == 0 else order[::-1]:  # who goes first alternates too
                with busy if key == "ours" else contextlib.nullcontext():
                    began = time.perf_counter()
                    run()
                    pair[key] = time.perf_counter() - began
                    seconds[key] += pair[key]
            ratios.append(pair["plain"] / pair["ours"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    images = repeats * epochs * len(x)
    rate = {key: images / value for key, value in seconds.items()}
    share = busy.share
    return {**row, "parameters": f"{ours.count_params():,}", "train images/s": f"{rate['ours']:,.1f}",
            "plain fit images/s": f"{rate['plain']:,.1f}", "ratio": f"{float(np.median(ratios)):.3f}",
            "device busy": "n/a" if share is None else f"{share:.0%}"}


def markdown_table(rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[column] for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def _kernels() -> str:
    """", oneDNN on|off" on TensorFlow (helpers.backend: off unless TF_ENABLE_ONEDNN_OPTS=1)."""
    return f", oneDNN {backend.ONEDNN}" if keras.config.backend() == "tensorflow" else ""


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="input height and width (px)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per measurement (default 3; --compare: steps per epoch, default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES),
                        choices=sorted(BACKBONES), metavar="NAME",
                        help=f"subset of: {', '.join(BACKBONES)} (default: all)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="use the mixed_float16 policy (GPU); the same as --precision mixed_float16")
    parser.add_argument("--precision", default="float32", choices=("auto", *training.PRECISIONS),
                        help="the dtype policy, as the run setting precision (auto: mixed_float16 on a GPU)")
    parser.add_argument("--compare", action="store_true",
                        help="our train against a plain model.fit, side by side (see the docstring)")
    parser.add_argument("--epochs", type=int, default=2, help="--compare: epochs per timed run")
    parser.add_argument("--repeats", type=int, default=4, help="--compare: timed runs of each")
    parser.add_argument("--workers", default="1", help="--compare: our train's data workers (or auto)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (20 if args.compare else 3)
    if min(args.size, args.batch, args.steps, args.epochs, args.repeats) < 1 or args.warmup < 0:
        parser.error("--size, --batch, --steps, --epochs and --repeats must be >= 1, --warmup >= 0")
    policy = training.apply_precision("mixed_float16" if args.mixed_precision else args.precision)
    workers = training.resolve_workers(args.workers if args.workers == "auto" else int(args.workers))
    rows = []
    for name in args.backbones:
        if args.compare:
            rows.append(compare(name, size=args.size, batch=args.batch, steps=args.steps,
                                epochs=args.epochs, repeats=args.repeats, workers=workers))
        else:
            rows.append(benchmark(name, size=args.size, batch=args.batch, steps=args.steps,
                                  warmup=args.warmup))
        print(f"done: {name}", flush=True)
    if args.compare:
        table = (f"backend {keras.config.backend()}{_kernels()}, policy {policy}, batch {args.batch}, "
                 f"{args.steps} steps x {args.epochs} epochs per run, {args.repeats} timed runs of each "
                 f"(alternating) after one untimed, data workers {workers}\n\n"
                 + markdown_table(rows, COMPARE_COLUMNS))
    else:
        table = (f"backend {keras.config.backend()}{_kernels()}, policy {policy}, batch {args.batch}, "
                 f"{args.steps} timed steps after {args.warmup} warm-up steps\n\n"
                 + markdown_table(rows))
    print(table)
    return table


if __name__ == "__main__":
    main()
