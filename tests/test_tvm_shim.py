import pytest

from torch_rc.errors import TVMVersionError
from torch_rc.tvm_shim import check_versions, tvm_api


def test_supported_versions_pass_and_api_resolves():
    check_versions("0.27.0.post1", "0.1.14.post0")
    api = tvm_api()
    assert api.version.startswith("0.27") and api.s_tir.Schedule is not None


def test_segfaulting_tvm_ffi_is_refused_with_install_command():
    with pytest.raises(
        TVMVersionError, match=r"0\.1\.15.*segfaults.*pip install 'apache-tvm-ffi==0\.1\.14\.post0'"
    ):
        check_versions("0.27.0.post1", "0.1.15.post2")


def test_missing_or_old_tvm_is_refused():
    with pytest.raises(TVMVersionError, match="found none"):
        check_versions("", "0.1.14.post0")
    with pytest.raises(TVMVersionError, match="found 0.20.0"):
        check_versions("0.20.0", "0.1.14.post0")
