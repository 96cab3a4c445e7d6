"""The `mmcv._ext` stand-in: registered only without a compiled mmcv; its ops fail loudly."""

import importlib
import sys
from pathlib import Path

import mmcv
import pytest
import torch
from mmengine.utils.dl_utils import mmcv_full_available

import eval.segmentation.models  # noqa: F401  (registers the stand-in when mmcv-lite is installed)
from eval.segmentation.mmcv_ext import MissingMMCVOpError, install_mmcv_ext_standin, is_standin_installed


def test_mmseg_models_import_and_a_compiled_op_raises_a_clear_error() -> None:
    import mmcv.ops

    assert is_standin_installed(), "this venv has mmcv-lite: the stand-in must be what mmseg imported"
    assert not mmcv_full_available(), "mmengine must still see that no compiled mmcv is installed"
    with pytest.raises(MissingMMCVOpError, match=r"mmcv op 'roi_align_forward'.*mmcv-lite.*mmcv==2\.1\.0"):
        mmcv.ops.roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), (2, 2))
    assert install_mmcv_ext_standin() is True  # idempotent


def test_a_compiled_extension_is_used_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an importable `mmcv._ext` (here a module file on mmcv's package path, as a full build has),
    nothing is registered and the import finds the real module."""
    (tmp_path / "_ext.py").write_text("def nms(*args):\n    return 'compiled nms'\n")
    monkeypatch.delitem(sys.modules, "mmcv._ext")
    monkeypatch.setattr(mmcv, "__path__", [*mmcv.__path__, str(tmp_path)])
    monkeypatch.setattr(mmcv, "_ext", None, raising=False)  # the import below sets it; removed afterwards
    assert install_mmcv_ext_standin() is False
    assert "mmcv._ext" not in sys.modules
    _ext = importlib.import_module("mmcv._ext")
    monkeypatch.setitem(sys.modules, "mmcv._ext", _ext)  # restored to the stand-in after the test
    assert _ext.nms() == "compiled nms"
    assert not is_standin_installed()
