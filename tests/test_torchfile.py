import pickle
import subprocess
import sys
import zipfile

import pytest

from transfer.backbones import REGISTRY
from transfer.lite_weights import package_checkpoint
from transfer.torchfile import LEGACY_MAGIC, UnsafeCheckpointError, load_state_dict

STATE_DICT_PARAMS = {"efficientnet_lite0": 4_694_024, "efficientnet_lite1": 5_470_344, "efficientnet_lite2": 6_150_168}


@pytest.mark.parametrize("name", sorted(STATE_DICT_PARAMS))
def test_reads_the_packaged_state_dicts(name):
    state = load_state_dict(package_checkpoint(REGISTRY[name]))
    n = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert n == STATE_DICT_PARAMS[name]
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_conv_stem.weight"].dtype == "float32"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_legacy_checkpoint_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump(LEGACY_MAGIC, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({}, f, protocol=2)
        pickle.dump({"weight": _Evil(marker)}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_state_dict(path)
    assert not marker.exists()


def test_refuses_a_zip_checkpoint_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"weight": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict(path)
    assert not marker.exists()


def test_evil_weights_file_is_a_one_line_error(tmp_path):
    from transfer.backbones import build_backbone
    from transfer.errors import TransferError

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump(LEGACY_MAGIC, f, protocol=2)
        pickle.dump({"weight": _Evil(marker)}, f, protocol=2)
    with pytest.raises(TransferError, match="Refusing to load") as info:
        build_backbone("efficientnet_lite0", weights=path, image_size=32)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_state_dict(path)


def test_loading_needs_no_torch(tmp_path):
    """Torch made unimportable: the ImageNet model still loads and predicts a real photo."""
    script = f"""
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is made unimportable by this test")

sys.meta_path.insert(0, NoTorch())
import keras.src.backend.config as config
config._KERAS_DIR = {str(tmp_path)!r}  # cold cache: convert from the .pth
import numpy as np
from transfer.backbones import build_backbone, get_backbone
from transfer.images import load_image, sample_images
row = get_backbone("efficientnet_lite0")
model = build_backbone(row, include_top=True)
flower = [p for p in sample_images() if p.name == "flower.jpg"][0]
probs = np.asarray(model(row.preprocess_input(load_image(flower, 224)[None])))
top5 = np.argsort(-probs[0])[:5]
assert 985 in top5, top5  # daisy
assert "torch" not in sys.modules
print("OK")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK" in out.stdout
