"""Strategy 1 on real data, at real sizes (marked slow; still run in CI)."""

import json

import pandas as pd
import pytest

from tests.conftest import HYMENOPTERA_PUBLISHED, within_noise_of_or_above
from transfer import FinetuneConfig, finetune


@pytest.mark.slow
def test_hymenoptera_finetuning_with_defaults_is_as_accurate_as_frozen_features_are_published(hymenoptera,
                                                                                               tmp_path):
    table = finetune(hymenoptera, tmp_path / "run", FinetuneConfig(), log=print)
    row = table.iloc[0]
    print(table.T)
    assert row["eval_split"] == "test" and row["n_test"] == 153
    assert within_noise_of_or_above(row["accuracy"], 153, HYMENOPTERA_PUBLISHED)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert set(history["stage"]) == {"finetune"}  # stage 1 is the linear probe: no epochs
    assert json.loads((tmp_path / "run" / "config.json").read_text())["probe_C"] > 0


@pytest.mark.slow
def test_digits_fine_tuning_beats_its_own_linear_probe(tmp_path, keras_cache):
    # Digits (far from ImageNet) at the demo's settings: 96 px, no augmentation (a mirrored digit is another digit).
    common = dict(image_size=96, augment=False)
    probe = finetune("digits", tmp_path / "probe", FinetuneConfig(freeze="all", epochs=0, **common),
                     log=print).iloc[0]
    tuned = finetune("digits", tmp_path / "tuned", FinetuneConfig(**common), log=print).iloc[0]
    print(f"linear probe {probe['accuracy']:.3f}; fine-tuned {tuned['accuracy']:.3f} in {tuned['fit_seconds']:.0f} s")
    assert probe["eval_split"] == tuned["eval_split"] == "test" and probe["n_test"] == tuned["n_test"] == 270
    # Ahead of the probe, the same command giving the same numbers each time (determinism is tested in
    # test_compare); not claimed significant: measured here 0.963 against a probe near 0.94, a few images apart.
    assert tuned["accuracy"] > probe["accuracy"]
    assert tuned["trainable_params"] > probe["trainable_params"]
