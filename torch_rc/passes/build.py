"""Compile a lowered partition's Relax module into a VM executable for a target."""

from __future__ import annotations

from typing import Any

from torch_rc.errors import BuildError
from torch_rc.options import Options
from torch_rc.passes.schedule import default_schedule_pass, gpu_default_schedule_pass
from torch_rc.platform.target import TargetInfo
from torch_rc.platform.tvm_shim import tvm_api, tvm_warnings_once

__all__ = [
    "build_executable",
    "legalize_and_fuse_passes",
    "per_call_module",
    "relax_pipeline",
]

TRANSFORM_PARAMS = "main_transform_params"


def lift_weight_transforms() -> Any:
    """Relax's ``LiftTransformParams``: work that depends only on the weights (the inputs after
    ``main``'s ``num_input``) moves to ``main_transform_params``, run once per weights."""
    return tvm_api().relax.transform.LiftTransformParams()


def per_call_module(mod: Any) -> Any:
    """``mod`` with weight transforms lifted and dropped: the kernels that run on every call
    (what tuning extracts tasks from)."""
    lifted = lift_weight_transforms()(mod)
    if TRANSFORM_PARAMS in [gv.name_hint for gv in lifted.get_global_vars()]:
        lifted = tvm_api().tvm.IRModule(
            {gv: func for gv, func in lifted.functions_items() if gv.name_hint != TRANSFORM_PARAMS}
        )
    return lifted


def legalize_and_fuse_passes(target: Any) -> list[Any]:
    """The library dispatch, legalization and fusion passes for ``target`` (a
    ``tvm.target.Target``), without any schedule: the kernels tuning extracts, and what schedules
    are applied to."""
    tvm = tvm_api().tvm
    if str(target.kind.name) == "cuda":
        from tvm.relax.backend.cuda import pipeline as cuda

        transform = tvm.relax.transform
        # cuda.legalize_passes ends with dlight's default GPU schedules; torch_rc inserts tuned
        # records before them, so the fusion passes are listed here without it.
        return cuda.library_dispatch_passes(target) + [
            transform.LegalizeOps(),
            transform.AnnotateTIROpPattern(),
            transform.FoldConstant(),
            transform.FuseOps(),
            transform.FuseTIR(),
        ]
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    return cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)


def relax_pipeline(target: TargetInfo, options: Options, tuned: bool = False) -> Any:
    """TVM's CPU or CUDA pipeline with schedules inserted after operator fusion: tuned records
    from the current MetaSchedule database first (``tuned``), default schedules for the rest
    (torch_rc's CPU rule; dlight's GPU rules, which every GPU kernel needs: an unscheduled one
    binds no threads and fails to build)."""
    tvm = tvm_api().tvm
    if target.kind == "cuda":
        from tvm.relax.backend.cuda import pipeline as lower
    else:
        from tvm.relax.backend.cpu_generic import pipeline as lower

    if target.kind == "cuda":
        schedule = [gpu_default_schedule_pass()]
    else:
        schedule = [default_schedule_pass()] if options.schedule == "default" else []
    if tuned:
        schedule = [tvm.relax.transform.MetaScheduleApplyDatabase()] + schedule

    @tvm.transform.module_pass(opt_level=0, name="TorchRCPipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        with target.target:
            passes = (
                [lift_weight_transforms()]
                + legalize_and_fuse_passes(target.target)
                + schedule
                + lower.dataflow_lower_passes(target.target)
                + lower.finalize_passes(target.target)
            )
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def build_executable(mod: Any, target: TargetInfo, options: Options, database: Any = None) -> Any:
    """Build ``mod`` into a Relax VM executable, using ``database``'s tuned records if given.

    Raises:
        BuildError: TVM failed to legalize, schedule or generate code for the module.
    """
    api = tvm_api()
    try:
        # TVM's C++ warnings (e.g. take's "fast mode" note, once per embedding) are logged once
        # per process instead of once per build.
        with tvm_warnings_once():
            if database is not None:
                with target.target, database:
                    return api.compile(
                        mod,
                        target.target,
                        relax_pipeline=relax_pipeline(target, options, tuned=True),
                    )
            return api.compile(mod, target.target, relax_pipeline(target, options))
    except Exception as exc:  # TVMError and friends: reported as a build failure of this partition
        raise BuildError(
            f"TVM build failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        ) from exc
