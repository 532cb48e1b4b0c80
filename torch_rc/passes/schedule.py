"""Default schedules for untuned TIR kernels (CPU: torch_rc's rule below; GPU: dlight's rules).

Unscheduled TIR compiles to single-threaded scalar loops that run 10-100x slower than PyTorch
(docs/tvm-facts.md). Until tuned records exist, every kernel gets this rule: inline what can be
inlined, then per remaining block fuse and parallelise the outer spatial loops and vectorise a
contiguous innermost spatial loop (moved under the reduction loops for reductions such as matmul).
Kernels made of row reductions and what consumes them (softmax, norms) instead run as one parallel
loop over rows, every step of a row computed in that row's iteration (:func:`_fused_rows`).
Tuned schedules (the tuning engine) replace it kernel by kernel.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from torch_rc.platform.hardware import host_hardware, vector_bytes
from torch_rc.platform.tvm_shim import tvm_api

__all__ = [
    "default_schedule",
    "default_schedule_pass",
    "gpu_default_schedule_pass",
    "vector_bytes",
]

logger = logging.getLogger(__name__)

# Vector accumulators per row of a reduction: enough independent FMAs to hide FMA latency.
_MAX_VECTORS_PER_ROW = 4
# Rows per thread above which a reduction's parallel tasks are whole rows.
_ROWS_PER_THREAD = 4


def default_schedule_pass() -> Any:
    """A module pass that gives every unscheduled PrimFunc the default CPU schedule."""
    return tvm_api().s_tir.dlight.ApplyDefaultSchedule(*_cpu_rules())


def gpu_default_schedule_pass() -> Any:
    """dlight's GPU rules (matmul, GEMV, reductions, and a fallback that binds every other
    kernel's loops to blocks and threads), as TVM's own CUDA pipeline applies them."""
    return tvm_api().s_tir.dlight.ApplyDefaultSchedule(*_gpu_rules())


def default_schedule(func: Any, target: Any) -> Any | None:
    """The default schedule of one PrimFunc for ``target`` as a traced ``s_tir.Schedule`` (the
    first rule that applies, as the passes above do), or None when none does. Its trace
    replays the default schedule on the unscheduled function: a tuning session stores it as the
    kernel's record when tuning could not beat it. ``func`` is left unchanged."""
    api = tvm_api()
    # Rules may change their input in place (docs/tvm-facts.md): give them a deep copy.
    copy = api.tvm.ir.load_json(api.tvm.ir.save_json(func))
    rules = _gpu_rules() if str(target.kind.name) == "cuda" else _cpu_rules()
    with target:
        for rule in rules:
            sch = rule.apply(copy, target, False)
            if sch is None:
                continue
            if not isinstance(sch, api.s_tir.Schedule):
                sch = sch[0]
            return sch
    return None


def _cpu_rules() -> list[Any]:
    return [_make_rule(tvm_api().s_tir.dlight, vector_bytes(), host_hardware().cores)]


def _gpu_rules() -> list[Any]:
    dlight = tvm_api().s_tir.dlight
    return [
        dlight.gpu.Matmul(),
        dlight.gpu.GEMV(),
        dlight.gpu.Reduction(),
        dlight.gpu.GeneralReduction(),
        dlight.gpu.Fallback(),
    ]


def _make_rule(dlight: Any, vbytes: int, threads: int) -> Any:
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
                remaining = _inline(sch, infos, try_inline)
                fused = _fused_rows(sch, remaining, vbytes)
                if fused is not None:
                    return fused
                for info in remaining:
                    _schedule_block(sch, info, vbytes, threads)
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
    and the default schedule was slower than none), and so does padding read by a reduction
    (a convolution's ``pad_temp``: inlined, every multiply-add tested the borders and the
    depthwise 3x3 conv ran 10x slower than unscheduled)."""
    kept = [
        info
        for info in infos
        if (
            len(sch.get_consumers(info.block_rv)) > 1
            and any(call in str(sch.get(info.block_rv)) for call in _COSTLY_CALLS)
        )
        or _pads_a_reduction(sch, info.block_rv)
    ]
    others = [info for info in infos if info not in kept]
    remaining = try_inline(sch, others)
    order = {id(info): n for n, info in enumerate(infos)}
    return sorted([*remaining, *kept], key=lambda info: order[id(info)])


def _selects_per_element(sch: Any, block: Any) -> bool:
    """True when the block's value branches (``if_then_else``, ``Select``): padding,
    concatenation and masks branch on the element's position (the case this is for); a
    ``where`` on values lands here too, and its plain inner loop still vectorises in LLVM."""
    text = str(sch.get(block).body)
    return "if_then_else(" in text or "T.Select(" in text


def _pads_a_reduction(sch: Any, block: Any) -> bool:
    """True for a padding block (its value an ``if_then_else`` of the input and a constant) that
    a reduction reads."""
    stmt = sch.get(block)
    value = getattr(stmt.body, "value", None)
    op = getattr(getattr(value, "op", None), "name", "")
    if not op.endswith("if_then_else") or any(int(iv.iter_type) != 0 for iv in stmt.iter_vars):
        return False
    return any(
        any(int(iv.iter_type) == 2 for iv in sch.get(consumer).iter_vars)
        for consumer in sch.get_consumers(block)
    )


def _extent(sch: Any, loop: Any) -> int | None:
    value = sch.get(loop).extent
    return int(value.value) if hasattr(value, "value") else None


def _schedule_block(sch: Any, info: Any, vbytes: int, threads: int) -> None:
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
        if len(spatial) > 1 and _selects_per_element(sch, block):
            # Padding, concatenation: a branch per element on its position. Vectorised across
            # the fused index, every lane's position took a division and the loads became a
            # gather (a conv's pad block: 1.26 ms vs 0.08 ms). Rows in parallel; LLVM vectorises
            # the plain inner loop itself.
            outer = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
            sch.parallel(outer)
            return
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

    width = _lanes_dividing(inner_extent, lanes)
    if contiguous and width is not None:
        # A row of 56 (a 56x56 feature map) vectorises by 8 lanes rather than not at all.
        vectors = max(
            v for v in range(1, _MAX_VECTORS_PER_ROW + 1) if (inner_extent // width) % v == 0
        )
        j_outer, j_inner = sch.split(spatial[-1], [None, width * vectors])
        sch.reorder(*spatial[:-1], j_outer, *reduce, j_inner)
        rows = math.prod(extents[: len(spatial) - 1])
        if rows >= _ROWS_PER_THREAD * threads:
            # Enough rows to share out: whole rows per task, the row's tiles a plain loop
            # inside (tasks of one tile each cost index arithmetic per tile: the depthwise
            # 3x3 conv at 56x56 ran 0.15 ms that way, 0.09 ms by rows).
            outer = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
        else:
            outer = sch.fuse(*spatial[:-1], j_outer) if len(spatial) > 1 else j_outer
        sch.parallel(outer)
        # Vectorise while the block is still a complete reduction block; the update block that
        # decompose_reduction leaves behind is not one, and vectorize rejects it.
        sch.vectorize(j_inner)
        sch.decompose_reduction(block, reduce[0])
    else:
        outer = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        sch.parallel(outer)


def _block_kinds(sch: Any, block: Any) -> list[int]:
    """The block's iterator types (0 spatial, 2 reduction, others opaque/ordered)."""
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _lanes_dividing(extent: int, lanes: int) -> int | None:
    """The largest of ``lanes``, ``lanes/2``, ``lanes/4`` (at least 4) that divides ``extent``."""
    for width in (lanes, lanes // 2, lanes // 4):
        if width >= 4 and extent % width == 0 and extent >= width:
            return width
    return None


def _fused_rows(sch: Any, infos: list[Any], vbytes: int) -> Any | None:
    """Softmax, norms and other chains of row reductions as one parallel loop over rows.

    Applies when the kernel ends in a spatial block over ``rows x cols`` and every other block is a
    row reduction over the contiguous ``cols`` (summed in vector-wide partial sums, rfactor) or a
    per-row or per-element step of one row. Every block is computed inside the output's row loop,
    so one row's max, exponentials, sum and quotients stay in the L1 cache and the kernel
    forks its threads once instead of once per step (softmax and layer norm ran one parallel
    loop per block; layer norm 256x768: 0.099 -> 0.058 ms). Returns a scheduled copy of ``sch``,
    or None (``sch`` untouched) where the kernel is not such a chain or TVM refuses a step that
    the layout needs, so that the per-block rule applies instead."""
    if len(infos) < 2 or not any(_is_row_reduction(sch, info) for info in infos[:-1]):
        return None
    final = infos[-1]
    if set(_block_kinds(sch, final.block_rv)) != {0}:
        return None
    errors = (tvm_api().s_tir.ScheduleError, tvm_api().tvm.error.InternalError)
    candidate = sch.copy()
    try:
        return _fuse_rows_into(candidate, infos, vbytes, errors)
    except errors:
        logger.debug("torch_rc: rows could not be fused; scheduling block by block", exc_info=True)
        return None


def _is_row_reduction(sch: Any, info: Any) -> bool:
    kinds = info.dom_kind()
    return (
        kinds.count("R") == 1
        and kinds.endswith("R")
        and "O" not in kinds
        and _reads_along(sch, info.block_rv, reduce_var=True)
        and not _reads_along(sch, info.block_rv, reduce_var=False)
    )


def _fuse_rows_into(sch: Any, infos: list[Any], vbytes: int, errors: tuple) -> Any | None:
    names = [sch.get(info.block_rv).name_hint for info in infos]
    final = sch.get_sblock(names[-1])
    loops = sch.get_loops(final)
    if len(loops) < 2:
        return None
    extents = [_extent(sch, loop) for loop in loops]
    if any(extent is None for extent in extents):
        return None
    rows = math.prod(extents[:-1])
    lanes = max(1, vbytes * 8 // _write_bits(sch, final))
    # Every other block computes rows x (something per row), its rows first: a row reduction
    # (rows x reduced), a per-row scalar step (mean = sum / n), or an element-wise step.
    chain: list[Any] = []
    for name, info in zip(names[:-1], infos[:-1], strict=True):
        block = sch.get_sblock(name)
        block_extents = [_extent(sch, loop) for loop in sch.get_loops(block)]
        kinds = _block_kinds(sch, block)
        if any(extent is None for extent in block_extents) or any(k not in (0, 2) for k in kinds):
            return None
        if not _leading_rows(block_extents, kinds, rows):
            return None
        if 2 in kinds:
            if not _is_row_reduction(sch, info):
                return None
            chain.extend(_row_partial_sums(sch, block, block_extents[-1], lanes, errors))
        else:
            chain.append(block)
    row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    for block in reversed(chain):
        sch.compute_at(block, row)
    # compute_at recomputes what a row needs; anything beyond one row's share would be repeated
    # work (a producer read across rows): refuse such kernels.
    for block in chain:
        inner = [_extent(sch, loop) for loop in sch.get_loops(block)[1:]]
        total = math.prod(_block_domain(sch, block))
        if any(extent is None for extent in inner) or math.prod(inner) * rows != total:
            return None
    sch.parallel(row)
    for block in [*chain, final]:
        _vectorise_in_row(sch, block, lanes, errors)
    return sch


def _reduction_loop(sch: Any, block: Any, loops: list[Any]) -> Any | None:
    """The one of ``loops`` that the block's reduction iterator is bound to (None if unclear)."""
    free_vars = tvm_api().tirx.analysis.undefined_vars
    body = sch.get_sref(block).parent.stmt.body
    if type(body).__name__ != "SBlockRealize":
        return None
    found = []
    for iv, value in zip(sch.get(block).iter_vars, body.iter_values, strict=True):
        if int(iv.iter_type) != 2:
            continue
        used = free_vars(value, [])
        found += [loop for loop in loops if any(v.same_as(sch.get(loop).loop_var) for v in used)]
    return found[0] if len(found) == 1 else None


def _leading_rows(extents: list[int | None], kinds: list[int], rows: int) -> bool:
    """True when the block's leading spatial loops cover exactly ``rows`` (the output's rows)."""
    product = 1
    for extent, kind in zip(extents, kinds, strict=True):
        if product == rows:
            return True
        if kind != 0 or extent is None:
            return False
        product *= extent
    return product == rows


def _block_domain(sch: Any, block: Any) -> list[int]:
    return [int(iv.dom.extent) for iv in sch.get(block).iter_vars]


def _row_partial_sums(sch: Any, block: Any, extent: int | None, lanes: int, errors: tuple) -> list:
    """Split a row reduction's reduced loop by the vector width and rfactor the lane into a
    partial-sum block (done before compute_at: TVM's rfactor needs the block's own loop nest).
    Returns the blocks in compute order: [partial sums, the sum of the lanes] or [block]."""
    width = _lanes_dividing(extent or 0, lanes)
    if width is None or (extent or 0) < 2 * width:
        return [block]
    loop = sch.get_loops(block)[-1]
    try:
        _, lane = sch.split(loop, [None, width])
        partial = sch.rfactor(lane, factor_axis=_write_ndim(sch, block))
    except errors:
        return [block]
    return [partial, block]


def _vectorise_in_row(sch: Any, block: Any, lanes: int, errors: tuple) -> None:
    """Inside one row: vectorise an element-wise block's contiguous loop, or a partial-sum block's
    lane (under its reduction loop). Optional steps; a refused one leaves the block scalar."""
    loops = sch.get_loops(block)[1:]
    if not loops:
        return
    kinds = _block_kinds(sch, block)
    try:
        if 2 not in kinds:
            extent = _extent(sch, loops[-1]) or 0
            width = _lanes_dividing(extent, lanes)
            if width is not None and _writes_contiguously(sch, block, kinds.count(0)):
                _, inner = sch.split(loops[-1], [None, width])
                sch.vectorize(inner)
        elif "_rf" in sch.get(block).name_hint and len(loops) == 2:
            # compute_at made one loop per iterator, in the iterators' order: put the
            # reduction outside and the (contiguous) lane inside.
            reduction = _reduction_loop(sch, block, loops)
            if reduction is None:
                return
            lane = loops[1] if reduction.same_as(loops[0]) else loops[0]
            sch.reorder(reduction, lane)
            sch.vectorize(lane)
            sch.decompose_reduction(block, reduction)
    except errors:
        logger.debug("torch_rc: a fused-row vectorisation step was refused", exc_info=True)


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
