import torch

from torch_rc.backends.support import tvm_converter_names
from torch_rc.platform.tvm_shim import tvm_api


def test_checked_in_converter_table_matches_the_installed_tvm():
    live = frozenset(tvm_api().importer_cls().create_convert_map())
    table = tvm_converter_names()
    assert table == live, (
        f"regenerate torch_rc/backends/tvm_converters.txt: missing {sorted(live - table)[:10]}, "
        f"stale {sorted(table - live)[:10]}"
    )


def test_table_names_resolve_to_aten_overloads():
    names = [n for n in tvm_converter_names() if "." in n]
    unresolved = []
    for name in names:
        op, overload = name.split(".", 1)
        packet = getattr(torch.ops.aten, op, None)
        if packet is None or not hasattr(packet, overload):
            unresolved.append(name)
    # A few converter keys are for ops this torch does not have (kept by TVM for older torch).
    assert len(unresolved) < len(names) * 0.1, unresolved
