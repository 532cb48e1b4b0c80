# A TIR workload for `torch-rc tune --tir examples/tir/matmul_relu.py --trials 64`: a 64x128x128
# matmul with a ReLU epilogue, in TVM 0.27's TVMScript dialect (what `IRModule.script()` prints):
#   - `T` is `tvm.script.tirx` (TVM 0.27 moved TIR to `tirx`), `I` is `tvm.script.ir`; the parser
#     provides both, and refuses import lines other than `from __future__ import annotations`
#     (they stay comments, as TVM prints them);
#   - an `@I.ir_module` class with a `main` PrimFunc marked `@T.prim_func(s_tir=True)`;
#   - blocks are `T.sblock(...)` (older TVM: `T.block`), allocations `T.sblock_alloc_buffer`.
# The file is parsed, never run as Python by torch-rc (tvm.script.from_source). Write your own by
# building a workload with `tvm.te` and printing `tvm.IRModule({"main": te.create_prim_func(...)}).script()`.

# from tvm.script import ir as I
# from tvm.script import tirx as T

@I.ir_module
class Module:
    @T.prim_func(s_tir=True)
    def main(A: T.Buffer((64, 128), "float32"), B: T.Buffer((128, 128), "float32"), D: T.Buffer((64, 128), "float32")):
        T.func_attr({"tirx.noalias": True})
        # with T.sblock("root"):
        C = T.sblock_alloc_buffer((64, 128))
        for i, j, k in T.grid(64, 128, 128):
            with T.sblock("C"):
                v_i, v_j, v_k = T.axis.remap("SSR", [i, j, k])
                T.reads(A[v_i, v_k], B[v_k, v_j])
                T.writes(C[v_i, v_j])
                with T.init():
                    C[v_i, v_j] = T.float32(0.0)
                C[v_i, v_j] = C[v_i, v_j] + A[v_i, v_k] * B[v_k, v_j]
        for i, j in T.grid(64, 128):
            with T.sblock("D"):
                v_i, v_j = T.axis.remap("SS", [i, j])
                T.reads(C[v_i, v_j])
                T.writes(D[v_i, v_j])
                D[v_i, v_j] = T.max(C[v_i, v_j], T.float32(0.0))
