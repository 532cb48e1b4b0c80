"""Which compiler TVM's CUDA kernels are compiled with when a module is loaded on a GPU."""

import importlib.util

import pytest

from torch_rc.errors import TVMVersionError
from torch_rc.tvm_shim import prepare_cuda_compiler

pick = prepare_cuda_compiler.__wrapped__  # uncached, so each test sees its own environment


def test_a_users_choice_is_kept(monkeypatch):
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "NVRTC")
    assert pick() == "nvrtc"


def test_nvcc_is_used_when_nvrtc_bindings_are_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("TVM_CUDA_COMPILE_MODE", raising=False)
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("cuda") else real(name, *a),
    )
    assert pick() == "nvcc"
    import os

    assert os.environ["TVM_CUDA_COMPILE_MODE"] == "nvcc"


def test_no_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("TVM_CUDA_COMPILE_MODE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("cuda") else real(name, *a),
    )
    with pytest.raises(TVMVersionError, match="pip install cuda-bindings nvidia-cuda-nvrtc"):
        pick()
