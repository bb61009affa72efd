"""Feature extraction speed, measured in one run on the same images.

    python bench/extract.py [--data FOLDER] [--backbone NAME] [--images N] [--batch-size B]

Prints images/s of
  1. end-to-end `extract` (transfer.data._images.predict_images, the loop of run_extraction: tf.data, parallel
     decode from JPEG files, resize, batch, prefetch, forward pass by the default engine),
  2. the default engine's forward pass alone on pre-decoded tensors,
  3. a naive loop: PIL open per image, then Keras `model.predict` per batch,
and the ratios the targets are about: end-to-end / forward (target >= 0.9)
and end-to-end / naive (target >= 2). The models are built once beforehand and
warmed up, so no ratio includes start-up costs (the engine's one-off export
and timing, when its cache is cold, happen before any timing).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings for each method")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"SKIP: {args.data} not found (see ../shared/datasets/README.md)")
        return 0

    from PIL import Image

    from transfer import get_backbone
    from transfer.data import forward, list_images, load_image, predict_images
    from transfer.features._extract import ExtractConfig, build_extractor, extractor

    files = [f for f in list_images([args.data])[0] if f.suffix.lower() in (".jpg", ".jpeg")][: args.images]
    cfg = ExtractConfig(backbone=args.backbone, batch_size=args.batch_size)
    size, bs = cfg.image_size, cfg.batch_size
    row = get_backbone(cfg.backbone)
    keras_model, model = build_extractor(cfg), extractor(cfg)
    engine = getattr(model, "engine", "tensorflow")
    decoded = np.stack([load_image(f, size, cfg.resize) for f in files])
    forward(model, row.preprocess_input(decoded[:bs]), bs)  # trace once
    keras_model.predict(row.preprocess_input(decoded[:bs]), verbose=0)

    def timed(fn):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return len(files) / best

    def end_to_end():
        kept, feats, skipped = predict_images(model, files, size, cfg.resize, bs, row.preprocess_input)
        assert len(kept) == len(files) and not skipped

    def forward_only():
        for i in range(0, len(decoded), bs):
            forward(model, row.preprocess_input(decoded[i:i + bs]), bs)

    def naive():
        for i in range(0, len(files), bs):
            batch = []
            for f in files[i:i + bs]:
                with Image.open(f) as img:
                    batch.append(np.asarray(img.convert("RGB").resize((size, size)), dtype=np.float32))
            keras_model.predict(row.preprocess_input(np.stack(batch)), verbose=0)

    e2e, fwd, nv = timed(end_to_end), timed(forward_only), timed(naive)
    print(f"backbone {cfg.backbone}, {len(files)} JPEG files from {args.data}, {size} px, batch {bs}, "
          f"{os.cpu_count()} CPUs, default engine: {engine}")
    print(f"end-to-end extract : {e2e:7.1f} images/s")
    print(f"forward only       : {fwd:7.1f} images/s  ({engine})")
    print(f"naive loop         : {nv:7.1f} images/s  (PIL + Keras model.predict)")
    print(f"end-to-end / forward = {e2e / fwd:.2f}  (target >= 0.9)")
    print(f"end-to-end / naive   = {e2e / nv:.2f}  (target >= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
