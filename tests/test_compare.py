import base64
import html
import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from tests.conftest import ROOT, cached_images, colour_folder, patch_stage
from transfer import CompareConfig, compare
from transfer.comparison._verdict import COMPARE_COLUMNS, recommended_model, scored_table, verdict
from transfer.errors import TransferError

# The tiny test backbone (tests/_tiny.py; its 32 features): what is tested here is the comparison, not ImageNet.
pytestmark = pytest.mark.usefixtures("tiny_backbone")
TINY_BACKBONE, FEATURES = "tiny", 32
TINY = dict(backbones=TINY_BACKBONE, image_size=32, batch_size=8, precision="float32", head_epochs=1, epochs=1,
            augment=False,
            scratch_size=16, scratch_epochs=2, classifiers="logreg,knn")


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = colour_folder(root / "data", n=8, splits=("train", "val", "test"))
    run = root / "run"
    table, line = compare(data, run, CompareConfig(freeze="all,none", **TINY), progress=False, log=quiet)
    return data, run, table, line


def test_compare_report_rows_and_statistics(tiny_run):
    _, run, table, line = tiny_run
    saved = pd.read_csv(run / "compare.csv", keep_default_na=False)
    assert list(saved.columns) == COMPARE_COLUMNS
    assert len(table) == 5  # 2 classifiers + 2 freeze settings + scratch
    assert sorted(table["strategy"]) == ["features", "features", "finetune", "finetune", "scratch"]
    assert set(table.loc[table["strategy"] == "finetune", "freeze"]) == {"all", "none"}
    assert set(table.loc[table["strategy"] == "features", "classifier"]) == {"logreg", "knn"}
    assert (table["eval_split"] == "test").all() and (table["n_test"] == 16).all()
    acc = table["accuracy"].to_numpy()
    # The recommended model first, then the other strategies' representatives, then the rest; each group best first.
    assert list(table["role"]) == ["recommended", "representative", "representative", "information", "information"]
    for _, group in table.iloc[1:].groupby("role"):
        assert (np.diff(group["accuracy"].to_numpy()) <= 0).all()
    assert set(table.loc[table["role"] != "information", "strategy"]) == {"features", "finetune", "scratch"}
    assert (table["accuracy_ci_low"] <= acc + 1e-9).all() and (acc <= table["accuracy_ci_high"] + 1e-9).all()
    assert np.isnan(table["p_vs_recommended"].iloc[0])
    assert table["differs_from_recommended"].iloc[0] == "recommended"
    p = table["p_vs_recommended"].iloc[1:]
    assert ((p >= 0) & (p <= 1)).all()
    assert (table["inference_images_per_second"] > 0).all()
    assert (table["trainable_params"] > 0).all()
    assert (table["train_seconds"] > 0).all()
    # Features rows are a classifier on the frozen CNN: their trainable parameters are the classifier's:
    # the scaler's mean, var and scale (3 x 32) and a binary logistic regression's coef (32) + intercept.
    assert table.loc[table["classifier"] == "logreg", "trainable_params"].iloc[0] == 3 * FEATURES + FEATURES + 1
    # The head alone: a dense 32 -> 2 softmax layer.
    assert table.loc[table["freeze"] == "all", "trainable_params"].iloc[0] == FEATURES * 2 + 2
    assert line.endswith(".") and "\n" not in line
    assert json.loads((run / "config.json").read_text())["verdict"] == line


def test_compare_shares_one_split_and_one_feature_cache(tiny_run):
    _, run, table, _ = tiny_run
    top = (run / "split.csv").read_bytes()
    for sub in table["run_dir"].unique():
        assert (run / sub / "split.csv").read_bytes() == top
    # classify, the head stage of both fine-tuning runs and the t-SNE all used the same cached CNN pass.
    split = pd.read_csv(run / "split.csv")
    assert list(cached_images(split["path"]).values()) == [len(split)]
    assert not (run / "features").exists() and not (run / TINY_BACKBONE / "classify" / "features").exists()


def test_compare_writes_every_plot(tiny_run):
    _, run, _, _ = tiny_run
    names = {p.name for p in (run / "plots").glob("*.png")}
    # freeze all with the (default) probe head trains no epoch: no training curves to draw for it
    assert names == {
        "confusion-features.png", "confusion-finetune.png", "confusion-scratch.png", "accuracy-vs-time.png",
        f"curves-{TINY_BACKBONE}-finetune-none.png", f"tsne-{TINY_BACKBONE}.png", "reliability.png",
    }
    for name in names:
        assert (run / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_again_reuses_the_runs(tiny_run, monkeypatch):
    data, run, table, _ = tiny_run
    from transfer import scratch
    from transfer.backbones import _registry as backbones
    from transfer.comparison import _figures as compare_plots
    from transfer.features import _classifiers as classifiers
    from transfer.features import _extract as features
    from transfer.finetuning import _finetune as finetuning
    from transfer.finetuning import _model as finetune_model
    from transfer.inspection import _drawing as inspection

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished sub-run was trained, evaluated or drawn again")

    monkeypatch.setattr(features, "run_extraction", must_not_run)
    monkeypatch.setattr(classifiers, "fit_classifier", must_not_run)
    monkeypatch.setattr(scratch, "scratch_run", must_not_run)
    monkeypatch.setattr(finetuning, "finetune_run", must_not_run)
    monkeypatch.setattr(finetune_model, "build_model", must_not_run)  # no backbone rebuilt
    patch_stage(monkeypatch, backbones, "build_backbone", must_not_run)
    monkeypatch.setattr(compare_plots, "tsne_plot", must_not_run)  # the slow plots, drawn from the same inputs
    patch_stage(monkeypatch, inspection, "draw_models", must_not_run)  # inside the networks: the same models
    plots_before = {p.name: p.read_bytes() for p in (run / "plots").glob("*.png") if "curves" not in p.name}
    inside_before = {p.name: p.read_bytes() for p in (run / "inspect").iterdir()}
    lines = []
    again, _ = compare(data, run, CompareConfig(freeze="all,none", **TINY), progress=False, log=lines.append)
    assert sum("reusing" in line for line in lines) == 4  # classify, both fine-tunings, scratch
    # Every number is the one measured when the models were trained.
    assert again.equals(table)
    after = {p.name: p.read_bytes() for p in (run / "plots").glob("*.png") if "curves" not in p.name}
    assert after.keys() == plots_before.keys()
    assert after[f"tsne-{TINY_BACKBONE}.png"] == plots_before[f"tsne-{TINY_BACKBONE}.png"]
    assert {p.name: p.read_bytes() for p in (run / "inspect").iterdir()} == inside_before  # copied, not redrawn
    seconds = json.loads((run / "config.json").read_text())["seconds"]
    assert list(seconds) == [f"{TINY_BACKBONE} features", f"{TINY_BACKBONE} finetune-all",
                             f"{TINY_BACKBONE} finetune-none", "scratch", "report and plots"]


def test_compare_trains_again_what_changed(tiny_run, tmp_path):
    import shutil

    data, shared, table, _ = tiny_run
    run = shutil.copytree(shared, tmp_path / "run")  # a copy: the fixture's run stays as the other tests see it
    lines = []
    again, _ = compare(data, run, CompareConfig(freeze="all", strategies="features,scratch",
                                                **dict(TINY, scratch_epochs=1)), progress=False, log=lines.append)
    assert any(line.startswith("baseline: a small CNN from random init") for line in lines)
    assert any("reusing" in line and "classify" in line for line in lines)


def test_a_classify_sub_run_made_by_other_pipelines_is_fitted_again(tmp_path):
    data = colour_folder(tmp_path / "data", n=6, splits=("train", "val"))
    run = tmp_path / "run"
    options = dict(TINY, strategies="features", classifiers="knn")
    compare(data, run, CompareConfig(**options), progress=False, log=quiet)
    config = run / TINY_BACKBONE / "classify" / "config.json"
    saved = json.loads(config.read_text())
    saved["pipelines"]["knn"][0] = "StandardScaler"  # as a version before kNN moved to unit-length features wrote
    config.write_text(json.dumps(saved))
    lines = []
    compare(data, run, CompareConfig(**options), progress=False, log=lines.append)
    assert not any("reusing" in line for line in lines)
    assert json.loads(config.read_text())["pipelines"]["knn"][0] == "Normalizer"


def test_a_failure_while_plotting_keeps_the_previous_report_and_plots(tmp_path, monkeypatch):
    data = colour_folder(tmp_path / "data", n=6, splits=("train", "val"))
    run = tmp_path / "run"
    options = dict(TINY, strategies="features", classifiers="logreg")
    compare(data, run, CompareConfig(**options), progress=False, log=quiet)
    before = {p.name: p.read_bytes() for p in [run / "compare.csv", *(run / "plots").glob("*.png")]}
    from transfer.reports import plots

    real = plots.accuracy_vs_time_png

    def half_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(plots, "accuracy_vs_time_png", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        compare(data, run, CompareConfig(**dict(options, classifiers="logreg,knn")), progress=False, log=quiet)
    after = {p.name: p.read_bytes() for p in [run / "compare.csv", *(run / "plots").glob("*.png")]}
    assert after == before


def test_freeze_values_stay_names_in_the_report(tmp_path):
    data = colour_folder(tmp_path / "data", n=6, splits=("train", "val"))
    table, _ = compare(data, tmp_path / "run", CompareConfig(**dict(TINY, strategies="finetune", freeze="0.50,all",
                                                                    epochs=0)), progress=False, log=quiet)
    assert sorted(table["freeze"]) == ["0.50", "all"]
    assert sorted(pd.read_csv(tmp_path / "run" / "compare.csv", dtype={"freeze": str})["freeze"]) == ["0.50", "all"]


def _preds(y, correct):
    return pd.DataFrame({"true_label": y, "pred_label": np.where(correct, y, "x")})


def _table(rows):
    """Rows of (strategy, model, accuracy, train_seconds[, classifier, selection_score])."""
    rows = [list(r) + [None] * (6 - len(r)) for r in rows]
    table = pd.DataFrame(rows, columns=["strategy", "model", "accuracy", "train_seconds", "classifier",
                                        "selection_score"])
    return table.assign(classifier=table["classifier"].fillna(""), trainable_params=1000,
                        selection_score=table["selection_score"].astype(float).fillna(0.9),
                        selected_on="validation accuracy of the kept epoch")


def test_verdict_within_noise_recommends_the_cheapest_and_says_what_these_images_can_tell():
    y = np.array(["a", "b"] * 50)
    rng = np.random.default_rng(0)
    feat_ok = rng.random(100) < 0.95
    ft_ok = feat_ok.copy()
    ft_ok[np.flatnonzero(~feat_ok)[:2]] = True  # fine-tuning gets two more right: not significant
    preds = {"f": _preds(y, feat_ok), "t": _preds(y, ft_ok), "s": _preds(y, rng.random(100) < 0.6), "_y_true": y}
    table = _table([["finetune", "t", ft_ok.mean(), 800.0], ["features", "f", feat_ok.mean(), 100.0],
                    ["scratch", "s", 0.6, 50.0]])
    line = verdict(table, preds, protocol="On one split (100 test images)")
    assert line.startswith("On one split (100 test images): t (") and ") and f (" in line and "are within noise" in line
    assert "with 100 scored images, differences below 0." in line and "cannot be told from noise" in line
    assert "pretraining bought" in line
    assert "use f (" in line and "the cheapest to train of the models within noise of the most accurate (t" in line
    assert "(at 1/8 of the most accurate model's training time)" in line


def test_one_story_the_first_row_is_the_recommended_model_and_the_sentence_names_it():
    y = np.array(["a", "b"] * 50)
    ft_ok = np.ones(100, bool)
    feat_ok = ft_ok.copy()
    feat_ok[:3] = False  # features: within noise of fine-tuning
    scratch_ok = ft_ok.copy()
    scratch_ok[-4:] = False  # scratch: within noise of the fine-tuned model too, and the fastest this time
    preds = {"f": _preds(y, feat_ok), "t": _preds(y, ft_ok), "s": _preds(y, scratch_ok), "_y_true": y}
    table, _ = scored_table(_table([["finetune", "t", 0, 800.0], ["features", "f", 0, 100.0],
                                    ["scratch", "s", 0, 50.0]]), preds)
    line = verdict(table, preds)
    # All three within noise: the cheapest kind to train (features before the scratch CNN before fine-tuning),
    # not the one whose seconds happened to be fewest in this run.
    assert table["model"].iloc[0] == "f" and table["role"].iloc[0] == "recommended"
    assert "use f (0.970): the cheapest to train of the models within noise of the most accurate (t" in line
    assert "the scratch CNN (0.960) is within noise of t (1.000, p=" in line
    assert "pretraining bought" not in line


def test_verdict_when_the_scratch_cnn_wins():
    y = np.array(["a", "b"] * 50)
    scratch_ok = np.ones(100, bool)
    ft_ok = np.arange(100) >= 30
    feat_ok = np.arange(100) >= 32
    preds = {"f": _preds(y, feat_ok), "t": _preds(y, ft_ok), "s": _preds(y, scratch_ok), "_y_true": y}
    table = _table([["scratch", "s", 1.0, 50.0], ["finetune", "t", 0.7, 800.0], ["features", "f", 0.68, 100.0]])
    line = verdict(table, preds)
    assert "the scratch CNN (1.000) beats t (0.700, p=" in line and "pretraining did not help here" in line
    assert line.endswith("use s (1.000): the most accurate, beyond noise.")


def test_verdict_significant_difference():
    y = np.array(["a", "b"] * 50)
    ft_ok = np.ones(100, bool)
    feat_ok = np.arange(100) >= 30  # 30 more errors, all where fine-tuning is right
    preds = {"f": _preds(y, feat_ok), "t": _preds(y, ft_ok), "_y_true": y}
    table = _table([["finetune", "t", 1.0, 300.0], ["features", "f", 0.7, 100.0]])
    line = verdict(table, preds)
    assert line.startswith("t (1.000) beats f (0.700; difference +0.300, 95 % interval +0.2")
    assert line.endswith("use t (1.000): the most accurate, beyond noise.")


def test_strategy_2_is_represented_by_its_cross_validated_choice_not_its_test_score():
    """The planted case: the RBF SVM scores best on the test images, logistic regression best by cross-validation
    on the training images; the verdict, the recommendation and export's default take logistic regression."""
    from transfer.serving._export import _default_row

    y = np.array(["a", "b"] * 50)
    rbf_ok, logreg_ok, ft_ok = np.arange(100) >= 2, np.arange(100) >= 12, np.arange(100) >= 10
    preds = {"rbf": _preds(y, rbf_ok), "logreg": _preds(y, logreg_ok), "t": _preds(y, ft_ok), "_y_true": y}
    frame = _table([["features", "rbf", 0, 10.0, "rbf_svm", 0.90], ["features", "logreg", 0, 5.0, "logreg", 0.95],
                    ["finetune", "t", 0, 100.0, "", 0.92]])
    table, _ = scored_table(frame, preds)
    roles = dict(zip(table["model"], table["role"], strict=True))
    assert roles == {"logreg": "recommended", "t": "representative", "rbf": "information"}
    assert table.loc[table["model"] == "rbf", "accuracy"].iloc[0] > table["accuracy"].iloc[0], "rbf tests best"
    line = verdict(table, preds)
    assert "logreg (0.880)" in line and "rbf" not in line and "use logreg" in line
    assert recommended_model(table, preds) == "logreg"
    # A recommended model that cannot be exported falls back to its strategy's cross-validated choice, not the
    # test-best row.
    table.loc[table["model"] == "logreg", "classifier"] = "knn"
    frame2 = table.assign(classifier=table["classifier"].replace({"rbf_svm": "mlp"}))
    frame2 = pd.concat([frame2, frame2.iloc[[2]].assign(model="lin", classifier="linear_svm", selection_score=0.91,
                                                        accuracy=0.5)], ignore_index=True)
    assert _default_row(frame2, "logreg", log=quiet)["model"] == "lin"


@pytest.mark.parametrize(("options", "message"), [
    (dict(strategies="features,svm"), "Unknown strategy 'svm'"),
    (dict(backbones="resnet5"), "Unknown backbone 'resnet5'"),
    (dict(classifiers="logreg,forest"), "Unknown classifier 'forest'"),
    (dict(freeze=""), "freeze is empty"),
    (dict(scratch_size=4), "too small for the scratch CNN"),
    (dict(epochs=-1), "epochs=-1"),
])
def test_compare_config_errors(options, message):
    with pytest.raises(TransferError, match=message):
        CompareConfig(**options)


def test_compare_refuses_a_bad_freeze_before_training(tmp_path):
    data = colour_folder(tmp_path / "data", n=4)
    with pytest.raises(TransferError, match="block99"):
        compare(data, tmp_path / "run", CompareConfig(freeze="none,block99", **TINY), progress=False, log=quiet)
    assert not (tmp_path / "run").exists()


def test_compare_refuses_another_commands_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"command": "classify"}')
    with pytest.raises(TransferError, match="holds a `classify` run"):
        compare("digits", tmp_path / "run", CompareConfig(**TINY), progress=False, log=quiet)


@pytest.mark.parametrize(("args", "message"), [
    (["--strategies", "features,svm"], "Unknown strategy 'svm'"),
    (["--data", "/nonexistent/folder"], "--data '/nonexistent/folder' is not a folder"),
    (["--backbone", "resnet5"], "Unknown backbone 'resnet5'"),
])
def test_cli_compare_errors_are_one_line_and_fast(tmp_path, args, message):
    code = ("import sys, json, cli\nfrom click.testing import CliRunner\n"
            "r = CliRunner().invoke(cli.main, ['compare', '--out', sys.argv[1]] + json.loads(sys.argv[2]))\n"
            "print(r.exit_code, repr(r.output))\nprint('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run"), json.dumps(args)], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout.splitlines()
    assert out[0].startswith("2 ") and out[0][2:].lstrip("'\"").startswith("Error: ")
    assert message in out[0] and "Traceback" not in out[0]
    assert out[0].count("\\n") == 1, "one line"
    assert out[1] == "False"
    assert not (tmp_path / "run").exists()


def test_cli_compare_prints_table_verdict_and_paths(tmp_path):
    data = colour_folder(tmp_path / "data", n=6, splits=("train", "val"))
    out = tmp_path / "run"
    args = ["compare", "--data", str(data), "--out", str(out), "--backbone", "tiny", "--image-size", "32",
            "--batch-size", "8",
            "--classifier", "logreg", "--head-epochs", "1", "--epochs", "0", "--freeze", "all",
            "--no-augment", "--precision", "float32", "--scratch-size", "16", "--scratch-epochs", "1"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "test images scored: 12; the recommended model first" in result.output
    assert "protocol: one split (the source's own test split is honoured)" in result.output
    assert "Verdict: " in result.output
    assert f"Report: {out / 'report.html'} (open it in a browser); the table: {out / 'compare.csv'}" in result.output
    assert f"Plots:  {out / 'plots'}/" in result.output and "tsne-tiny.png" in result.output
    assert len(pd.read_csv(out / "compare.csv")) == 3


class _Page(HTMLParser):
    """The parts of report.html a reader relies on: text by section, table rows, images and their captions."""

    def __init__(self):
        super().__init__()
        self.stack, self.verdict, self.images, self.captions, self.tables = [], "", [], [], {}
        self.table = self.row = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.stack.append((tag, attrs))
        if tag == "table":
            self.table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self.table is not None:
            self.row = []
            self.table.append(self.row)
        elif tag in ("td", "th") and self.row is not None:
            self.row.append("")
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass
        if tag == "table":
            self.table = self.row = None

    def handle_data(self, data):
        classes = [a.get("class", "") for _, a in self.stack]
        if "verdict" in classes:
            self.verdict += data
        if any(t == "figcaption" for t, _ in self.stack):
            self.captions.append(data)
        if self.row is not None and self.stack and self.stack[-1][0] in ("td", "th", "code"):
            self.row[-1] += data.strip()


def test_report_html_shows_the_verdict_table_plots_and_split(tiny_run):
    _, run, table, line = tiny_run
    text = (run / "report.html").read_text()
    page = _Page()
    page.feed(text)
    assert page.verdict.strip() == line
    results = page.tables["results"]
    saved = pd.read_csv(run / "compare.csv", keep_default_na=False)
    assert [r[results[0].index("model")] for r in results[1:]] == list(saved["model"]), "same rows, same order"
    assert [float(r[results[0].index("accuracy")]) for r in results[1:]] == pytest.approx(saved["accuracy"], abs=1e-4)
    assert [r[results[0].index("differs from recommended")] for r in results[1:]] == \
        list(saved["differs_from_recommended"])
    use = json.loads((run / "config.json").read_text())["recommended_model"]
    assert saved["model"].iloc[0] == use and results[1][results[0].index("role")] == "recommended", "one story"
    marked = re.findall(r'<tr class="[^"]*recommended">(.*?)</tr>', text, re.S)
    assert len(marked) == 1 and f"<td>{html.escape(use)}</td>" in marked[0], "the verdict's model is marked"
    plots = sorted(p.name for p in (run / "plots").glob("*.png"))
    inside = sorted(p.name for p in (run / "inspect").glob("*.png") if p.name.startswith(("gradcam-", "kernels",
                                                                                           "block-change")))
    # Inside the network: Grad-CAM of each strategy's representative, the kernels and the blocks' change
    assert {"gradcam-features.png", "gradcam-finetune.png", "gradcam-scratch.png", "kernels.png"} <= set(inside)
    assert sorted(i["alt"] for i in page.images) == sorted(plots + inside)
    for img in page.images:  # embedded: the page needs no other file
        assert base64.b64decode(img["src"].removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(c.strip() for c in page.captions) and len(page.captions) >= 2 * len(plots)
    split = pd.read_csv(run / "split.csv")
    sizes = {r[0]: r[1:] for r in page.tables["split-sizes"][1:]}
    assert sizes["all"] == [str((split["split"] == s).sum()) for s in ("train", "val", "test")]
    phases = [r[0] for r in page.tables["seconds"][1:]]
    assert "report and plots" in phases and "scratch" in phases
    assert "http://" not in text and "https://" not in text, "no network"


def test_tensorboard_logs_of_every_trained_model(tiny_run):
    from tests.test_finetune import epoch_scalars

    _, run, _, _ = tiny_run
    assert len(epoch_scalars(run / "scratch" / "logs" / "scratch" / "train")) >= 1
    # freeze none trains stage 2 (its head is the linear probe, fitted by scikit-learn: no Keras epochs);
    # freeze all has nothing left to train after the probe.
    tuned = run / TINY_BACKBONE / "finetune-none" / "logs"
    assert epoch_scalars(tuned / "finetune" / "train") == [0]
    assert not (run / TINY_BACKBONE / "finetune-all" / "logs").exists()


def test_compare_without_pretrained_weights_skips_the_kernel_plot(tmp_path):
    data = colour_folder(tmp_path / "data", n=6, splits=("train", "val"))
    lines = []
    compare(data, tmp_path / "run", CompareConfig(**dict(TINY, strategies="finetune", freeze="none", weights="none",
                                                         epochs=1)), progress=False, log=lines.append)
    said = "tiny fine-tuned (freeze none) started from random weights: no pretrained kernels to compare"
    assert any(line.startswith(said) for line in lines)
    assert not (tmp_path / "run" / "inspect" / "kernels.png").exists()
    assert (tmp_path / "run" / "inspect" / "gradcam-finetune.png").exists() and said in (
        tmp_path / "run" / "report.html").read_text()
    assert (tmp_path / "run" / "compare.csv").exists()


def test_a_fine_tuning_that_trains_nothing_still_gets_a_report(tmp_path):
    data = colour_folder(tmp_path / "data", n=4, splits=("train", "val"))
    table, _ = compare(data, tmp_path / "run", CompareConfig(**dict(TINY, strategies="finetune", freeze="all",
                                                                    head_epochs=0)), progress=False, log=quiet)
    assert len(table) == 1 and (tmp_path / "run" / "compare.csv").exists()
    assert not list((tmp_path / "run" / "plots").glob("curves-*.png"))  # no epoch ran: no curves to draw


def test_repeats_report_mean_spread_and_paired_differences_over_seeded_splits(tmp_path):
    data = colour_folder(tmp_path / "data", n=12, splits=("all",)) / "all"  # no splits of its own
    run = tmp_path / "run"
    cfg = CompareConfig(**dict(TINY, strategies="features,finetune", freeze="all", epochs=0, classifiers="logreg",
                               repeats=3, protocol="split"))
    summary, line = compare(data, run, cfg, progress=False, log=quiet)
    every = pd.read_csv(run / "repeats-all.csv")
    assert sorted(every["repeat"].unique()) == [1, 2, 3] and len(every) == 3 * 2
    assert set(summary["model"]) >= {"features (each repeat's choice)", "fine-tuned (each repeat's choice)"}
    tests = [frozenset(pd.read_csv(run / f"repeat-{k}" / "split.csv").query("split == 'test'")["path"])
             for k in (1, 2, 3)]
    assert len(set(tests)) == 3  # three different seeded splits
    for r in summary[summary["role"] == "information"].itertuples():
        acc = every.loc[every["model"] == r.model, "accuracy"]
        assert r.mean_accuracy == pytest.approx(acc.mean(), abs=1e-4) and r.repeats == 3
        assert r.min_accuracy == pytest.approx(acc.min(), abs=1e-4)
        assert r.diff_ci_low <= r.diff_vs_best <= r.diff_ci_high or r.differs_from_best == "best"
    assert summary["differs_from_best"].iloc[0] == "best"
    assert "over 3 splits" in line and "One repeat took" in line
    assert (run / "plots" / "repeats.png").read_bytes()[:4] == b"\x89PNG"
    # one CNN pass for all repeats: the cache is shared, not made per repeat
    paths = set().union(*(pd.read_csv(run / f"repeat-{k}" / "split.csv")["path"] for k in (1, 2, 3)))
    assert list(cached_images(paths).values()) == [len(paths)]
    assert json.loads((run / "config.json").read_text())["repeats"] == 3


def test_repeats_on_one_test_split_pair_the_images_not_the_repeats():
    from transfer.comparison._verdict import summarise_repeats

    paths = [f"img{i}.png" for i in range(150)]
    truth = np.array(["a", "b"] * 75)

    def preds(wrong):  # a model that misses the images numbered in ``wrong``
        pred = truth.copy()
        pred[list(wrong)] = np.where(truth[list(wrong)] == "a", "b", "a")
        return pd.DataFrame({"true_label": truth, "pred_label": pred}, index=paths)

    models = {"features": ("m features + logreg", range(8)), "finetune": ("m fine-tuned (freeze none)", range(9))}
    tables, predictions = [], []
    for k in (1, 2, 3):  # the same test images each time, and fine-tuning misses one image more every time
        tables.append(pd.DataFrame([{"strategy": s, "model": m, "accuracy": 1 - len(w) / 150, "train_seconds": 1.0,
                                     "repeat": k} for s, (m, w) in models.items()]))
        predictions.append({m: preds(w) for m, w in models.values()})
    over_repeats, _ = summarise_repeats(tables)
    assert over_repeats.loc[1, "differs_from_best"] == "yes"  # zero spread over repeats: "certain", wrongly
    summary, line = summarise_repeats(tables, predictions)
    row = summary.iloc[1]
    assert row["differs_from_best"] == "no (within noise)" and row["diff_ci_low"] < 0 < row["diff_ci_high"]
    assert "within noise" in line and "over the 3 repeats' shared test images" in line


def test_no_conv_kernels_plot_of_a_run_that_kept_its_first_conv_layer_frozen(tiny_run, tmp_path):
    from transfer import conv_kernels_plot

    _, run, _, _ = tiny_run
    with pytest.raises(TransferError, match="stem_conv stayed frozen in finetune-all .--freeze all.; --freeze none"):
        conv_kernels_plot(run / TINY_BACKBONE / "finetune-all", tmp_path / "k.png")
    assert not (tmp_path / "k.png").exists()


def test_the_same_compare_in_two_fresh_processes_gives_the_same_numbers(tmp_path, tiny_imagenet):
    """Seeds for the split, the shuffles, the initial weights and (stateless, per batch) the augmentations: the
    same command gives the same compare.csv, augmentation on, also when the first run is a machine's first (it
    exports and times the frozen layers' engines before training; that moved Keras's random layers' stream)."""
    import os

    data = colour_folder(tmp_path / "data", n=16, splits=("train", "val", "test"))
    args = ["compare", "--data", str(data), "--backbone", TINY_BACKBONE, "--image-size", "64", "--batch-size", "8",
            "--classifier", "logreg,knn",
            "--epochs", "3", "--patience", "0", "--augment", "--precision", "float32", "--scratch-size", "16",
            "--scratch-epochs", "2"]
    tables = []
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras-home")}  # empty for the first run: nothing kept yet
    for k in (1, 2):
        out = tmp_path / f"run-{k}"
        code = "import sys; from tests import _tiny; _tiny.run_cli(sys.argv[1], sys.argv[2:])"
        subprocess.run([sys.executable, "-c", code, str(tiny_imagenet), *args, "--out", str(out)], cwd=ROOT,
                       check=True, capture_output=True, env=env)
        tables.append(pd.read_csv(out / "compare.csv").drop(columns=["train_seconds", "inference_images_per_second"]))
        history = pd.read_csv(out / TINY_BACKBONE / "finetune-0.5" / "history.csv")
        assert len(history) == 3, "fine-tuning trained on augmented images"
    pd.testing.assert_frame_equal(tables[0], tables[1])
    scores = [pd.read_csv(tmp_path / f"run-{k}" / TINY_BACKBONE / "finetune-0.5" / "predictions.csv")["score"]
              for k in (1, 2)]
    assert (scores[0] == scores[1]).all(), "fine-tuning's scores to the last digit"


def test_the_recommendation_does_not_flip_with_the_hosts_speed():
    """Two representatives within noise: the cheaper kind (features before fine-tuning), whichever happened to
    train faster this time."""
    y = np.array(["a", "b"] * 50)
    ok = np.ones(100, bool)
    preds = {"f": _preds(y, ok), "t": _preds(y, ok), "_y_true": y}
    for f_seconds, t_seconds in ((10.0, 12.0), (12.0, 10.0), (30.0, 10.0)):
        frame = _table([["features", "f", 0, f_seconds, "logreg", 0.9], ["finetune", "t", 0, t_seconds]])
        frame.loc[frame["model"] == "t", "trainable_params"] = 10**6
        table, _ = scored_table(frame, preds)
        assert table["model"].iloc[0] == "f"
