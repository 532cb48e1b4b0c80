"""The model pool: tree policy, joint action, escalation and accounting on scripted endpoints
(deterministic), and one run with the real local model behind two pool entries."""

import json
import math
import random

import pytest

from tests.tuning.scripted_endpoint import scripted_endpoint
from tests.tuning.workloads import matmul
from torch_rc.platform.hardware import host_hardware
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.llm_client import LLMClient, LLMConfig
from torch_rc.tuning.mcts import Context, Node
from torch_rc.tuning.pool import PoolModel, PoolProposer, model_aware_select, parse_pool, phi_small
from torch_rc.tuning.space import DesignSpace


@pytest.fixture(scope="module")
def space():
    return DesignSpace(matmul(64, 128, 128), tvm_api().cpu_target(2), seed=1)


def _j(space):
    return next(d for d in space.decisions[0] if d.loop == "j").index


def _answer(space, factors, next_model="small"):
    return json.dumps(
        {
            "reasoning": "r",
            "proposals": [
                {
                    "action": "set",
                    "decision": f"d{_j(space)}",
                    "value": factors,
                    "why": f"j={factors}",
                }
            ],
            "next_model": next_model,
        }
    )


class ByJTile:
    """A fake cost model: the score is looked up by the j tile of the state."""

    def __init__(self, space, table):
        self.space, self.table = space, table

    def predict(self, states):
        return [self.table.get(s.value(_j(self.space)), 0.5) for s in states]


def _pool(space, small_url, large_url):
    models = [
        PoolModel("large", LLMConfig(base_url=large_url, model="L"), price_in=10.0, price_out=30.0),
        PoolModel("small", LLMConfig(base_url=small_url, model="S"), price_in=0.1, price_out=0.2),
    ]
    clients = {m.name: LLMClient(m.config) for m in models}
    for client in clients.values():
        client.dialect = "json_object_schema"
    return PoolProposer(space, host_hardware(), models, clients=clients, escalate_every=2)


def test_phi_small_and_the_model_aware_tree_policy():
    theta = {"small": 1.0, "mid": 10.0, "large": 100.0}
    assert phi_small(theta, "small") == pytest.approx(1.0) and phi_small(theta, "large") == 0.0
    assert phi_small(theta, "mid") == pytest.approx(0.5, abs=1e-6)
    select = model_aware_select(theta, lam=0.5, exploration=math.sqrt(2))
    small, large = Node("a", source="llm:small"), Node("b", source="llm:large")
    assert select([large, small], 1) is small  # unvisited: cheapest first
    small.visits, small.value_sum, large.visits, large.value_sum = 2, 1.0, 2, 1.4
    # Values 0.5 vs 0.7: the bias (0.5 * 1) outweighs the value gap (0.5 * 0.2).
    assert select([large, small], 4) is small
    # All siblings from one model: lambda is ignored, plain UCT picks the better value.
    other = Node("c", source="llm:large", visits=2, value_sum=1.0)
    assert select([large, other], 4) is large


def test_joint_action_routes_the_next_expansion_and_accounts_cost(space):
    state = space.initial_states()[0]
    with (
        scripted_endpoint([("ok", _answer(space, [4, 4, 1, 8], next_model="large"))]) as (
            small_url,
            small_requests,
        ),
        scripted_endpoint([("ok", _answer(space, [2, 8, 1, 8], next_model="gpt-9"))]) as (
            large_url,
            large_requests,
        ),
    ):
        pool = _pool(space, small_url, large_url)
        first = pool.propose(Context(state, 0.5, (), space.actions), 1, random.Random(0))
        assert len(small_requests) == 1 and not large_requests  # the cheapest model goes first
        assert first[0].source == "llm:small" and first[0].next_model == "large"
        prompt = small_requests[0]["messages"][1]["content"]
        assert (
            "Model pool" in prompt and "small: hit rate" in prompt and "large: hit rate" in prompt
        )
        assert small_requests[0]["response_format"]["schema"]["properties"]["next_model"][
            "enum"
        ] == ["small", "large"]
        child = Context(
            first[0].state, 0.6, ((state, 0.5),), space.actions, "llm:small", "large", ("root",)
        )
        second = pool.propose(child, 1, random.Random(1))
    assert len(large_requests) == 1 and second[0].source == "llm:large"
    stats = pool.stats()
    # An unknown next_model falls back to the best hit rate (both 100%: the cheaper one).
    assert second[0].next_model == "small" and stats["models"]["large"]["next_model_invalid"] == 1
    assert stats["models"]["small"]["cost"] == pytest.approx(100 / 1000 * 0.1 + 20 / 1000 * 0.2)
    assert stats["models"]["large"]["cost"] == pytest.approx(100 / 1000 * 10 + 20 / 1000 * 30)
    assert stats["largest_share"] == 0.5 and stats["calls"] == 2


def test_every_second_small_model_regression_escalates_and_keeps_only_no_worse(space):
    state = space.initial_states()[0]
    small_script = [
        ("ok", _answer(space, [4, 4, 1, 8])),
        ("ok", _answer(space, [8, 2, 1, 8])),
        ("ok", _answer(space, [16, 1, 1, 8])),
        ("ok", _answer(space, [2, 4, 2, 8])),
    ]
    large_script = [("ok", _answer(space, [2, 8, 1, 8])), ("ok", _answer(space, [1, 16, 1, 8]))]
    table = {
        (4, 4, 1, 8): 0.3,
        (8, 2, 1, 8): 0.2,
        (2, 8, 1, 8): 0.9,
        (16, 1, 1, 8): 0.3,
        (2, 4, 2, 8): 0.35,
        (1, 16, 1, 8): 0.1,
    }
    with (
        scripted_endpoint(small_script) as (small_url, _),
        scripted_endpoint(large_script) as (large_url, large_requests),
    ):
        pool = _pool(space, small_url, large_url)
        pool.model = ByJTile(space, table)
        context = Context(state, 0.5, (), space.actions)
        first = pool.propose(context, 1, random.Random(0))  # regression 1: kept, no escalation
        assert first[0].source == "llm:small" and not large_requests
        second = pool.propose(context, 1, random.Random(1))  # regression 2: escalate, large wins
        assert (
            len(large_requests) == 1
            and "Correction request" in large_requests[0]["messages"][1]["content"]
        )
        assert "predicted 0.200" in large_requests[0]["messages"][1]["content"]
        assert second[0].source == "llm:large" and second[0].state.value(_j(space)) == (2, 8, 1, 8)
        pool.propose(context, 1, random.Random(2))  # regression 1 again (the count was reset)
        fourth = pool.propose(
            context, 1, random.Random(3)
        )  # regression 2: large is worse: small kept
    assert len(large_requests) == 2 and fourth[0].source == "llm:small"
    large = pool.stats()["models"]["large"]
    assert large["escalations"] == 2 and large["kept_escalations"] == 1
    assert [e.get("escalated_to") for e in pool.log] == [None, "large", None, "large"]


def test_pool_config_errors_are_named():
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_pool("[{")
    with pytest.raises(ValueError, match="needs at least a 'model'"):
        parse_pool([{"name": "x"}])
    with pytest.raises(ValueError, match="unknown keys \\['prize'\\]"):
        parse_pool([{"model": "m", "prize": 1}])
    with pytest.raises(ValueError, match="must be unique"):
        parse_pool([{"model": "m"}, {"model": "m"}])
    models = parse_pool('[{"model": "m", "api_key_env": "K"}]', environ={"K": "secret"})
    assert models[0].config.api_key == "secret" and "secret" not in repr(models[0])


def test_pool_tunes_with_the_real_local_model(space, llm_url):
    from torch_rc.tuning.measure import Measurer
    from torch_rc.tuning.tuner import tune_workload

    models = parse_pool(
        [
            {
                "name": "gemma-cold",
                "base_url": llm_url,
                "model": "gemma-3-270m",
                "temperature": 0.2,
                "size": 0.27,
                "max_tokens": 200,
            },
            {
                "name": "gemma-hot",
                "base_url": llm_url,
                "model": "gemma-3-270m",
                "temperature": 1.0,
                "size": 1.0,
                "max_tokens": 200,
            },
        ]
    )
    hw = host_hardware()
    pool = PoolProposer(space, hw, models)
    result = tune_workload(
        space,
        Measurer(space.target, repeats=2, min_repeat_ms=2),
        proposer=pool,
        hardware=hw,
        trials=3,
        seed=0,
    )
    assert result.best_measurement.check.passed and result.proposer == "pool"
    stats = result.stats
    assert stats["calls"] >= 1 and stats["models"]["gemma-cold"]["calls"] >= 1  # cheapest first
    assert stats["prompt_tokens"] > 0 and sum(m["errors"] for m in stats["models"].values()) == 0
    assert "improvements_by_source" in stats
