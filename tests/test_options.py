import pytest

from torch_rc import Options, OptionsError


def test_defaults_and_explicit_options_win_over_env():
    opts = Options.resolve(
        {"strict": True}, None, environ={"TORCH_RC_STRICT": "0", "TORCH_RC_SELECT": "tvm"}
    )
    assert opts.strict is True
    assert opts.select == "tvm"


def test_unknown_key_names_closest_match():
    with pytest.raises(OptionsError, match=r"'strickt'.*did you mean 'strict'"):
        Options.resolve({"strickt": True})


def test_unknown_env_variable_is_an_error():
    with pytest.raises(OptionsError, match="TORCH_RC_SELEKT"):
        Options.resolve(environ={"TORCH_RC_SELEKT": "tvm"})


def test_bad_value_names_option():
    with pytest.raises(OptionsError, match="'select'"):
        Options.resolve({"select": "fastest"})
    with pytest.raises(OptionsError, match="'min_partition_size'"):
        Options.resolve({"min_partition_size": 0})
    with pytest.raises(OptionsError, match="'strict'"):
        Options.resolve(environ={"TORCH_RC_STRICT": "maybe"})


def test_env_strings_are_coerced():
    opts = Options.resolve(
        environ={"TORCH_RC_EXCLUDE_OPS": "gelu, aten.mm.default", "TORCH_RC_NUM_THREADS": "3"}
    )
    assert opts.exclude_ops == ("gelu", "aten.mm.default")
    assert opts.num_threads == 3


def test_modes_map_to_presets_and_unknown_mode_fails():
    assert Options.resolve(mode="reduce-overhead", environ={}).min_partition_size == 4
    assert Options.resolve(mode="default", environ={}) == Options()
    with pytest.raises(OptionsError, match="unknown torch.compile mode"):
        Options.resolve(mode="turbo", environ={})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"rpc_tracker": "tracker.lan"}, "'rpc_tracker' must be HOST:PORT"),
        ({"rpc_tracker": "tracker.lan:99999", "rpc_key": "k"}, "'rpc_tracker' must be HOST:PORT"),
        ({"rpc_tracker": "tracker.lan:9190"}, "'rpc_key' is needed"),
        ({"rpc_key": "epyc"}, "'rpc_key' needs 'rpc_tracker'"),
        ({"rpc_tracker": "t:9190", "rpc_key": "k", "rpc_timeout_s": 0}, "'rpc_timeout_s'"),
        ({"rpc_retries": -1}, "'rpc_retries' must be >= 0"),
        ({"tune_drivers": 0}, "'tune_drivers' must be >= 1"),
        ({"tune_drivers": 2, "tune_driver_index": 2}, r"'tune_driver_index' must be in 0\.\.1"),
    ],
)
def test_fleet_options_are_checked_and_named(given, message):
    with pytest.raises(OptionsError, match=message):
        Options.resolve(given, environ={})


def test_fleet_options_come_from_the_environment():
    opts = Options.resolve(
        None,
        environ={
            "TORCH_RC_RPC_TRACKER": "10.0.0.5:9190",
            "TORCH_RC_RPC_KEY": "epyc",
            "TORCH_RC_TUNE_DRIVERS": "4",
            "TORCH_RC_TUNE_DRIVER_INDEX": "3",
        },
    )
    assert (opts.rpc_tracker, opts.rpc_key, opts.tune_drivers, opts.tune_driver_index) == (
        "10.0.0.5:9190",
        "epyc",
        4,
        3,
    )
