"""Small TIR workloads for the tuning tests."""

from torch_rc.platform.tvm_shim import tvm_api


def matmul(m: int = 64, n: int = 128, k: int = 128, relu: bool = False):
    te = tvm_api().tvm.te
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    out = te.compute((m, n), lambda i, j: te.max(c[i, j], 0.0), name="D") if relu else c
    return tvm_api().tvm.IRModule({"main": te.create_prim_func([a, b, out])})


def row_softmax(rows: int = 64, cols: int = 128):
    """Softmax over the last axis, as TOPI writes it (max, exp, sum, normalise: four blocks)."""
    api = tvm_api()
    te = api.tvm.te
    x = te.placeholder((rows, cols), name="X")
    out = api.tvm.topi.nn.softmax(x, axis=-1)
    return api.tvm.IRModule({"main": te.create_prim_func([x, out])})
