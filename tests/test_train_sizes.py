"""`compare --train-sizes`: nested, seeded training subsets of one split, a learning curve and its verdict."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from tests.conftest import cached_images, colour_folder
from transfer import CompareConfig
from transfer.comparison._verdict import learning_curve_verdict, summarise_train_sizes
from transfer.data._splits import UNUSED, train_subset
from transfer.errors import TransferError
from transfer.reports import plots


def _split():
    """Three classes with 12, 7 and 3 training images, 4, 2 and 1 validation images and 2 test images."""
    rows = []
    for label, n_train, n_val in (("a", 12, 4), ("b", 7, 2), ("c", 3, 1)):
        rows += [(f"{label}/train{i}.png", label, "train") for i in range(n_train)]
        rows += [(f"{label}/val{i}.png", label, "val") for i in range(n_val)]
        rows += [(f"{label}/test{i}.png", label, "test") for i in range(2)]
    rng = np.random.default_rng(1)  # rows in no particular order, as a stratified split leaves them
    table = pd.DataFrame(rows, columns=["path", "label", "split"]).iloc[rng.permutation(len(rows))]
    return table.assign(source_split="").reset_index(drop=True)


def _role(table, role="train"):
    return set(table.loc[table["split"] == role, "path"])


def _train(table):
    return _role(table, "train")


def test_train_subsets_are_nested_seeded_and_cut_val_in_proportion():
    split = _split()
    subsets = {n: train_subset(split, n, seed=0) for n in (2, 5, 10, "all")}
    full = {"a": (12, 4), "b": (7, 2), "c": (3, 1)}
    for n, subset in subsets.items():
        assert list(subset["path"]) == list(split["path"]), "every image stays, in its place"
        pd.testing.assert_frame_equal(subset[subset["split"] == "test"], split[split["split"] == "test"])
        for label, (n_train, n_val) in full.items():
            rows = subset[subset["label"] == label]
            kept = n_train if n == "all" else min(n, n_train)
            assert (rows["split"] == "train").sum() == kept
            # validation in the whole split's proportion for the class, at least one image
            assert (rows["split"] == "val").sum() == (n_val if n == "all" else min(n_val, max(1, round(kept * n_val
                                                                                                      / n_train))))
        gone = (_train(split) - _train(subset)) | (_role(split, "val") - _role(subset, "val"))
        assert set(subset.loc[subset["split"] == UNUSED, "path"]) == gone
    for role in ("train", "val"):
        assert _role(subsets[2], role) <= _role(subsets[5], role) <= _role(subsets[10], role) \
            <= _role(subsets["all"], role), "nested"
    assert _train(subsets[2]) < _train(subsets[5]) < _train(subsets[10]) < _train(subsets["all"])
    assert _train(train_subset(split, 5, seed=0)) == _train(subsets[5]), "the same seed, the same subset"
    assert _train(train_subset(split, "5", seed=0)) == _train(subsets[5])
    assert _train(train_subset(split, 5, seed=1)) != _train(subsets[5]), "another seed, another subset"
    assert (split["split"] != UNUSED).all(), "the split given is not changed"


@pytest.mark.parametrize(("given", "parsed"), [
    ("all,10,5,10", ("5", "10", "all")),
    ((25, "ALL", 5), ("5", "25", "all")),
    (" 3 , 40 ", ("3", "40")),
    (8, ("8",)),
    ("", ()),
])
def test_train_sizes_are_parsed_sorted_and_deduplicated(given, parsed):
    assert CompareConfig(train_sizes=given).train_sizes == parsed


@pytest.mark.parametrize(("options", "message"), [
    (dict(train_sizes="5,ten"), "train_sizes='5,ten' is not valid ('ten'): give images per class"),
    (dict(train_sizes="0,all"), "('0')"),
    (dict(train_sizes="2.5"), "('2.5')"),
    (dict(train_sizes="-3"), "('-3')"),
    (dict(train_sizes="1,5"), "whole numbers of at least 2 (features' cross-validation needs 2 per class)"),
    (dict(train_sizes="5,all", repeats=3), "repeats=3 and train_sizes=5,all cannot be combined: give one or the"),
])
def test_train_sizes_errors_are_one_line_and_name_the_option(options, message):
    with pytest.raises(TransferError, match="train_sizes") as e:
        CompareConfig(**options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_one_image_per_class_is_allowed_without_the_features_strategy():
    cfg = CompareConfig(train_sizes="1,all", strategies="finetune,scratch")
    assert cfg.train_sizes == ("1", "all")


def test_cli_names_the_flag(tmp_path):
    result = CliRunner().invoke(cli.main, ["compare", "--data", "digits", "--out", str(tmp_path / "run"),
                                           "--train-sizes", "5,x"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: --train-sizes '5,x' is not valid ('x')") and result.output.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_learning_curve_end_to_end_on_tiny_data(tmp_path, tiny_backbone):
    data = colour_folder(tmp_path / "data", n=8, splits=("train", "val", "test"))
    out = tmp_path / "run"
    args = ["compare", "--data", str(data), "--out", str(out), "--train-sizes", "all,10,2,4", "--strategies",
            "features,finetune", "--classifier", "logreg", "--freeze", "all", "--head-epochs", "1", "--epochs", "0",
            "--image-size", "32", "--batch-size", "8", "--no-augment", "--precision", "float32", "--backbone", "tiny"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "learning curve, every size scored on the same 16 test images:" in result.output
    assert f"Report: {out / 'learning-curve.csv'}" in result.output and "Verdict: " in result.output
    # 10 per class is more than there are (8): it takes every training image, as `all` does, so it is left out
    assert "training images per class: blue 8, red 8; a size above a class's count takes all of that class" \
        in result.output
    assert "train size 10 takes the same 16 training images as size all: left out" in result.output
    assert not (out / "size-10").exists()
    curve = pd.read_csv(out / "learning-curve.csv", dtype={"train_size": str})
    assert list(curve["train_size"].unique()) == ["2", "4", "all"]
    assert curve.groupby("train_size")["model"].apply(set).map(len).eq(2).all(), "both models at every size"
    per_size = curve.drop_duplicates("train_size").set_index("train_size")
    assert per_size["n_train"].to_dict() == {"2": 4, "4": 8, "all": 16}, "smaller sizes trained on fewer images"
    assert per_size["mean_images_per_class"].to_dict() == {"2": 2, "4": 4, "all": 8}
    assert (curve["n_test"] == 16).all()
    splits = {s: pd.read_csv(out / f"size-{s}" / "split.csv", keep_default_na=False) for s in ("2", "4", "all")}
    tests = {s: set(t.loc[t["split"] == "test", "path"]) for s, t in splits.items()}
    assert len(tests["all"]) == 16 and tests["2"] == tests["4"] == tests["all"], "the same test images"
    trains = {s: set(t.loc[t["split"] == "train", "path"]) for s, t in splits.items()}
    assert trains["2"] < trains["4"] < trains["all"], "nested"
    for s in ("2", "4", "all"):  # what each model was scored on and trained on, from its own sub-run
        for sub in ("tiny/classify", "tiny/finetune-all"):
            assert set(pd.read_csv(out / f"size-{s}" / sub / "predictions.csv")["path"]) == tests["all"]
        n_train = pd.read_csv(out / f"size-{s}" / "tiny" / "finetune-all" / "metrics.csv")["n_train"]
        assert n_train.iloc[0] == len(trains[s])
    assert list(cached_images(splits["all"]["path"]).values()) == [len(splits["all"])], "one CNN pass for every size"
    assert (out / "plots" / "learning-curve.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((out / "config.json").read_text())
    assert config["train_sizes_run"] == ["2", "4", "all"]
    assert config["compare"]["train_sizes"] == ["2", "4", "10", "all"]
    assert config["verdict"] in result.output


def _curve(rows):
    """A hand-made learning curve: (size, images per class, model, strategy, accuracy, p vs the size's best)."""
    table = pd.DataFrame(rows, columns=["train_size", "mean_images_per_class", "model", "strategy", "accuracy",
                                        "p_vs_recommended"])
    return table.assign(min_images_per_class=table["mean_images_per_class"], n_train=table["mean_images_per_class"] * 2,
                        train_seconds=1.0)


CROSSING = [
    ("5", 5, "features + logreg", "features", 0.80, np.nan), ("5", 5, "fine-tuned", "finetune", 0.60, 0.01),
    ("5", 5, "scratch CNN", "scratch", 0.50, 0.001),
    ("10", 10, "features + logreg", "features", 0.85, np.nan), ("10", 10, "fine-tuned", "finetune", 0.84, 0.8),
    ("10", 10, "scratch CNN", "scratch", 0.60, 0.001),
    ("25", 25, "fine-tuned", "finetune", 0.92, np.nan), ("25", 25, "features + logreg", "features", 0.90, 0.5),
    ("25", 25, "scratch CNN", "scratch", 0.70, 0.001),
    ("all", 60.5, "fine-tuned", "finetune", 0.97, np.nan), ("all", 60.5, "features + svm", "features", 0.91, 0.02),
    ("all", 60.5, "features + logreg", "features", 0.90, 0.01), ("all", 60.5, "scratch CNN", "scratch", 0.80, 0.001),
]


def test_verdict_names_the_crossover():
    line = learning_curve_verdict(_curve(CROSSING))
    assert line == ("below ~25 images per class, features + logreg (0.800 at 5 to 0.850 at 10 images per class); "
                    "from 25 on, fine-tuned (0.920 at 25 to 0.970 at 60.5 images per class); the lead over the next "
                    "strategy's best model is significant (McNemar p < 0.05) at sizes 5 and all, within noise at "
                    "sizes 10 and 25.")


def test_verdict_without_a_crossover_and_a_leader_that_crosses_back():
    # Without fine-tuning, each size's most accurate features row is the recommended one (its p-value empty).
    steady = [r[:5] + (np.nan if r[2] in ("features + logreg", "features + svm") and r[0] in ("25", "all")
                       and r[4] >= 0.91 or (r[0] == "25" and r[2] == "features + logreg") else r[5],)
              for r in CROSSING if r[3] != "finetune"]
    line = learning_curve_verdict(_curve(steady))
    assert line.startswith("features + logreg then features + svm leads at every size (0.800 at 5 to 0.910 at 60.5 ")
    assert line.endswith("is significant at every size (McNemar p < 0.05).")
    back = CROSSING[:9] + [("50", 50, "fine-tuned", "finetune", 0.95, np.nan),
                           ("50", 50, "features + logreg", "features", 0.90, 0.03),
                           ("all", 100, "features + logreg", "features", 0.99, np.nan),
                           ("all", 100, "fine-tuned", "finetune", 0.98, 0.9)]
    line = learning_curve_verdict(_curve(back))
    assert "; from 25 to below ~100, fine-tuned (0.920 at 25 to 0.950 at 50 images per class); from 100 on, " \
           "features + logreg (0.990 at 100 images per class);" in line


def test_verdict_with_one_strategy_and_without_p_values():
    only = _curve([r for r in CROSSING if r[3] == "features"]).drop(columns="p_vs_recommended")
    assert learning_curve_verdict(only) == ("only features ran: features + logreg then features + svm (0.800 at 5 "
                                            "to 0.910 at 60.5 images per class).")


def test_summary_keeps_every_model_at_every_size_and_the_plot_draws_it(tmp_path):
    curve = _curve(CROSSING)
    tables = [rows for _, rows in curve.groupby("train_size", sort=False)]
    summary, line = summarise_train_sizes(tables)
    assert len(summary) == len(CROSSING) and line == learning_curve_verdict(curve)
    assert list(summary.columns[:4]) == ["train_size", "mean_images_per_class", "min_images_per_class", "n_train"]
    with_ci = summary.assign(accuracy_ci_low=summary["accuracy"] - 0.05, accuracy_ci_high=summary["accuracy"] + 0.03)
    png = plots.learning_curve_png(with_ci, tmp_path / "plots" / "learning-curve.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
