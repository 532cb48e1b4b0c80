"""The LLM proposer: validation and fallback on scripted answers, and the real local model."""

import json
import random

import pytest

from tests.tuning.scripted_endpoint import scripted_endpoint
from tests.tuning.workloads import matmul
from torch_rc.platform.hardware import host_hardware
from torch_rc.platform.tvm_shim import tvm_api
from torch_rc.tuning.llm_client import LLMClient, LLMConfig
from torch_rc.tuning.llm_proposer import LLMProposer, parse_answer
from torch_rc.tuning.mcts import Context, Step
from torch_rc.tuning.space import DesignSpace


@pytest.fixture(scope="module")
def space():
    return DesignSpace(matmul(64, 128, 128), tvm_api().cpu_target(2), seed=1)


def _context(space):
    state = space.initial_states()[0]
    parent = space.initial_states()[1]
    return Context(state, 0.4, ((parent, 0.3),), space.actions)


def test_parse_answer_finds_json_in_text():
    assert parse_answer('{"a": 1}') == {"a": 1}
    assert parse_answer('Let me think.\n```json\n{"a": 2}\n```') == {"a": 2}
    assert parse_answer('reasoning... {"a": 3} done') == {"a": 3}
    assert parse_answer("no json here") is None


def test_prompt_carries_hardware_ir_decisions_ancestors_and_actions(space):
    proposer = LLMProposer(
        space, host_hardware(), LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1"))
    )
    text = proposer.prompt(_context(space), 2)[1]["content"]
    for expected in (
        "fp32 lanes",
        "T.prim_func",
        "reduction loop C.k",
        "predicted score 0.400",
        "parent: sketch 1, score 0.300",
        '"set"',
        "mutate_tile_size",
    ):
        assert expected in text
    schema = proposer.schema(2)
    assert schema["properties"]["proposals"]["items"]["properties"]["action"]["enum"][0] == "set"


def test_prompt_carries_the_measured_lineage_and_what_helped(space):
    proposer = LLMProposer(
        space, host_hardware(), LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1"))
    )
    state = space.initial_states()[0]
    lineage = (
        Step("root", "root", 0.004),
        Step("blocking", "blocking", 0.001),
        Step("set d3 = [1, 2, 4, 8]", "builtin", None, failed=True),
        Step("mutate_unroll", "llm:gemma", 0.0008),
        Step("set d5 = 2", "builtin"),
    )
    helped = (("blocking", 4.0), ("mutate_unroll", 1.25))
    context = Context(state, 0.9, (), space.actions, lineage=lineage, helped=helped)
    text = proposer.prompt(context, 2)[1]["content"]
    for expected in (
        "  root: 4 ms",
        "  blocking: 1 ms, 4.00x the speed of the last measured step before it",
        "  set d3 = [1, 2, 4, 8] (builtin): failed",
        "  mutate_unroll (llm:gemma): 0.8 ms, 1.25x the speed",
        "  set d5 = 2 (builtin): not measured yet",
        "  blocking: 4.00x faster than the best before it",
        "  mutate_unroll: 1.25x faster than the best before it",
    ):
        assert expected in text, expected
    # A long lineage shows its latest steps, and speed-ups still count from the hidden ones.
    long = (Step("root", "root", 0.002),) + tuple(
        Step(f"mutate_tile_size {i}", "builtin") for i in range(9)
    )
    long += (Step("mutate_unroll", "builtin", 0.001),)
    text = proposer.prompt(Context(state, 0.9, (), space.actions, lineage=long), 2)[1]["content"]
    assert "... 3 earlier step(s)" in text and "  root:" not in text
    assert "mutate_unroll (builtin): 1 ms, 2.00x the speed" in text
    assert "No transformation has improved on the first measured schedule yet." in text
    # Without a history (a proposer called outside a search) the prompt says nothing of one.
    assert "Measured history" not in proposer.prompt(_context(space), 2)[1]["content"]


def test_valid_answers_are_used_and_invalid_ones_fall_back_and_are_counted(space):
    context = _context(space)
    j = next(d for d in space.decisions[0] if d.loop == "j")
    good = {
        "action": "set",
        "decision": f"d{j.index}",
        "value": [4, 4, 1, 8],
        "why": "8 fp32 lanes",
    }
    bad_range = {"action": "set", "decision": f"d{j.index}", "value": [3, 3, 3, 3]}
    bad_action = {"action": "make_it_fast"}
    answers = [
        json.dumps({"reasoning": "vectorise j", "proposals": [good, bad_range]}),
        json.dumps({"reasoning": "x", "proposals": [bad_action]}),
        "I cannot answer in JSON, sorry",
    ]
    with scripted_endpoint([("ok", a) for a in answers]) as (url, _):
        client = LLMClient(LLMConfig(base_url=url, model="scripted"))
        client.dialect = "json_object_schema"
        proposer = LLMProposer(space, host_hardware(), client)
        first = proposer.propose(context, 2, random.Random(0))
        second = proposer.propose(context, 2, random.Random(1))
        third = proposer.propose(context, 2, random.Random(2))
    assert first[0].source == "llm:scripted" and first[0].state.value(j.index) == (4, 4, 1, 8)
    assert first[0].rationale == "8 fp32 lanes"
    assert first[1].source == "builtin"
    assert all(p.source == "builtin" for p in second + third) and len(third) == 2
    stats = proposer.stats()
    assert stats["accepted"] == 1 and stats["invalid"] == 2 and stats["unparsable_answers"] == 1
    assert stats["fallbacks"] == 5 and stats["fallback_rate"] == round(5 / 6, 3)


def test_a_proposal_that_recomputes_a_reduction_is_invalid():
    """Moving a softmax's row max under the column loop replays, but redoes the max 128 times
    over: counted invalid, and the built-in proposer fills in."""
    from tests.tuning.test_space import _softmax_sketch0

    space, state, locations = _softmax_sketch0()
    maxelem = next(d for d in locations if d.block == "T_softmax_maxelem")
    per_column = {"action": "set", "decision": f"d{maxelem.index}", "value": 1}
    per_row = {"action": "set", "decision": f"d{maxelem.index}", "value": 0}
    answer = json.dumps({"reasoning": "fuse", "proposals": [per_column, per_row]})
    with scripted_endpoint([("ok", answer)]) as (url, _):
        client = LLMClient(LLMConfig(base_url=url, model="scripted"))
        client.dialect = "json_object_schema"
        proposer = LLMProposer(space, host_hardware(), client)
        proposals = proposer.propose(Context(state, 0.5, (), space.actions), 2, random.Random(0))
    assert space.legal(space.set_decision(state, maxelem.index, 1))  # legal, yet refused
    assert proposals[0].source == "llm:scripted"
    assert proposals[0].state.value(maxelem.index) == 0
    assert proposer.stats()["invalid"] == 1 and proposals[1].source == "builtin"
    assert not any(space.recomputes(p.state) for p in proposals)


def test_dead_endpoint_falls_back_to_the_builtin_proposer(space):
    client = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1", model="gone"))
    proposer = LLMProposer(space, host_hardware(), client)
    proposals = proposer.propose(_context(space), 2, random.Random(0))
    assert len(proposals) == 2 and all(p.source == "builtin" for p in proposals)
    assert proposer.stats()["failed_calls"] == 1 and proposer.stats()["errors"] == {
        "unreachable": 1
    }


@pytest.mark.parametrize("mode", ["values", "mutators"])
def test_real_local_model_answers_are_parsed_and_validated(space, llm_url, mode):
    client = LLMClient(LLMConfig(base_url=llm_url, model="gemma-3-270m", mode=mode, max_tokens=256))
    proposer = LLMProposer(space, host_hardware(), client)
    proposals = []
    for seed in range(2):
        proposals += proposer.propose(_context(space), 2, random.Random(seed))
    stats = proposer.stats()
    # The endpoint was reached, answered in a negotiated structured dialect, and every answer was
    # parsed (the small model's proposals may still be invalid: those are counted and replaced).
    assert stats["calls"] == 2 and stats["failed_calls"] == 0 and stats["errors"] == {}
    assert stats["dialect"] == "json_object_schema"
    assert stats["unparsable_answers"] == 0
    assert stats["completion_tokens"] > 0 and stats["prompt_tokens"] > 500
    assert stats["accepted"] + stats["fallbacks"] == 4 and len(proposals) == 4
    assert all(space.legal(p.state) for p in proposals)
