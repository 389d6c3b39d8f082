"""Artifact formats benchmark: `python -m bench.formats_bench` (no services needed).

Trains the ~33 MB car RandomForest pipeline once, serializes it as joblib, skops and ONNX,
then prints, in the same run and as ratios to joblib:
  * load time (bytes in memory -> model object; median of --repeat, interleaved);
  * 1-row and 1,000-row predict cost through predq's serving path (`ServingModel`'s
    predictor: predq's fast path for joblib and skops, onnxruntime for ONNX), and the
    plain `predict(DataFrame)` of each loaded object.
Per-round ranges are printed beside each median.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from modelstore import formats, onnxmodel
from modelstore.artifacts import describe_features, sha256_hex
from modelstore.loader import LoadedModel
from producer.sample import FEATURES, make_cars, train_pipeline
from workers.execute import ServingModel

FORMATS = (formats.FORMAT_JOBLIB, formats.FORMAT_SKOPS, formats.FORMAT_ONNX)


def rounds(variants: dict[str, Callable[[], object]], repeat: int, inner: int
           ) -> dict[str, list[float]]:
    """Per-round ms of each variant (each round: `inner` calls), round-robin after one
    untimed warm-up round, so no variant is flattered by running last."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_no in range(repeat + 1):
        for name, fn in variants.items():
            started = time.perf_counter()
            for _ in range(inner):
                fn()
            elapsed = (time.perf_counter() - started) / inner * 1000
            if round_no:
                times[name].append(elapsed)
    return times


def show(title: str, times: dict[str, list[float]], base: str) -> None:
    print(f"\n{title}")
    ref = statistics.median(times[base])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<26} {med:9.3f} ms  (rounds {min(values):.3f}-{max(values):.3f})  "
              f"{med / ref:6.2f}x {base}")


def serving(obj: Any, fmt: str, data: bytes) -> ServingModel:
    loaded = LoadedModel(obj, "bench", fmt, sha256_hex(data), "bench", 1,
                         describe_features(obj))
    return ServingModel.wrap(loaded, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds per variant")
    parser.add_argument("--quick", action="store_true", help="small model, 3 rounds")
    args = parser.parse_args()
    trees, rows = (10, 2_000) if args.quick else (100, 20_000)
    repeat = 3 if args.quick else args.repeat
    model = train_pipeline(make_cars(rows), n_estimators=trees, max_depth=12)
    sample = make_cars(1_000, seed=99)[list(FEATURES)]
    data = {formats.FORMAT_JOBLIB: formats.dumps(model, formats.FORMAT_JOBLIB),
            formats.FORMAT_SKOPS: formats.dumps(model, formats.FORMAT_SKOPS)}
    started = time.perf_counter()
    data[formats.FORMAT_ONNX] = onnxmodel.convert(model, sample)
    off = onnxmodel.check_parity(model, data[formats.FORMAT_ONNX], sample)
    print(f"model: RandomForest {trees} trees on {rows} cars; ONNX conversion "
          f"{time.perf_counter() - started:.1f} s, {off:.1%} of 1,000 sample rows off "
          f"tolerance")
    for fmt in FORMATS:
        print(f"  {fmt:<7} {len(data[fmt]) / 1e6:7.1f} MB")

    loads = rounds({fmt: (lambda f=fmt: formats.loads(data[f], f, "bench"))  # type: ignore[misc]
                    for fmt in FORMATS}, repeat, 1)
    show(f"Load (bytes -> object), median of {repeat}:", loads, formats.FORMAT_JOBLIB)

    objects = {fmt: formats.loads(data[fmt], fmt, "bench") for fmt in FORMATS}
    served = {fmt: serving(objects[fmt], fmt, data[fmt]) for fmt in FORMATS}
    records = sample.to_dict(orient="records")
    for n, inner in ((1, 200), (1_000, 5)):
        batch, frame = records[:n], sample.head(n)
        variants: dict[str, Callable[[], object]] = {}
        for fmt in FORMATS:
            variants[f"{fmt} serving path"] = (
                lambda f=fmt, b=batch: served[f].predictor(b))  # type: ignore[misc]
        for fmt in FORMATS:
            variants[f"{fmt} predict(DataFrame)"] = (
                lambda f=fmt, x=frame: objects[f].predict(x))  # type: ignore[misc]
        show(f"Predict {n:,} row(s) per call, ms per call, median of {repeat}:",
             rounds(variants, repeat, inner), "joblib serving path")


if __name__ == "__main__":
    main()
