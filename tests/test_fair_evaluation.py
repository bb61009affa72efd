"""Nothing is chosen on the images that are scored."""

import pandas as pd
import pytest

from tests.conftest import colour_folder, patch_stage
from transfer import CompareConfig, compare


@pytest.mark.parametrize("head", ["probe", "train"])
def test_with_only_train_and_val_no_scored_image_is_used_by_any_choice(tmp_path, monkeypatch, head):
    from transfer.data import _images as images
    from transfer.features import _classifiers as classifiers
    from transfer.finetuning import _model as finetune_model
    from transfer.finetuning import _training as training

    seen = {"image batches": set(), "searched on": [], "refit on": [], "array batches": [], "probe": []}
    real_batches, real_fit, real_arrays = images.training_batches, classifiers.fit_classifier, training.array_batches
    real_probe = finetune_model.fit_probe

    def batches(paths, *args, **kwargs):  # every image fine-tuning and the scratch CNN fit or stop early on
        seen["image batches"] |= set(map(str, paths))
        return real_batches(paths, *args, **kwargs)

    def fit(name, x_train, y_train, x_refit=None, y_refit=None, **kwargs):  # the grid search and the refit
        seen["searched on"].append(len(y_train))
        seen["refit on"].append(None if y_refit is None else len(y_refit))
        return real_fit(name, x_train, y_train, x_refit, y_refit, **kwargs)

    def arrays(x, y, *args, **kwargs):  # the head stage on cached features
        seen["array batches"].append(len(y))
        return real_arrays(x, y, *args, **kwargs)

    def probe(x_train, y_train, x_val, y_val, *args, **kwargs):  # the linear-probe head
        seen["probe"].append((len(y_train), len(y_val)))
        return real_probe(x_train, y_train, x_val, y_val, *args, **kwargs)

    patch_stage(monkeypatch, images, "training_batches", batches)
    patch_stage(monkeypatch, finetune_model, "fit_probe", probe)
    patch_stage(monkeypatch, classifiers, "fit_classifier", fit)
    patch_stage(monkeypatch, training, "array_batches", arrays)
    data = colour_folder(tmp_path / "data", n=10, splits=("train", "val"))
    cfg = CompareConfig(image_size=32, batch_size=8, precision="float32", head=head, head_epochs=2, epochs=1,
                        augment=False, scratch_size=16, scratch_epochs=2, classifiers="logreg")
    table, _ = compare(data, tmp_path / "run", cfg, progress=False, log=lambda *_: None)

    split = pd.read_csv(tmp_path / "run" / "split.csv")
    scored = set(split.loc[split["split"] == "test", "path"])
    train, val = (split[split["split"] == s] for s in ("train", "val"))
    # The source's val/ is what is scored; the images that choose are carved from its train/.
    assert scored == {str(p) for p in (data / "val").rglob("*.png")}
    assert set(val["source_split"]) == {"train"} and len(val) == 3
    assert (table["eval_split"] == "test").all() and (table["n_test"] == len(scored)).all()
    assert seen["image batches"] and not seen["image batches"] & scored
    assert seen["image batches"] <= set(train["path"]) | set(val["path"])
    assert seen["searched on"] == [len(train)] and seen["refit on"] == [len(train) + len(val)]
    if head == "train":  # the head trains on cached features of train, stopped on val
        assert sorted(set(seen["array batches"])) == sorted({len(train), len(val)}) and not seen["probe"]
    else:  # the probe is fitted (C cross-validated) on train and judged on val
        assert seen["probe"] == [(len(train), len(val))] and not seen["array batches"]
