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
