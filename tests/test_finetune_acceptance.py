"""Strategy 1 on real data, at real sizes (marked slow; still run in CI)."""

import pandas as pd
import pytest

from transfer.finetuning import FinetuneConfig, finetune


@pytest.mark.slow
def test_hymenoptera_finetuning_reaches_093_with_defaults(hymenoptera, tmp_path):
    table = finetune(hymenoptera, tmp_path / "run", FinetuneConfig(), log=print)
    row = table.iloc[0]
    print(table.T)
    assert row["eval_split"] == "test" and row["n_test"] == 153
    assert row["accuracy"] >= 0.93
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert set(history["stage"]) == {"head", "finetune"}


@pytest.mark.slow
def test_digits_partial_finetuning_beats_the_head_alone(tmp_path, keras_cache):
    # Digits must not be flipped or rotated; far from ImageNet, they need a bolder stage 2 (lr / 10).
    common = dict(image_size=96, augment=False, lr=0.003, lr_mult=10.0)
    head = finetune("digits", tmp_path / "head", FinetuneConfig(freeze="all", head_epochs=10, epochs=0, **common),
                    log=print).iloc[0]
    part = finetune("digits", tmp_path / "part", FinetuneConfig(freeze="block6a", head_epochs=5, epochs=8,
                                                                **common), log=print).iloc[0]
    print(f"head only {head['accuracy']:.3f} in {head['fit_seconds']:.0f} s; "
          f"from block6a {part['accuracy']:.3f} in {part['fit_seconds']:.0f} s")
    assert head["eval_split"] == part["eval_split"] == "test" and head["n_test"] == part["n_test"] == 270
    assert part["accuracy"] > head["accuracy"]
    assert part["trainable_params"] > head["trainable_params"]
