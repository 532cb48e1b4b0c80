"""The default CPU schedule: every kernel it schedules computes what the unscheduled kernel
computes, and row reductions get parallel rows with vectorised partial sums, not a strided
gather across rows."""

import re

import pytest

from torch_rc.options import Options
from torch_rc.passes.schedule import default_schedule_pass
from torch_rc.platform.target import detect_target
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.verify import check_schedule


def _target():
    return tvm_api().tvm.target.Target(detect_target(Options()).target)


def _kernel(kind, rows, cols):
    tvm = tvm_api().tvm
    te, topi = tvm.te, tvm.topi
    x = te.placeholder((rows, cols), name="x")
    if kind == "softmax":
        return tvm.IRModule({"main": te.create_prim_func([x, topi.nn.softmax(x, axis=-1)])})
    if kind == "layernorm":
        g = te.placeholder((cols,), name="g")
        b = te.placeholder((cols,), name="b")
        y = topi.nn.layer_norm(x, g, b, axis=[-1], epsilon=1e-5)
        return tvm.IRModule({"main": te.create_prim_func([x, g, b, y])})
    if kind == "layernorm3d":  # (batch, tokens, hidden): rows are two loops
        x3 = te.placeholder((2, rows, cols), name="x")
        g = te.placeholder((cols,), name="g")
        b = te.placeholder((cols,), name="b")
        y = topi.nn.layer_norm(x3, g, b, axis=[-1], epsilon=1e-5)
        return tvm.IRModule({"main": te.create_prim_func([x3, g, b, y])})
    if kind == "softmax_cols":  # a softmax down the columns: not a row reduction
        return tvm.IRModule({"main": te.create_prim_func([x, topi.nn.softmax(x, axis=0)])})
    if kind == "depthwise":  # 3x3, padding 1, on rows x rows feature maps of ``cols`` channels
        img = te.placeholder((1, cols, rows, rows), name="img")
        w = te.placeholder((cols, 1, 3, 3), name="w")
        y = topi.nn.group_conv2d_nchw(img, w, 1, 1, 1, cols)
        return tvm.IRModule({"main": te.create_prim_func([img, w, y])})
    if kind == "concat":
        y = te.placeholder((rows, 40), name="y")
        return tvm.IRModule({"main": te.create_prim_func([x, y, topi.concatenate([x, y], axis=1)])})
    if kind == "rowsum":
        return tvm.IRModule({"main": te.create_prim_func([x, topi.sum(x, axis=-1)])})
    if kind == "colsum":
        return tvm.IRModule({"main": te.create_prim_func([x, topi.sum(x, axis=0)])})
    w = te.placeholder((cols, 96), name="w")
    k = te.reduce_axis((0, cols), "k")
    y = te.compute((rows, 96), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k), name="y")
    return tvm.IRModule({"main": te.create_prim_func([x, w, y])})


def _scheduled(mod):
    api = tvm_api()
    copy = api.tvm.ir.load_json(api.tvm.ir.save_json(mod))
    with _target():
        return default_schedule_pass()(copy)


@pytest.mark.parametrize(
    ("kind", "rows", "cols"),
    [
        ("softmax", 64, 256),
        ("softmax", 7, 100),  # the row is no multiple of the vector width
        ("layernorm", 32, 768),
        ("layernorm", 5, 24),  # 24 columns: 8 lanes, not 16
        ("layernorm3d", 7, 64),
        ("softmax_cols", 64, 48),
        ("depthwise", 14, 8),  # a row of 14: no multiple of 4, 8 or 16 lanes
        ("depthwise", 56, 4),  # a row of 56: 8 lanes
        ("concat", 16, 24),
        ("rowsum", 48, 512),
        ("colsum", 48, 512),
        ("matmul", 32, 128),
    ],
)
def test_default_schedule_computes_what_the_kernel_computes(kind, rows, cols):
    mod = _kernel(kind, rows, cols)
    assert check_schedule(mod, _scheduled(mod), _target()).passed


def test_row_reductions_sum_in_vector_lanes_and_rows_run_in_parallel():
    script = _scheduled(_kernel("rowsum", 48, 512)).script()
    assert "_rf" in script  # the partial sums of rfactor
    assert "T.vectorized" in script and "T.parallel" in script
    # A column sum or a matmul vectorises across its contiguous output instead.
    assert "_rf" not in _scheduled(_kernel("colsum", 48, 512)).script()
    assert "_rf" not in _scheduled(_kernel("matmul", 32, 128)).script()


@pytest.mark.parametrize(("kind", "rows", "cols"), [("softmax", 64, 256), ("layernorm3d", 7, 64)])
def test_row_chains_run_as_one_parallel_loop_over_rows(kind, rows, cols):
    """Softmax and norms: every step of a row inside one parallel row loop (threads forked once),
    the row reductions still in vector-wide partial sums."""
    script = _scheduled(_kernel(kind, rows, cols)).script()
    assert script.count("T.parallel") == 1
    assert "_rf" in script and "T.vectorized" in script


def test_a_column_softmax_is_not_fused_by_rows():
    script = _scheduled(_kernel("softmax_cols", 64, 48)).script()
    assert "_rf" not in script  # reduced down the columns: the per-block rule vectorises rows
    assert script.count("T.parallel") > 1


def test_convolution_padding_stays_a_block_and_rows_vectorise_by_what_divides_them():
    """Inlined into the conv, padding put a border test in every multiply-add (the depthwise
    conv ran 10x slower than unscheduled); a 56-wide row vectorises by 8 lanes."""
    script = _scheduled(_kernel("depthwise", 56, 4)).script()
    assert 'T.sblock("pad_temp")' in script
    assert re.search(r"T\.vectorized\((T\.int64\()?8\)", script)


def test_position_dependent_branches_are_not_vectorised_across_fused_rows():
    """Padding and concatenation branch on each element's position: rows run in parallel and
    the inner loop stays plain (vectorised across the fused index it became a gather)."""
    script = _scheduled(_kernel("concat", 16, 24)).script()
    assert "T.parallel" in script
    assert "T.vectorized" not in script
