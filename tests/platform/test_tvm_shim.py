import pytest

from torch_rc.errors import TVMVersionError
from torch_rc.platform.tvm_shim import check_versions, tvm_api


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


def test_meta_schedule_context_without_every_targets_intrinsics():
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from torch_rc.platform.tvm_shim import tvm_api, prepare_meta_schedule\n"
        "api = tvm_api(); prepare_meta_schedule('llvm')\n"
        "te = api.tvm.te\n"
        "a = te.placeholder((64, 64), name='A'); b = te.placeholder((64, 64), name='B')\n"
        "k = te.reduce_axis((0, 64), name='k')\n"
        "c = te.compute((64, 64), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name='C')\n"
        "mod = api.tvm.IRModule({'main': te.create_prim_func([a, b, c])})\n"
        "ms = api.s_tir.meta_schedule\n"
        "ctx = ms.TuneContext(mod=mod, target=api.cpu_target(1), space_generator='post-order-apply',"
        " search_strategy='evolutionary', task_name='mm', rand_state=1, num_threads=1)\n"
        "spaces = ctx.space_generator.generate_design_space(mod)\n"
        "print(len(spaces), 'tvm.s_tir.tensor_intrin.x86' in sys.modules,"
        " 'tvm.s_tir.tensor_intrin.cuda' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sketches, x86, cuda = result.stdout.split()
    assert int(sketches) >= 1 and x86 == "True" and cuda == "False"


def test_tvm_warnings_are_logged_once_and_other_output_passes_through():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import logging, os, sys
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
        from torch_rc.platform.tvm_shim import tvm_warnings_once
        for i in range(3):
            with tvm_warnings_once():
                os.write(2, f"[12:00:0{i}] /x/transform.h:1261: Warning: Fast mode\\n".encode())
                os.write(2, b"plain line from someone else\\n")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("torch_rc: TVM: Warning: Fast mode (shown once per process)") == 1
    assert done.stderr.count("plain line from someone else") == 3
    assert "transform.h" not in done.stderr
