"""Wall time of `transfer compare`, before and after a change, in units of a fixed reference workload.

The host's speed drifts 2-4x over minutes, so a wall time alone says little. Each `compare` run here is
bracketed by a reference workload (TensorFlow's EfficientNet-Lite0 forward pass over 1,000 pre-made 224 px
tensors, random weights, batch 32, in a fresh process) and reported as its wall time divided by the mean of the
two reference times around it. Two versions of the code run the same commands in the same run: ``--before`` (a
git revision, checked out into a temporary worktree) and the working tree. For each data set: the full
comparison from an empty folder with each version, then the same command once more with the working tree's
code in the same folder (every sub-run reused).

    python bench/compare.py [--before cf42593] [--sets digits,hymenoptera] [--data-hymenoptera PATH]

Targets (issue 13): after/before of the ratio at most 0.5 on each set, the same accuracies within noise (both
are printed, model by model), and the re-run that reuses every sub-run under 10 s.
Every version runs with the same Python (this one) and the same caches (ported weights, engine choice).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
# TensorFlow imported before the package: the reference runs with TensorFlow's own default kernels whatever this
# machine's measured oneDNN setting is (transfer.runtime._onednn), the same workload for every version of the code.
REFERENCE = """
import os, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
import tensorflow
import numpy as np
from transfer import feature_model
model = feature_model("efficientnet_lite0", weights=None, image_size=224, pooling="avg")
x = np.random.default_rng(0).uniform(-1, 1, (1000, 224, 224, 3)).astype("float32")
model.predict_on_batch(x[:32])
start = time.perf_counter()
for i in range(0, 1000, 32):
    model.predict_on_batch(x[i:i + 32])
print(time.perf_counter() - start)
"""


def reference_seconds() -> float:
    """Seconds of the reference workload, in a fresh process with the working tree's code."""
    out = subprocess.run([sys.executable, "-c", REFERENCE], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def timed_compare(code: Path, args: list[str], out: Path) -> tuple[float, int]:
    """Wall seconds and exit status of ``python cli.py compare ARGS --out OUT`` run from the tree ``code``.

    The shared feature cache is one of the run's own (``OUT-cache``), empty at its first run: features cached by
    earlier work on this machine do not shorten the first run, and the re-run in the same folder reuses them.
    """
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "cli.py", "compare", *args, "--out", str(out)], cwd=code,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(code), "TRANSFER_CACHE": f"{out}-cache"})
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
    return time.perf_counter() - start, done.returncode


def measured(label, code, args, out) -> dict:
    """One bracketed run: its wall time, the reference around it, the ratio and the accuracies."""
    before_ref = reference_seconds()
    wall, rc = timed_compare(code, args, out)
    ref = (before_ref + reference_seconds()) / 2
    report = out / "compare.csv"
    accuracy = (pd.read_csv(report).set_index("model")["accuracy"].round(4).to_dict()
                if rc == 0 and report.exists() else {})
    print(f"  {label:28} {wall:7.1f} s  reference {ref:5.1f} s  ratio {wall / ref:6.2f}  rc={rc}", flush=True)
    config = out / "config.json"
    if rc == 0 and config.exists():  # where the time went, as the run recorded it (versions that record it)
        seconds = json.loads(config.read_text()).get("seconds") or {}
        print("    " + ", ".join(f"{phase} {s:.0f} s" for phase, s in seconds.items()), flush=True)
    return {"run": label, "wall_s": round(wall, 1), "reference_s": round(ref, 2), "ratio": wall / ref,
            "rc": rc, "accuracy": accuracy}


def bench_set(name, args, before_tree, folder) -> list[dict]:
    print(f"{name}: transfer compare {' '.join(args) or '(the digits demo)'}", flush=True)
    rows = [measured("before", before_tree, args, folder / f"{name}-before"),
            measured("after", ROOT, args, folder / f"{name}-after"),
            measured("after, re-run (all reused)", ROOT, args, folder / f"{name}-after")]
    before, after, rerun = rows
    print(f"  after/before ratio {after['ratio'] / before['ratio']:.2f} (target <= 0.5); re-run "
          f"{rerun['wall_s']:.1f} s (target < 10)")
    models = sorted(set(before["accuracy"]) | set(after["accuracy"]))
    table = pd.DataFrame({"before": [before["accuracy"].get(m) for m in models],
                          "after": [after["accuracy"].get(m) for m in models]}, index=models)
    print(table.to_string(), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="cf42593", help="git revision of the code to compare against")
    parser.add_argument("--sets", default="digits,hymenoptera")
    parser.add_argument("--data-hymenoptera", type=Path, default=HYMENOPTERA)
    args = parser.parse_args(argv)
    sets = {"digits": [], "hymenoptera": ["--data", str(args.data_hymenoptera)]}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for name in args.sets.split(","):
                if name == "hymenoptera" and not args.data_hymenoptera.is_dir():
                    print(f"hymenoptera: SKIP, {args.data_hymenoptera} not found (../shared/datasets/README.md)")
                    continue
                bench_set(name, sets[name], tree, Path(tmp))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
