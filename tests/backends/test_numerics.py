"""Half-precision reductions and NaN/Inf handling match eager, also in a fresh process that
reuses the cache (the wrong result that was cached for good is the failure this pins)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from torch_rc.testing import STRICT_TVM

# The cases: x = mean + N(0, 1) over 8192 elements.
REDUCTIONS = {
    "mean": lambda x: x.mean(-1),
    "sum": lambda x: x.sum(-1) / 8192,
    "var": lambda x: x.var(-1),
    "softmax": lambda x: torch.softmax(x, -1),
    "layer_norm": lambda x: torch.nn.functional.layer_norm(x, (8192,)),
}


def _compiled(fn):
    return torch.compile(fn, backend="reasoning", options={**STRICT_TVM, "min_partition_size": 1})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_half_precision_reductions_match_eager(name, dtype):
    fn = REDUCTIONS[name]
    compiled = _compiled(fn)
    for mean in (10.0, 100.0):
        x = (torch.randn(4, 8192) + mean).to(dtype)
        with torch.no_grad():
            # PyTorch's own default tolerance for the dtype (assert_close's defaults).
            torch.testing.assert_close(compiled(x), fn(x))


NAN_OPS = {
    "relu": lambda x: torch.relu(x) * 2,
    "clamp": lambda x: torch.clamp(x, -0.5, 0.5) * 2,
    "maximum": lambda x: torch.maximum(x, torch.zeros_like(x)) * 2,
    "softmax": lambda x: torch.softmax(x, -1) * 2,
    "not_equal": lambda x: (x != 0.5).float() * 2,
    "masked_rows": lambda x: torch.where(
        (x == -float("inf")).all(-1, keepdim=True), torch.zeros_like(x), torch.softmax(x, -1)
    ),
}


@pytest.mark.parametrize("name", sorted(NAN_OPS))
def test_nan_and_inf_propagate_as_in_eager(name):
    fn = NAN_OPS[name]
    x = torch.randn(6, 16)
    x[0, 3] = float("nan")
    x[1, :] = float("nan")
    x[2, 5] = float("inf")
    x[3, :] = -float("inf")
    x[4, 7] = -float("inf")
    with torch.no_grad():
        torch.testing.assert_close(_compiled(fn)(x), fn(x), equal_nan=True)


CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from torch_rc.testing import STRICT_TVM
    fn = lambda x: x.mean(-1)
    x = (torch.randn(4, 8192, generator=torch.Generator().manual_seed(0)) + 10).half()
    sink = []
    from torch_rc.backends.dynamo import reporting_backend
    from torch_rc.options import Options
    options = Options.resolve({"min_partition_size": 1})
    compiled = torch.compile(fn, backend=reporting_backend(options, sink))
    with torch.no_grad():
        got = compiled(x)
        for mean in (10.0, 100.0):
            y = (torch.randn(4, 8192) + mean).half()
            torch.testing.assert_close(compiled(y), fn(y))
    print(json.dumps({"cache": sink[0].cache, "status": [p.status for p in sink[0].partitions]}))
    """
)


def test_a_fresh_process_reusing_the_cache_stays_right(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, TORCH_RC_CACHE_DIR=str(tmp_path / "cache"))
    runs = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert runs[0]["cache"] == "miss" and runs[1]["cache"] == "hit"


def test_inputs_off_a_64_byte_boundary_are_realigned():
    """Kernels vectorised by 8 lanes use aligned loads: a contiguous view at an offset (x[1:]) or
    a numpy array (16-byte aligned) crashed the process before inputs were realigned."""
    torch._dynamo.reset()

    def fn(x, w, b):
        return torch.nn.functional.gelu(x @ w + b)

    compiled = _compiled(fn)
    base = torch.randn(3, 256)
    for offset in range(16):  # every 4-byte offset within 64 bytes
        x, w, b = (base[i, offset : offset + n] for i, n in enumerate((64, 128, 8)))
        args = (x.view(4, 16), w.view(16, 8), b)
        torch.testing.assert_close(compiled(*args), fn(*args), rtol=1e-5, atol=1e-5)
