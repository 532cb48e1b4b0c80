"""Default schedules for untuned TIR kernels (CPU: torch_rc's rule below; GPU: dlight's rules).

Unscheduled TIR compiles to single-threaded scalar loops that run 10-100x slower than PyTorch
(docs/tvm-facts.md). Until tuned records exist, every kernel gets this rule: inline what can be
inlined, then per remaining block fuse and parallelise the outer spatial loops and vectorise a
contiguous innermost spatial loop (moved under the reduction loops for reductions such as matmul).
Tuned schedules (the tuning engine) replace it kernel by kernel.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from torch_rc.platform.hardware import vector_bytes
from torch_rc.platform.tvm_shim import tvm_api

__all__ = ["default_schedule_pass", "gpu_default_schedule_pass", "vector_bytes"]

logger = logging.getLogger(__name__)

# Vector accumulators per row of a reduction: enough independent FMAs to hide FMA latency.
_MAX_VECTORS_PER_ROW = 4


def default_schedule_pass() -> Any:
    """A module pass that gives every unscheduled PrimFunc the default CPU schedule."""
    api = tvm_api()
    dlight = api.s_tir.dlight
    rule = _make_rule(dlight, vector_bytes())
    return dlight.ApplyDefaultSchedule(rule)


def gpu_default_schedule_pass() -> Any:
    """dlight's GPU rules (matmul, GEMV, reductions, and a fallback that binds every other
    kernel's loops to blocks and threads), as TVM's own CUDA pipeline applies them."""
    dlight = tvm_api().s_tir.dlight
    return dlight.ApplyDefaultSchedule(
        dlight.gpu.Matmul(),
        dlight.gpu.GEMV(),
        dlight.gpu.Reduction(),
        dlight.gpu.GeneralReduction(),
        dlight.gpu.Fallback(),
    )


def _make_rule(dlight: Any, vbytes: int) -> Any:
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline

    s_tir = tvm_api().s_tir

    class CPUDefault(dlight.ScheduleRule):
        """Inline, parallelise outer spatial loops, vectorise contiguous inner ones."""

        def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
            try:
                sch = s_tir.Schedule(func)
                infos = normalize_prim_func(sch)
                if infos is None:
                    return None
                for info in _inline(sch, infos, try_inline):
                    _schedule_block(sch, info, vbytes)
                return sch
            except Exception:  # a kernel we cannot schedule stays unscheduled (and is logged)
                logger.warning(
                    "torch_rc: default CPU schedule failed for a kernel; it stays unscheduled",
                    exc_info=True,
                )
                return None

    return CPUDefault()


# Math that costs tens of operations per element (exp/sigmoid/tanh/erf as torch_rc's vector
# polynomials, platform/vector_math.py; log and pow as libm calls per lane): computed once into a
# buffer rather than inlined into each of several consumers.
_COSTLY_CALLS = ("T.exp(", "T.log(", "T.tanh(", "T.erf(", "T.pow(")


def _inline(sch: Any, infos: list[Any], try_inline: Any) -> list[Any]:
    """dlight's ``try_inline``, except that a block computing costly math for more than one
    consumer stays a block (softmax's exp feeds its sum and its division: inlined, it ran twice
    and the default schedule was slower than none)."""
    kept = [
        info
        for info in infos
        if len(sch.get_consumers(info.block_rv)) > 1
        and any(call in str(sch.get(info.block_rv)) for call in _COSTLY_CALLS)
    ]
    others = [info for info in infos if info not in kept]
    remaining = try_inline(sch, others)
    order = {id(info): n for n, info in enumerate(infos)}
    return sorted([*remaining, *kept], key=lambda info: order[id(info)])


def _extent(sch: Any, loop: Any) -> int | None:
    value = sch.get(loop).extent
    return int(value.value) if hasattr(value, "value") else None


def _schedule_block(sch: Any, info: Any, vbytes: int) -> None:
    block = info.block_rv
    loops = sch.get_loops(block)
    kinds = info.dom_kind()
    if not loops or len(kinds) != len(loops) or "O" in kinds:
        return
    extents = [_extent(sch, loop) for loop in loops]
    if any(extent is None for extent in extents):
        return
    spatial = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "S"]
    reduce = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "R"]
    if not spatial:
        return
    sch.reorder(*spatial, *reduce)
    lanes = max(1, vbytes * 8 // _write_bits(sch, block))
    inner_extent = _extent(sch, spatial[-1]) or 1
    contiguous = _writes_contiguously(sch, block, len(spatial))

    if not reduce:
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        total = math.prod(extents)
        if contiguous and total % lanes == 0 and total > lanes:
            outer, inner = sch.split(fused, [None, lanes])
            sch.parallel(outer)
            sch.vectorize(inner)
        elif total > 1:
            sch.parallel(fused)
        return

    if (
        len(reduce) == 1
        and _reads_along(sch, block, reduce_var=True)
        and not _reads_along(sch, block, reduce_var=False)
    ):
        # A row reduction (softmax's max and sum, norms' means): the reduced axis is the input's
        # contiguous one. Vectorising across rows (below) would gather with a stride; instead
        # rows run in parallel and each row is summed in vector-wide partial sums (rfactor).
        outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        reduce_extent = _extent(sch, reduce[0]) or 0
        if reduce_extent % lanes == 0 and reduce_extent >= 2 * lanes:
            if _vector_partial_sums(sch, block, outer, reduce[0], lanes):
                return
        sch.parallel(outer)
        return

    if contiguous and inner_extent % lanes == 0:
        vectors = max(
            v for v in range(1, _MAX_VECTORS_PER_ROW + 1) if (inner_extent // lanes) % v == 0
        )
        j_outer, j_inner = sch.split(spatial[-1], [None, lanes * vectors])
        sch.reorder(*spatial[:-1], j_outer, *reduce, j_inner)
        outer = sch.fuse(*spatial[:-1], j_outer) if len(spatial) > 1 else j_outer
        sch.parallel(outer)
        # Vectorise while the block is still a complete reduction block; the update block that
        # decompose_reduction leaves behind is not one, and vectorize rejects it.
        sch.vectorize(j_inner)
        sch.decompose_reduction(block, reduce[0])
    else:
        outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        sch.parallel(outer)


def _vector_partial_sums(sch: Any, block: Any, row: Any, loop: Any, lanes: int) -> bool:
    """Parallelise ``row`` and reduce it in ``lanes`` partial sums: split the reduction ``loop``
    by ``lanes``, ``rfactor`` the lane into a partial-sum block whose lane is the contiguous,
    vectorised axis, and add the lanes up per row right after. False when TVM refuses the
    rfactor (nothing changed but the split); each later step is an optimisation that may be
    refused without making the kernel wrong."""
    errors = (tvm_api().s_tir.ScheduleError, tvm_api().tvm.error.InternalError)
    try:
        _, lane = sch.split(loop, [None, lanes])
        # The partial-sum buffer gets the lane as its last (contiguous) axis.
        partial = sch.rfactor(lane, factor_axis=_write_ndim(sch, block))
    except errors:
        return False
    loops = sch.get_loops(partial)  # (row, reduction outer, lane)
    for step in (
        lambda: sch.reverse_compute_at(block, loops[0]),
        lambda: sch.parallel(loops[0]),
        # Vectorise while the partial block is still a complete reduction block (as below).
        lambda: sch.vectorize(loops[-1]),
        lambda: sch.decompose_reduction(partial, loops[1]),
    ):
        try:
            step()
        except errors:
            logger.debug("torch_rc: a row-reduction schedule step was refused", exc_info=True)
    return True


def _write_ndim(sch: Any, block: Any) -> int:
    region = sch.get(block).writes[0]
    tensor = getattr(region, "buffer", None) or region.source
    return len(tensor.shape)


def _reads_along(sch: Any, block: Any, *, reduce_var: bool) -> bool:
    """True when some input of ``block`` has, as its last (contiguous) index, a reduction
    iterator (``reduce_var``: ``x[i, k]`` summed over ``k``) or else the innermost spatial
    iterator (``w[k, j]`` in a matmul over ``k``, whose ``j`` vectorises without a stride)."""
    free_vars = tvm_api().tirx.analysis.undefined_vars
    stmt = sch.get(block)
    spatial = [iv.var for iv in stmt.iter_vars if int(iv.iter_type) == 0]
    reduction = [iv.var for iv in stmt.iter_vars if int(iv.iter_type) == 2]
    wanted = reduction if reduce_var else spatial[-1:]
    for region in stmt.reads:
        indices = region.region
        if not indices or not any(indices[-1].min.same_as(var) for var in wanted):
            continue
        # An input the reduction does not walk (softmax's row max, read once per row) is
        # loaded once per row whatever the layout: only inputs that vary along it count.
        used = [v for r in indices for v in free_vars(r.min, [])]
        if any(v.same_as(r) for v in used for r in reduction):
            return True
    return False


def _write_bits(sch: Any, block: Any) -> int:
    writes = sch.get(block).writes
    if not writes:
        return 32
    # TVM 0.27 regions are TensorRegion (tensor in ``.source``); older ones BufferRegion (``.buffer``).
    region = writes[0]
    tensor = getattr(region, "buffer", None) or region.source
    return int(tvm_api().tvm.DataType(str(tensor.dtype)).bits) or 32


def _writes_contiguously(sch: Any, block: Any, num_spatial: int) -> bool:
    """True when the block's output's last index is the innermost spatial iterator."""
    stmt = sch.get(block)
    if len(stmt.writes) != 1 or len(stmt.iter_vars) < num_spatial:
        return False
    region = stmt.writes[0].region
    if not region:
        return False
    last = region[-1].min
    spatial_vars = [iv.var for iv in stmt.iter_vars if int(iv.iter_type) == 0]
    return bool(spatial_vars) and last.same_as(spatial_vars[-1])
