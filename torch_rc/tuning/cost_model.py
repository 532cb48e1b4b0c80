"""The surrogate cost model: MetaSchedule's XGBoost model, trained online on real measurements.

It predicts ``best latency / latency`` (MetaSchedule trains on ``min_cost / cost`` per workload), the
scale MCTS rewards use. Until it has seen ``warmup`` measurements, XGBoost's predictions are
random numbers (that is what MetaSchedule's model returns before its warm-up); this wrapper returns
the built-in rules' score instead, a prior that at least knows the hardware.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from torch_rc.platform.hardware import AnyHardware
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.rules import rule_score
from torch_rc.tuning.space import DesignSpace, ScheduleState

__all__ = ["XGBCostModel", "make_xgb_model"]


def make_xgb_model(*, warmup: int, seed: int = 43) -> Any:
    """MetaSchedule's ``XGBModel`` configured for small budgets (quiet, single-threaded)."""
    ms = tvm_api().s_tir.meta_schedule
    config = ms.cost_model.xgb_model.XGBConfig(seed=seed, nthread=1)
    logging.getLogger("tvm.s_tir.meta_schedule.cost_model.xgb_model").setLevel(logging.WARNING)
    return ms.cost_model.XGBModel(
        config=config, num_warmup_samples=warmup, verbose_eval=0, adaptive_training=False
    )


class XGBCostModel:
    """The MCTS :class:`~torch_rc.tuning.mcts.CostModel` over a :class:`DesignSpace`.

    Args:
        space: The workload's design space.
        hardware: For the prior used before warm-up.
        warmup: Measurements before XGBoost's predictions are used.
        seed: XGBoost's seed.
    """

    def __init__(
        self, space: DesignSpace, hardware: AnyHardware, *, warmup: int = 8, seed: int = 43
    ) -> None:
        self.space = space
        self.hardware = hardware
        self.warmup = warmup
        self.model = make_xgb_model(warmup=warmup, seed=seed)
        self.args_info = tvm_api().s_tir.meta_schedule.arg_info.ArgInfo.from_prim_func(
            space.mod["main"]
        )
        self.measured = 0

    def _candidate(self, state: ScheduleState) -> Any | None:
        sch = self.space.schedule(state)
        if sch is None:
            return None
        return tvm_api().s_tir.meta_schedule.MeasureCandidate(sch, self.args_info)

    @property
    def trained(self) -> bool:
        return self.measured >= self.warmup and self.model.booster is not None

    def predict(self, states: Sequence[ScheduleState]) -> list[float]:
        candidates = [self._candidate(s) for s in states]
        if not self.trained:
            return [
                0.0 if c is None else rule_score(self.space, s, self.hardware)[0]
                for s, c in zip(states, candidates, strict=True)
            ]
        valid = [c for c in candidates if c is not None]
        scores = iter(self.model.predict(self.space.context, valid)) if valid else iter(())
        return [0.0 if c is None else max(0.0, float(next(scores))) for c in candidates]

    def update(self, states: Sequence[ScheduleState], latencies: Sequence[float | None]) -> None:
        runner = tvm_api().s_tir.meta_schedule.runner.RunnerResult
        pairs = []
        for state, latency in zip(states, latencies, strict=True):
            candidate = self._candidate(state)
            if candidate is None:
                continue
            ok = latency is not None and math.isfinite(latency) and latency > 0
            pairs.append((candidate, runner([latency] if ok else None, None if ok else "failed")))
        if pairs:
            self.model.update(self.space.context, [c for c, _ in pairs], [r for _, r in pairs])
            self.measured += len(pairs)
