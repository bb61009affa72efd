"""The EfficientNet-Lite port against real ImageNet photos (hymenoptera val: ants 310, bees 309).

A porting bug (padding, kernel layout, preprocessing, BN epsilon, block repeats)
costs several points here; a straightforward port measures 0.895 / 0.967 (Lite0),
0.928 / 0.948 (Lite1) and 0.935 / 0.967 (Lite2).
"""

import pandas as pd
import pytest

from transfer import predict_imagenet

ANT, BEE = 310, 309

# name: (minimum top-5 accuracy, minimum ant-vs-bee accuracy)
FLOORS = {
    "efficientnet_lite0": (0.85, 0.95),
    "efficientnet_lite1": (0.90, 0.93),
    "efficientnet_lite2": (0.90, 0.93),
}


def imagenet_scores(folder, backbone):
    preds, skipped = predict_imagenet([folder / "ants", folder / "bees"], backbone, top=1000)
    assert skipped.empty
    preds["true"] = preds["path"].map(lambda p: ANT if "/ants/" in p else BEE)
    per_image = preds.groupby("path")
    top5 = per_image.apply(lambda g: (g["class_index"][g["rank"] <= 5] == g["true"].iloc[0]).any())
    scores = preds[preds["class_index"].isin([ANT, BEE])].pivot(index="path", columns="class_index", values="score")
    truth = preds.groupby("path")["true"].first()
    ant_vs_bee = pd.Series(scores[ANT] > scores[BEE]).map({True: ANT, False: BEE}) == truth
    return len(truth), top5.mean(), ant_vs_bee.mean()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FLOORS))
def test_imagenet_accuracy_on_hymenoptera_val(name, hymenoptera):
    n, top5, ant_vs_bee = imagenet_scores(hymenoptera / "val", name)
    print(f"{name}: {n} images, top-5 {top5:.3f}, ant-vs-bee {ant_vs_bee:.3f}")
    assert n == 153
    assert top5 >= FLOORS[name][0]
    assert ant_vs_bee >= FLOORS[name][1]
