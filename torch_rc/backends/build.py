"""Compile a lowered partition's Relax module into a VM executable for a target."""

from __future__ import annotations

from typing import Any

from torch_rc.backends.schedule import default_schedule_pass
from torch_rc.backends.target import TargetInfo
from torch_rc.errors import BuildError
from torch_rc.options import Options
from torch_rc.tvm_shim import tvm_api

__all__ = ["build_executable", "relax_pipeline"]


def relax_pipeline(target: TargetInfo, options: Options, tuned: bool = False) -> Any:
    """TVM's CPU pipeline with schedules inserted after operator fusion: tuned records from the
    current MetaSchedule database first (``tuned``), torch_rc's default schedules for the rest."""
    tvm = tvm_api().tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    schedule = [default_schedule_pass()] if options.schedule == "default" else []
    if tuned:
        schedule = [tvm.relax.transform.MetaScheduleApplyDatabase()] + schedule

    @tvm.transform.module_pass(opt_level=0, name="TorchRCPipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        with target.target:
            passes = (
                cpu.library_dispatch_passes(target.target)
                + cpu.legalize_passes(target.target)
                + schedule
                + cpu.dataflow_lower_passes(target.target)
                + cpu.finalize_passes(target.target)
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
        if database is not None:
            with target.target, database:
                return api.tvm.compile(
                    mod, target.target, relax_pipeline=relax_pipeline(target, options, tuned=True)
                )
        return api.tvm.compile(mod, target.target, relax_pipeline=relax_pipeline(target, options))
    except Exception as exc:  # TVMError and friends: reported as a build failure of this partition
        raise BuildError(
            f"TVM build failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        ) from exc
