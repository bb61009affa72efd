"""transfer inspect: Grad-CAM finds the evidence, activation maps are the network's own, kernels and blocks show
what fine-tuning changed. On the tiny test backbone (tests/_tiny.py): these take seconds."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from tests import _tiny
from transfer import ExtractConfig, FinetuneConfig
from transfer.backbones import REGISTRY
from transfer.features import classify
from transfer.finetuning import finetune
from transfer.inspection import (
    Model,
    activation_maps,
    grad_cam,
    heat_share,
    inspect_run,
    network,
    pretrained,
    receptive_fields,
)

SIZE = 48  # the tiny backbone's last map is 8 x 8 here


def patch_folder(root, n=40, seed=0):
    """Two classes decided only by the colour of a 10-pixel square in the top-left quadrant (red or blue); two
    squares of other colours (distractors) in two of the other quadrants, on grey noise."""
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    distractors = [(30, 200, 30), (235, 235, 235), (15, 15, 15), (60, 160, 60)]
    for split, count in (("train", n), ("val", n // 4), ("test", n // 4)):
        for label, colour in colours.items():
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.normal(110, 20, (SIZE, SIZE, 3))
                for q in rng.choice([1, 2, 3], size=2, replace=False):
                    r, c = (q // 2) * 24 + rng.integers(2, 12), (q % 2) * 24 + rng.integers(2, 12)
                    image[r:r + 10, c:c + 10] = distractors[rng.integers(len(distractors))]
                r, c = rng.integers(2, 9), rng.integers(2, 9)
                image[r:r + 10, c:c + 10] = colour
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / split / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny():
    REGISTRY["tiny"] = _tiny.ROW
    yield _tiny.ROW
    REGISTRY.pop("tiny", None)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """The patch set, and a features run (logistic regression) and a fine-tuning run (stem trained) on it, both
    from the tiny backbone pretrained on its stand-in for ImageNet (squares of six colours, the patch's and the
    distractors' among them, anywhere in the image). From a random start instead, a network that learned only
    "red or not" has no evidence *for* blue to show: measured over six runs, 0.28-0.75 of the heat lay in the
    patch's quadrant, against 0.90-0.95 pretrained (three seeds)."""
    root = tmp_path_factory.mktemp("patches")
    data = patch_folder(root / "data")
    weights = str(_tiny.pretrained_weights_file(root / "tiny.weights.h5", SIZE))
    quiet = dict(log=lambda *_: None)
    classify(data, root / "features", ExtractConfig(backbone="tiny", weights=weights, image_size=SIZE, batch_size=16),
             "logreg", progress=False, **quiet)
    finetune(data, root / "tuned", FinetuneConfig(backbone="tiny", weights=weights, image_size=SIZE, freeze="none",
                                                  batch_size=16, augment=False), **quiet)
    return root, data, weights


@pytest.mark.parametrize("kind", ["features", "finetune"])
def test_grad_cam_heat_for_the_true_class_lies_on_the_patch_that_decides_it(trained, kind):
    root, data, _ = trained
    model = Model(kind, kind, root / ("features" if kind == "features" else "tuned"), "logreg")
    net = network(model if kind == "features" else Model(kind, kind, model.run_dir))
    paths = sorted((data / "test").rglob("*.png"))
    truth = [list(net.classes).index(p.parent.name) for p in paths]
    heat, probabilities = grad_cam(net, net.pixels(paths), truth)
    assert (probabilities.argmax(axis=1) == truth).mean() >= 0.9  # it learned the patch
    share = heat_share(heat, (slice(0, SIZE // 2), slice(0, SIZE // 2)))
    assert share.mean() >= 0.6, share  # a quarter of the image holds most of the heat


def test_a_blank_image_gives_maps_constant_across_space_and_a_textured_one_does_not(tiny):
    net = pretrained("tiny", weights=None, image_size=SIZE)
    blank = np.full((1, SIZE, SIZE, 3), 128, np.uint8)
    textured = np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    maps = activation_maps(net, np.concatenate([blank, textured]))
    assert [m.layer for m in maps] == ["stem_activation", "block1_activation", "block2_activation", "top_activation"]
    for m in maps:
        spread = m.maps.max(axis=(1, 2)) - m.maps.min(axis=(1, 2))  # per image and channel
        assert spread[0].max() < 1e-5 and spread[1].max() > 1e-3, m.layer


def test_receptive_fields_grow_by_each_window_times_the_strides_before_it(tiny):
    fields = receptive_fields(pretrained("tiny", weights=None, image_size=SIZE).body)
    # 3x3 convolutions and 2x2 poolings: 3, +2 = 5, +1 = 6, +2*2 = 10, +1*2 = 12, +2*4 = 20
    assert [fields[n] for n in ("stem_conv", "block1_conv", "block1_pool", "block2_conv", "block2_pool",
                                "top_conv")] == [3, 5, 6, 10, 12, 20]


def test_inspect_a_fine_tuning_run_whose_stem_trained(trained):
    root, _, _ = trained
    done = inspect_run(root / "tuned", images=4, log=lambda *_: None)
    names = {p.name for p in done.files}
    assert {"gradcam-finetune.png", "gradcam.csv", "kernels.png", "block-change.png",
            "activations-finetune.png"} <= names and all(p.is_file() for p in done.files)
    assert not any("stayed frozen" in line for line in done.said)
    blocks = pd.read_csv(done.folder / "block-change.csv").set_index("block")
    assert blocks.loc["stem", "relative_change"] > 0 and blocks["trained"].all()
    shown = pd.read_csv(done.folder / "gradcam.csv")
    assert len(shown) == 4


def fine_tuned_and_inspected(trained, name, freeze, epochs):
    """A fine-tuning of the patch set from the tiny backbone's pretrained weights, and its inspection."""
    root, data, weights = trained
    finetune(data, root / name, FinetuneConfig(backbone="tiny", weights=weights, image_size=SIZE, freeze=freeze,
                                               epochs=epochs, batch_size=16, augment=False), log=lambda *_: None)
    return inspect_run(root / name, images=2, log=lambda *_: None)


def test_a_frozen_stem_is_said_in_one_line_and_only_the_trained_blocks_moved(trained):
    done = fine_tuned_and_inspected(trained, "frozen-stem", "block2", epochs=2)
    assert any(line.startswith("the stem (stem_conv) stayed frozen") for line in done.said)
    blocks = pd.read_csv(done.folder / "block-change.csv").set_index("block")
    assert blocks.loc["stem", "relative_change"] == 0 and not blocks.loc["stem", "trained"]
    assert blocks.loc["top", "relative_change"] > 0


def test_a_fine_tuning_that_kept_its_head_alone_says_so_instead_of_a_plot_of_zeros(trained):
    done = fine_tuned_and_inspected(trained, "head-only", "none", epochs=0)
    assert any(line.startswith("no block of ") and "no block-change plot" in line for line in done.said), done.said
    assert (pd.read_csv(done.folder / "block-change.csv")["relative_change"] == 0).all()
    assert not (done.folder / "block-change.png").exists()


def test_the_cli_inspects_a_run_and_refuses_a_wrong_layer_before_writing(trained):
    root, data, _ = trained
    mine = sorted((data / "val" / "red").iterdir())[:2]
    result = CliRunner().invoke(cli.main, ["inspect", str(root / "features"), "--images", "2", "--image",
                                           str(mine[0]), "--image", str(mine[1])])
    assert result.exit_code == 0 and "gradcam-features.png" in result.output, result.output
    assert (root / "features" / "inspect" / f"activations-pretrained-{mine[1].stem}.png").is_file()
    result = CliRunner().invoke(cli.main, ["inspect", str(root / "tuned"), "--layer", "stem_cnv",
                                           "--out", str(root / "elsewhere")])
    assert result.exit_code != 0 and result.output.count("\n") == 1 and "close matches: stem_conv" in result.output
    assert "Traceback" not in result.output and not (root / "elsewhere").exists()
    result = CliRunner().invoke(cli.main, ["inspect"])
    assert result.exit_code == 2 and "give either RUN_DIR" in result.output


def test_knn_has_no_gradient_so_the_most_accurate_other_classifier_stands_in(tmp_path):
    import json

    from transfer.inspection import models_of

    (tmp_path / "config.json").write_text(json.dumps({"command": "compare"}))
    table = pd.DataFrame({"strategy": ["features", "features", "features", "scratch"],
                          "classifier": ["knn", "mlp", "logreg", ""],
                          "model": ["f + knn", "f + mlp", "f + logreg", "scratch CNN"],
                          "run_dir": ["b/classify", "b/classify", "b/classify", "scratch"]})
    said = []
    _, models = models_of(tmp_path, table, log=said.append)
    assert [(m.kind, m.classifier) for m in models] == [("features", "mlp"), ("scratch", None)]
    assert said == ["kNN has no gradient: Grad-CAM shows f + mlp, the most accurate other classifier"]


def test_images_through_a_backbone_alone(tiny, tmp_path):
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    result = CliRunner().invoke(cli.main, ["inspect", "--backbone", "tiny", "--weights", "none", "--image-size",
                                           str(SIZE), "--image", str(image), "--out", str(tmp_path / "maps")])
    assert result.exit_code == 0 and (tmp_path / "maps" / "activations-noise.png").is_file(), result.output
    result = CliRunner().invoke(cli.main, ["inspect", "--backbone", "tiny", "--out", str(tmp_path / "m2")])
    assert result.exit_code == 2 and "--backbone needs --image" in result.output
    (tmp_path / "notes.png").write_text("not an image")
    result = CliRunner().invoke(cli.main, ["inspect", "--backbone", "tiny", "--image", str(tmp_path / "notes.png"),
                                           "--out", str(tmp_path / "m3")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "notes.png: not an image" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m3").exists()
