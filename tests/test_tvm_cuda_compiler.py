"""Which compiler TVM's CUDA kernels are compiled with when a module is loaded on a GPU."""

import importlib.util
import os

import pytest

from torch_rc.errors import TVMVersionError
from torch_rc.platform.tvm_shim import prepare_cuda_compiler

pick = prepare_cuda_compiler.__wrapped__  # uncached, so each test sees its own environment


def test_a_users_choice_is_kept(monkeypatch):
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "NVRTC")
    assert pick() == "nvrtc"


@pytest.fixture
def no_nvrtc(monkeypatch):
    """No TVM_CUDA_COMPILE_MODE and no ``cuda.bindings`` (NVRTC's Python bindings)."""
    # setenv first so that teardown restores the variable's absence even after pick() sets it.
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "")
    monkeypatch.delenv("TVM_CUDA_COMPILE_MODE")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("cuda") else real(name, *a),
    )


def test_nvcc_is_used_when_nvrtc_bindings_are_missing(no_nvrtc, monkeypatch, tmp_path):
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert pick() == "nvcc"
    assert os.environ["TVM_CUDA_COMPILE_MODE"] == "nvcc"


def test_no_compiler_is_a_clear_error(no_nvrtc, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TVMVersionError, match="pip install cuda-bindings nvidia-cuda-nvrtc"):
        pick()
