"""Strategy 2 at scale: `transfer classify` on fashion-mnist at 7k, 35k and 70k images, and Ray against local.

For each size, a stratified subset of Debian's dataset-fashion-mnist (its own train/test split kept, in
proportion) runs through `python cli.py classify` in a fresh process with an empty feature cache of its own, while
a sampler adds up the resident memory of that process and all its children (the joblib workers of the grid
searches) every 0.2 s. Reported per size: the CNN pass's seconds per image, each classifier's grid-search and
refit seconds, the peak memory of the process tree, the test accuracy; and the whole run's seconds against twice
the extraction's (issue 14's budget). Then, in the same run, `python cli.py extract` over 10k images with
`--executor local` and with `--executor ray` (a Ray of this machine's own, 2 actors), each into an empty cache:
images per second of the CNN pass and of the whole command, and their ratio.

    python bench/scale.py [--sizes 7000,35000,70000] [--ray-images 10000] [--classifiers ...] [--out DIR]

Targets (issues 14 and 27): peak memory of the process tree under 2.5 GiB, the run with every default classifier
(both SVMs included: above 20,000 images by the solvers that scale) at most twice the extraction, the per-image
extraction time flat from 7k to 70k. The machine's speed drifts over minutes: read the figures of one
run against each other, not against another run's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class TreePeak:
    """The largest sum of resident memory of a process and its descendants, sampled every 0.2 s."""

    def __init__(self, pid: int):
        import psutil

        self.root, self.peak, self.done = psutil.Process(pid), 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import psutil

        while not self.done:
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> float:
        self.done = True
        self.thread.join()
        return self.peak / 2**30


def run_cli(args: list[str], cache: Path) -> tuple[float, float, str]:
    """Wall seconds, peak GiB of the process tree and output of ``python cli.py ARGS`` with its own cache."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "cli.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "TRANSFER_CACHE": str(cache)})
    peak = TreePeak(proc.pid)
    out, _ = proc.communicate()
    gib, seconds = peak.stop(), time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{out[-3000:]}")
    return seconds, gib, out


def subset(table: pd.DataFrame, n: int, path: Path) -> Path:
    """A manifest of ``n`` images of ``table``, stratified by split and label, seeded."""
    rows = table.groupby(["split", "label"]).sample(frac=min(1.0, n / len(table)), random_state=0)
    rows[["path", "label", "split"]].to_csv(path, index=False)
    return path


def classify_size(table, n, work: Path, classifiers: str | None) -> dict:
    manifest = subset(table, n, work / f"fashion-{n}.csv")
    out = work / f"classify-{n}"
    args = ["classify", "--data", str(manifest), "--out", str(out)] + (["-c", classifiers] if classifiers else [])
    seconds, gib, _ = run_cli(args, work / f"cache-{n}")
    config = json.loads((out / "config.json").read_text())
    metrics = pd.read_csv(out / "metrics.csv")
    extract = float(metrics["extract_seconds"].iloc[0])
    row = {"images": n, "extract_s": round(extract, 1), "ms_per_image": round(1000 * extract / n, 2),
           "run_s": round(seconds, 1), "run_over_extract": round(seconds / extract, 2), "peak_gib": round(gib, 2)}
    for m in metrics.itertuples():
        search = config["search_seconds"][m.classifier]
        row[f"{m.classifier}_search_s"] = search
        row[f"{m.classifier}_refit_s"] = round(m.fit_seconds - search, 1)
        row[f"{m.classifier}_acc"] = round(m.accuracy, 4)
    return row


def ray_against_local(table, n, work: Path) -> pd.DataFrame:
    manifest = subset(table, n, work / f"fashion-{n}-ray.csv")
    rows = []
    for executor in ("local", "ray"):
        args = ["extract", "--data", str(manifest), "--out", str(work / f"extract-{executor}"), "--executor", executor]
        seconds, _, out = run_cli(args, work / f"cache-{executor}")
        cnn = float(out.split("extracted in ")[1].split(" s")[0])
        rows.append({"executor": executor, "images": n, "cnn_s": cnn, "images_per_s": round(n / cnn, 1),
                     "command_s": round(seconds, 1)})
    table = pd.DataFrame(rows)
    table["vs_local"] = (table["images_per_s"] / table["images_per_s"].iloc[0]).round(2)
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="7000,35000,70000")
    parser.add_argument("--ray-images", type=int, default=10000, help="0: skip Ray against local")
    parser.add_argument("--classifiers", help="default: the product's own, those that suit each size")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()

    from transfer import resolve_source

    table = resolve_source("fashion-mnist").table
    table = table.assign(split=table["split"].fillna("train"))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [classify_size(table, int(n), work, args.classifiers) for n in args.sizes.split(",")]
        sizes = pd.DataFrame(rows)
        print(sizes.T.to_string(header=False))
        if args.ray_images:
            print()
            print(ray_against_local(table, args.ray_images, work).to_string(index=False))


if __name__ == "__main__":
    main()
