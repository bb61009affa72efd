"""The scoring protocol: k-fold cross-validation for small data, one split otherwise; statistics over folds."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from tests.conftest import cached_images
from transfer import CompareConfig, compare
from transfer.comparison._protocol import MIN_SCORED, choose, fold_splits
from transfer.comparison._representatives import CorrectedResampledT
from transfer.errors import TransferError

# The tiny test backbone (tests/_tiny.py): what is tested here is the protocol, not ImageNet.
pytestmark = pytest.mark.usefixtures("tiny_backbone")
TINY = dict(backbones="tiny", image_size=32, batch_size=8, precision="float32", head_epochs=1, epochs=1,
            augment=False, scratch_size=16, scratch_epochs=2, classifiers="logreg,knn")
COLOURS = {"red": (200, 40, 40), "blue": (40, 40, 200), "green": (40, 200, 40), "grey": (120, 120, 120),
           "yellow": (200, 200, 40)}


def quiet(*_):
    pass


def five_classes(root, n=12):
    """60 noisy solid-colour images of 5 classes, one folder per class, no split folders: a small user's set."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.clip(np.array(colour) + rng.normal(0, 60, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def _images(n, classes=5, split=None):
    return pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "label": [f"c{i % classes}" for i in range(n)],
                         "split": split})


def test_the_rule_cross_validates_when_one_split_would_score_too_few_images():
    assert choose(_images(60), "auto", 5, 0.15).name == "kfold"
    assert choose(_images(60), "auto", 5, 0.15).folds == 5
    assert choose(_images(60), "auto", 10, 0.15).folds == 10
    assert choose(_images(20), "auto", 5, 0.15).folds == 4, "k at most the smallest class's count"
    big = round(MIN_SCORED / 0.15) + 10
    assert choose(_images(big), "auto", 5, 0.15).name == "split"
    assert choose(_images(big), "kfold", 5, 0.15).name == "kfold"
    assert choose(_images(60), "split", 5, 0.15).name == "split"
    own = choose(_images(60, split="train").assign(split=["train", "test"] * 30), "kfold", 5, 0.15)
    assert own.name == "split" and "own test split is honoured" in own.reason
    with pytest.raises(TransferError, match="protocol=kfold needs at least 2 images of every class"):
        choose(_images(6, classes=6), "kfold", 5, 0.15)


def test_folds_score_every_image_once_and_choose_inside_their_training_part():
    table = _images(60)
    splits = fold_splits(table, 5, seed=0, val_fraction=0.15)
    tests = [set(s.loc[s["split"] == "test", "path"]) for s in splits]
    assert sorted(p for t in tests for p in t) == sorted(table["path"]), "each image scored exactly once"
    for s, test in zip(splits, tests, strict=True):
        assert (s.loc[s["split"] == "test", "label"].value_counts() >= 2).all(), "stratified folds"
        assert set(s.loc[s["split"] == "val", "path"]).isdisjoint(test) and (s["split"] == "val").sum() >= 5
    assert [set(s["split"]) for s in splits] == [{"train", "val", "test"}] * 5


def test_too_few_images_per_class_are_refused_with_the_count_that_works_before_any_image_is_read(tmp_path,
                                                                                                    monkeypatch):
    from transfer.features import _extract

    def no_cnn(*args, **kwargs):
        raise AssertionError("images were read before the folds were checked")

    monkeypatch.setattr(_extract, "run_extraction", no_cnn)
    data = five_classes(tmp_path / "data", n=3)
    result = CliRunner().invoke(cli.main, ["compare", "--data", str(data), "--backbone", "tiny",
                                           "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: Too few images of class ") and "every class needs 4 or more" in error, error
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_the_count_the_refusal_names_is_enough():
    from transfer.comparison._protocol import check_folds_train

    for n in (4, 5, 12):  # the fewest the refusal asks for, and more: the folds then train on 2 or more per class
        table = _images(5 * n)
        protocol = choose(table, "auto", 5, 0.15)
        check_folds_train(table, protocol, 5, 0, 0.15)
        assert min(len(s[(s["split"] == "train") & (s["label"] == c)]) for s in fold_splits(table, protocol.folds, 0,
                   0.15) for c in table["label"].unique()) >= 2


def test_corrected_resampled_t_is_wider_than_the_naive_one():
    acc = {"a": [0.9, 0.8, 0.85, 0.9, 0.95], "b": [0.85, 0.8, 0.8, 0.85, 0.9]}
    stats = CorrectedResampledT(acc, test_over_train=1 / 4)
    diff, low, high = stats.interval("a", "b")
    assert diff == pytest.approx(0.04)
    naive = CorrectedResampledT(acc, test_over_train=0.0)
    assert high - low > (naive.interval("a", "b")[2] - naive.interval("a", "b")[1])
    assert stats.p("a", "b") > naive.p("a", "b")
    assert CorrectedResampledT({"a": [1, 1], "b": [1, 1]}, 1).p("a", "b") == 1.0


@pytest.fixture(scope="module")
def cross_validated(tmp_path_factory):
    root = tmp_path_factory.mktemp("kfold")
    data = five_classes(root / "data")
    lines = []
    table, line = compare(data, root / "run", CompareConfig(**TINY), progress=False, log=lines.append)
    return data, root / "run", table, line, lines


def test_sixty_images_of_five_classes_are_all_scored_by_every_model(cross_validated):
    data, run, table, line, lines = cross_validated
    assert any(s.startswith("protocol: 5-fold cross-validation (one split would score 9 of 60 images") for s in lines)
    assert (table["n_test"] == 60).all(), "every image scored, for every model"
    assert set(pd.read_csv(run / "folds.csv")["fold"]) == {1, 2, 3, 4, 5}
    for k in range(1, 6):
        fold = pd.read_csv(run / f"fold-{k}" / "compare.csv")
        assert (fold["n_test"] == 12).all()
    assert table["role"].iloc[0] == "recommended" and (table["role"] != "information").sum() == 3
    features = table[(table["strategy"] == "features") & (table["role"] != "information")].iloc[0]
    assert "fold" in features["chosen_by"]
    assert line.startswith("Over 5-fold cross-validation (every one of 60 labelled images scored once): ")
    assert "corrected resampled t-test over the folds p=" in line and f"use {table['model'].iloc[0]} (" in line
    saved = json.loads((run / "config.json").read_text())
    assert saved["protocol"]["name"] == "kfold" and saved["recommended_model"] == table["model"].iloc[0]
    assert (run / "report.html").exists() and (run / "plots" / "accuracy-vs-time.png").exists()
    # inside the networks: fold 1's models, as fold 1 drew them
    inside = sorted(p.name for p in (run / "inspect").iterdir())
    assert "gradcam-features.png" in inside and inside == sorted(p.name for p in (run / "fold-1" / "inspect").iterdir())
    assert (run / "inspect" / "gradcam.csv").read_bytes() == (run / "fold-1" / "inspect" / "gradcam.csv").read_bytes()
    assert list(cached_images(pd.read_csv(run / "folds.csv")["path"]).values()) == [60], "one CNN pass for all folds"


def test_a_cross_validated_run_is_reused(cross_validated):
    data, run, table, line, _ = cross_validated
    again, line2 = compare(data, run, CompareConfig(**TINY), progress=False, log=quiet)
    assert line2 == line and list(again["accuracy"]) == list(table["accuracy"])


def test_strategy_2s_choice_is_refit_on_every_image_and_ships(cross_validated, tmp_path):
    from transfer.serving._export import choose

    data, run, table, line, _ = cross_validated
    final = json.loads((run / "config.json").read_text())["final"]
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["refit_on"] == 60 and config["classifiers"] == [final["classifier"]]
    chosen = [r for r in table.itertuples() if r.strategy == "features" and r.role != "information"][0]
    # one of the folds' choices: the model itself when every fold chose it, else named among the choices
    assert final["model"] == chosen.model or final["model"] in chosen.chosen_by
    assert final["classifier"] != "knn", "the most frequent choice that exports"
    predicted = CliRunner().invoke(cli.main, ["predict", "--run", str(run / "final"), str(data / "red")])
    assert predicted.exit_code == 0, predicted.output
    assert table["strategy"].iloc[0] == "features" and "refit on all 60 images in final/" in line
    assert choose(run, log=quiet).run_dir == run / "final"
    exported = CliRunner().invoke(cli.main, ["export", str(run), "--out", str(tmp_path / "final.keras")])
    assert exported.exit_code == 0, exported.output
    result = CliRunner().invoke(cli.main, ["export", str(run), "--model", "knn", "--out", str(tmp_path / "m.keras")])
    assert result.exit_code != 0 and f"transfer export {run / 'fold-1'} --model knn" in result.output


def test_a_recommended_network_of_a_cross_validation_ships_from_a_fold(cross_validated, tmp_path):
    import shutil

    from transfer.serving._export import choose

    _, run, table, _, _ = cross_validated
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    tuned = table[table["strategy"] == "finetune"]
    pd.concat([tuned, table[table["strategy"] != "finetune"]]).to_csv(copy / "compare.csv", index=False)
    said = []
    chosen = choose(copy, log=said.append)
    assert chosen.run_dir.parent.parent.name == "fold-1" and chosen.kind == "finetune"
    assert "is not refit on every image: exporting fold 1's" in said[-1]


@pytest.mark.parametrize("strategy", ["finetune", "scratch"])
def test_a_recommended_network_is_refit_on_every_image_for_the_folds_median_epochs(cross_validated, strategy,
                                                                                   tmp_path):
    import shutil
    import statistics

    from transfer import resolve_source
    from transfer.comparison._refit import _kept_epochs, refit
    from transfer.serving._export import choose, export_model

    data, run, table, _, _ = cross_validated
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    tables = [pd.read_csv(copy / f"fold-{k}" / "compare.csv", keep_default_na=False) for k in range(1, 6)]
    cfg = CompareConfig(**TINY)
    said = []
    final = refit(resolve_source(data), copy, cfg, tables, strategy, said.append)
    rows = [t[t["strategy"] == strategy].iloc[0] for t in tables]
    expected = int(statistics.median(_kept_epochs(copy / f"fold-{k}", r) for k, r in enumerate(rows, 1)))
    assert final["epochs"] == expected and final["images"] == 60 and final["strategy"] == strategy
    folder = copy / final["run_dir"]
    config = json.loads((folder / "config.json").read_text())
    assert config["eval_split"] == "none" and "nothing scored here" in config["roles"]
    assert set(pd.read_csv(folder / "split.csv")["split"]) == {"train"} and (folder / "model.keras").exists()
    assert not (folder / "metrics.csv").exists(), "no score from images it trained on"
    # The pooled report ships it: transfer export RUN takes the refit model.
    pooled = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**pooled, "final": final}))
    reps = table[(table["strategy"] == strategy) & (table["role"] != "information")]
    pd.concat([reps, table.drop(reps.index)]).to_csv(copy / "compare.csv", index=False)
    assert choose(copy, log=quiet).run_dir == folder
    export_model(copy, tmp_path / "m.keras", log=quiet)
    assert (tmp_path / "m.keras").exists()


def test_repeats_repeat_the_whole_cross_validation_on_other_folds(tmp_path):
    data = five_classes(tmp_path / "data", n=6)
    run = tmp_path / "run"
    cfg = CompareConfig(**dict(TINY, strategies="features,scratch", repeats=2, folds=3))
    summary, line = compare(data, run, cfg, progress=False, log=quiet)
    folds = [pd.read_csv(run / f"repeat-{k}" / "folds.csv").sort_values("path")["fold"].tolist() for k in (1, 2)]
    assert folds[0] != folds[1], "other folds each repeat"
    for k in (1, 2):
        assert (pd.read_csv(run / f"repeat-{k}" / "compare.csv")["n_test"] == 30).all()
    reps = summary[summary["role"] == "representative"]
    assert set(reps["model"]) == {"features (each repeat's choice)", "scratch CNN"} and (reps["repeats"] == 2).all()
    assert line.startswith("best over 2 ") and "One repeat of the 3 folds took" in line
    assert json.loads((run / "config.json").read_text())["protocol"]["folds"] == 3
