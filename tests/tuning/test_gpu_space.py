"""Tuning for a GPU without one: MetaSchedule's CUDA design space, the GPU rules, and the built
candidates compiling with nvcc. Measuring them needs the GPU (tests/backends/test_cuda.py)."""

import random

import pytest

from tests.tuning.workloads import matmul
from torch_rc.backends.cross_compile import cuda_sources, nvcc_available, nvcc_compile
from torch_rc.platform.hardware import gpu_hardware
from torch_rc.platform.target import KNOWN_GPUS, TargetInfo, cuda_target_spec, gpu_target_key
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.llm_client import LLMClient, LLMConfig
from torch_rc.tuning.llm_proposer import LLMProposer
from torch_rc.tuning.mcts import Context
from torch_rc.tuning.rules import RuleProposer, rule_score
from torch_rc.tuning.space import DesignSpace

H100 = KNOWN_GPUS["h100"]


@pytest.fixture(scope="module")
def space():
    api = tvm_api()
    target = api.tvm.target.Target(cuda_target_spec(H100), host=api.cpu_target(2))
    return DesignSpace(matmul(256, 256, 256), target, seed=1)


def tile(space, state, loop):
    return next(d for d in space.decisions[state.sketch] if d.kind == "tile" and d.loop == loop)


def test_cuda_design_space_binds_threads(space):
    assert space.sketches
    state = space.initial_states()[0]
    trace = str(space.trace(state))
    assert "threadIdx.x" in trace and "blockIdx.x" in trace
    # MetaSchedule's GPU tiling: five levels per spatial loop (block, vthread, thread, 2 inner).
    assert tile(space, state, "i").levels == 5 and tile(space, state, "k").levels == 3


def test_gpu_rules_prefer_warp_multiples_and_reject_oversized_blocks(space):
    hw = gpu_hardware(H100)
    state = space.initial_states()[0]
    i, j = tile(space, state, "i"), tile(space, state, "j")
    good = space.set_decision(
        space.set_decision(state, i.index, [8, 1, 16, 2, 1]), j.index, [8, 1, 16, 2, 1]
    )
    oversized = space.set_decision(
        space.set_decision(state, i.index, [1, 1, 64, 4, 1]), j.index, [1, 1, 32, 8, 1]
    )
    odd = space.set_decision(
        space.set_decision(state, i.index, [16, 1, 4, 4, 1]), j.index, [16, 1, 4, 4, 1]
    )
    score_good, parts = rule_score(space, good, hw)
    assert set(parts) >= {"threads", "occupancy", "registers", "shared"}
    assert parts["threads"] == 1.0  # 256 threads
    assert rule_score(space, oversized, hw)[1]["threads"] < 0.1  # 2048 threads > 1024
    assert rule_score(space, odd, hw)[1]["threads"] < 1.0  # 16 threads: half a warp
    assert score_good > rule_score(space, oversized, hw)[0]
    assert score_good > rule_score(space, odd, hw)[0]


def test_prompt_describes_the_gpu(space):
    hw = gpu_hardware(H100)
    assert "132 SMs" in hw.describe() and "warp size 32" in hw.describe()
    proposer = LLMProposer(space, hw, LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1")))
    state = space.initial_states()[0]
    messages = proposer.prompt(Context(state, 0.5, (), space.actions), 2)
    text = "\n".join(m["content"] for m in messages)
    assert "GPU NVIDIA H100" in text and "shared memory" in text


def test_builtin_proposals_for_gpu_are_legal(space):
    proposer = RuleProposer(space, gpu_hardware(H100))
    state = space.initial_states()[0]
    proposals = proposer.propose(Context(state, 0.5, (), space.actions), 3, random.Random(0))
    assert proposals and all(space.legal(p.state) for p in proposals)


@pytest.mark.skipif(not nvcc_available(), reason="nvcc (CUDA toolkit) is not on PATH")
def test_a_tuning_candidate_builds_and_compiles_for_the_gpu(space):
    state = space.initial_states()[0]
    scheduled = space.schedule(state)
    executable = tvm_api().tvm.compile(scheduled.mod, space.target)
    target = TargetInfo("cuda", 2, "", gpu_target_key(H100), 0, H100)
    (source,) = [s for s in cuda_sources(executable)]
    assert nvcc_compile(source, target)


@pytest.mark.skipif(not nvcc_available(), reason="nvcc (CUDA toolkit) is not on PATH")
def test_a_stored_gpu_record_schedules_the_cuda_build(tmp_path):
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    from torch_rc.backends.lower import lower_partition
    from torch_rc.cache.ms_database import make_database
    from torch_rc.cache.records import Check
    from torch_rc.cache.store import SQLiteStore
    from torch_rc.options import Options
    from torch_rc.passes.build import build_executable
    from torch_rc.tuning.session import extract_tasks

    ms = tvm_api().s_tir.meta_schedule
    gm = make_fx(lambda a, b: torch.relu(a @ b))(torch.randn(64, 128), torch.randn(128, 32))
    lowered = lower_partition(gm, [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"])
    target = TargetInfo("cuda", 2, "h100", gpu_target_key(H100), 0, H100)
    (task,) = extract_tasks([lowered.mod], target.target)
    gpu_space = DesignSpace(task.mod, target.target, seed=3)
    sch = gpu_space.schedule(gpu_space.initial_states()[0])
    database = make_database(SQLiteStore(tmp_path / "s.sqlite"), target.key)
    record = ms.database.TuningRecord(
        sch.trace,
        database.commit_workload(task.mod),
        [1e-5],
        target.target,
        ms.arg_info.ArgInfo.from_prim_func(task.mod["main"]),
    )
    database.promote(record, Check("test", 1e-4, 1e-4, 0.0, True, "test"), key=task.key)
    tuned = cuda_sources(build_executable(lowered.mod, target, Options(), database))
    default = cuda_sources(build_executable(lowered.mod, target, Options()))
    assert database.served  # the build asked for, and used, the stored record
    assert tuned != default  # the record, not dlight's rule, scheduled the kernel
    assert nvcc_compile(tuned[0], target)
