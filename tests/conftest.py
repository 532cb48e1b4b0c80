import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_dynamo(tmp_path, monkeypatch):
    """Each test compiles from scratch: no cached frames, no automatic-dynamic carry-over, and its
    own empty torch_rc cache (never the user's)."""
    monkeypatch.setenv("TORCH_RC_CACHE_DIR", str(tmp_path / "torch_rc_cache"))
    torch._dynamo.reset()
    torch.manual_seed(0)
    yield
    torch._dynamo.reset()
