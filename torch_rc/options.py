"""The one place torch_rc's settings are defined, documented, validated and read from the environment.

Precedence, lowest to highest: field defaults < the ``mode=`` preset of ``torch.compile`` <
``TORCH_RC_*`` environment variables < the ``options={...}`` dict of ``torch.compile``. This is the
only module that reads the environment; everything else receives a frozen :class:`Options`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import platformdirs

from torch_rc.errors import OptionsError
from torch_rc.llm_config import parse_pool

__all__ = [
    "Options",
    "MODE_PRESETS",
    "ENV_PREFIX",
    "TUNING_OPTIONS",
    "SECRET_OPTIONS",
    "redact_url",
]

# Query parameters that carry credentials in endpoint URLs.
_SECRET_QUERY = frozenset(
    {"api-key", "api_key", "apikey", "key", "token", "access_token", "password", "secret", "sig"}
)


def redact_url(url: str) -> str:
    """``url`` without credentials: no ``user:password@``, and credential query parameters
    (``?api-key=...``) replaced by ``***``. What is stored, logged or exported."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = urlencode(
        [(k, "***" if k.lower() in _SECRET_QUERY else v) for k, v in parse_qsl(parts.query)]
    )
    return urlunsplit((parts.scheme, host, parts.path, query, parts.fragment))


ENV_PREFIX = "TORCH_RC_"

Select = Literal["measure", "tvm", "torch"]
Library = Literal["measure", "never", "always"]
Schedule = Literal["default", "none"]
Tune = Literal["auto", "never"]
TuneMethod = Literal["mcts", "evolutionary"]
LLMMode = Literal["values", "mutators"]

# Options that steer tuning but not what a graph computes: left out of cache keys (tuned records
# are keyed by workload and target instead). The API key is never stored anywhere.
TUNING_OPTIONS = frozenset(
    {
        "trials",
        "tune_time_s",
        "tune_total_s",
        "tune",
        "tune_method",
        "tune_branching",
        "tune_context_depth",
        "tune_rollout_depth",
        "tune_transfer",
        "tune_blocking",
        "tune_handoff",
        "tune_screen",
        "tune_seed",
        "tune_drivers",
        "tune_driver_index",
        "rpc_tracker",
        "rpc_key",
        "rpc_timeout_s",
        "rpc_retries",
        "progress",
        "llm_base_url",
        "llm_model",
        "llm_api_key",
        "llm_mode",
        "llm_timeout_s",
    }
)
SECRET_OPTIONS = frozenset({"llm_api_key"})


@dataclasses.dataclass(frozen=True)
class Options:
    """Settings of one ``torch.compile(..., backend="reasoning")`` call.

    Attributes:
        strict: Re-raise lowering, build and verification errors instead of falling back to
            PyTorch. The test suite turns it on so that no fallback hides a bug.
        select: How each TVM partition is chosen over its PyTorch twin. ``"measure"`` (default)
            times both on the first real call and keeps the faster; ``"tvm"`` always runs TVM
            (after verification); ``"torch"`` lowers and reports but always runs PyTorch.
        verify: Check every TVM partition against PyTorch on its first real call; a mismatch
            falls back to PyTorch (or raises with ``strict``).
        rtol: Relative tolerance of that check; 0 picks a dtype-aware default (1e-4 for fp32).
        atol: Absolute tolerance of that check; 0 picks a dtype-aware default (1e-4 for fp32).
        min_partition_size: Smallest number of compute ops worth sending to TVM as one partition.
        exclude_ops: ATen ops forced to run in PyTorch, e.g. ``("aten.gelu.default",)`` or
            ``("gelu",)``; given as a tuple or a comma-separated string.
        num_threads: CPU threads for TVM kernels; 0 uses every core torch uses.
        schedule: ``"default"`` applies torch_rc's default CPU schedules to untuned kernels;
            ``"none"`` leaves them unscheduled (only useful to measure how slow that is).
        measure_repeats: Paired timing rounds at least, when ``select="measure"`` compares TVM
            with PyTorch (more follow while the verdict is unclear, within
            ``measure_budget_s``).
        measure_budget_s: Seconds one first-call comparison may spend timing.
        lock_timeout_s: Seconds a compile waits for another process building the same graph in
            the same cache before it compiles without the cache.
        select_margin: TVM (or the compiled graph) must be at least this much faster than
            PyTorch (0.05: 5%), on quiet timings, to be chosen.
        library: Whether matrix products inside TVM programs may run as PyTorch's own kernels
            (MKL/oneDNN), the ops around them staying fused in TVM: ``"measure"`` times each
            large product both ways and takes the library where it wins; ``"never"``;
            ``"always"`` (every candidate, for tests).
        cache: Use the persistent cache: a graph compiled before (same code, input specs, options,
            versions and target) loads its built kernels and first-call decisions instead of being
            rebuilt and re-measured.
        cache_dir: Where the cache lives; empty means the platform's user cache dir
            (``~/.cache/torch_rc`` on Linux).
        cache_url: A shared cache server for a fleet, ``redis://host:port/db``; empty uses the
            SQLite file in ``cache_dir``. An unreachable server means compiling without a cache.
        trials: Real measurements to spend tuning each graph's kernels (split across its kernels
            by their estimated FLOPs). 0 (the default) tunes nothing: compiles stay fast, kernels
            get default schedules or the tuned records already in the cache. ``mode="max-autotune"``
            sets 256.
        tune_time_s: Wall-clock limit of tuning one graph (0: only ``trials`` bounds it).
        tune_total_s: Wall-clock limit of all tuning in this process (0: none).
        tune: ``"auto"`` tunes when ``trials`` > 0; ``"never"`` never tunes and never calls an LLM,
            only uses the cache and default schedules (what a serving replica wants).
        tune_method: ``"mcts"`` (the Reasoning Compiler search) or ``"evolutionary"`` (MetaSchedule's).
        tune_branching: MCTS branching factor B (children per expansion; paper: 2).
        tune_context_depth: Ancestors shown to the proposer (paper: parent and grandparent = 2).
        tune_rollout_depth: Steps of the cost-model rollout from each new MCTS child (0: none):
            how many states are screened per real measurement.
        tune_transfer: Start each kernel's search from the records of other shapes of the same
            operator in the cache (adapted to the new loop extents, measured and verified first).
        tune_blocking: On a CPU, also start each MCTS search from tiles derived from the machine
            (register tile sized to the vector registers, reduction depth and cache tiles to
            L1/L2, outer loops to the cores: :mod:`torch_rc.tuning.blocking`); up to two
            samples per kernel.
        tune_handoff: An MCTS search that has gone this many samples without a new best hands
            the rest of its samples to MetaSchedule's evolutionary search, seeded with every
            schedule the tree measured (database records and cost-model data; nothing measured
            twice). 0 (default): the tree to the end; off until the benchmark shows a gain
            (docs/tuning.md "Hand-off to the evolution").
        tune_screen: Random walks the MCTS scores with its cost model before each measurement
            batch, from the fastest measured schedules (MetaSchedule's evolution inside the
            tree; docs/tuning.md "Population screening"); the best-predicted join the tree.
            Default 256 (measured 1.03x the tree alone at 128 samples, 3 kernels x 3 seeds);
            0: none.
        tune_seed: Seed of the search.
        tune_drivers: Tuning processes sharing one model's kernels (README "Tuning on a fleet"):
            each tunes the kernels whose workload key falls to it (key hash modulo this), and
            all write into one store (``cache_url``), so every process sees the union.
        tune_driver_index: Which of the ``tune_drivers`` this process is (0-based).
        rpc_tracker: ``HOST:PORT`` of a TVM RPC tracker: candidates are built here and checked
            and timed on the tracker's servers of ``rpc_key``, in parallel (empty: measure here).
        rpc_key: The device key the RPC servers registered with.
        rpc_timeout_s: Longest one remote measurement may take before it is retried elsewhere.
        rpc_retries: Extra attempts of a measurement that failed because of a server (died, hung,
            wrong device) before it counts as a failed sample.
        progress: Show a progress display while tuning.
        llm_base_url: OpenAI-compatible endpoint of the LLM proposer (``OPENAI_BASE_URL`` if
            unset). With neither this nor ``llm_model`` set, the built-in rules propose.
        llm_model: Model name (``gpt-4o-mini`` when only a URL is given).
        llm_api_key: API key (``OPENAI_API_KEY`` if unset); never logged, stored or keyed.
        llm_mode: ``"values"`` (the LLM picks concrete tile sizes etc.) or ``"mutators"`` (only
            mutator types; TVM picks values, as in the paper's code).
        llm_timeout_s: Per-request timeout of LLM calls.
        llm_models: A pool of models sharing one search tree, cheapest first, escalating to the
            largest (``docs/tuning.md``): a JSON list, or ``@file.json``; also
            ``options={"llm": {"models": [...]}}``. Takes precedence over ``llm_model``.
        llm_pool_lambda: λ of the pool's tree policy (weight of the bias toward cheaper models).
        llm_escalate_every: Consecutive small-model regressions that trigger an escalation.
        key_dir: Where this machine's signing key lives (artifacts and bundles it writes are
            signed with it; ``trusted/*.pub`` there are trusted keys); empty: the platform's
            user config dir (``~/.config/torch_rc``).
        trusted_keys: Public-key files (PEM or base64 raw Ed25519) whose signatures are trusted
            besides this machine's own: a serving replica lists its build machine's.
        trust_unsigned: Load cache entries and bundles that are unsigned or signed by an untrusted
            key. A compiled artifact holds shared libraries that run in this process: only for
            caches and bundles you control.
    """

    strict: bool = False
    select: Select = "measure"
    verify: bool = True
    rtol: float = 0.0
    atol: float = 0.0
    min_partition_size: int = 2
    exclude_ops: tuple[str, ...] = ()
    num_threads: int = 0
    schedule: Schedule = "default"
    measure_repeats: int = 10
    measure_budget_s: float = 1.0
    lock_timeout_s: float = 120.0
    select_margin: float = 0.05
    library: Library = "measure"
    cache: bool = True
    cache_dir: str = ""
    cache_url: str = ""
    trials: int = 0
    tune_time_s: float = 0.0
    tune_total_s: float = 0.0
    tune: Tune = "auto"
    tune_method: TuneMethod = "mcts"
    tune_branching: int = 2
    tune_context_depth: int = 2
    tune_rollout_depth: int = 0
    tune_transfer: bool = True
    tune_blocking: bool = True
    tune_handoff: int = 0
    tune_screen: int = 256
    tune_seed: int = 0
    tune_drivers: int = 1
    tune_driver_index: int = 0
    rpc_tracker: str = ""
    rpc_key: str = ""
    rpc_timeout_s: float = 60.0
    rpc_retries: int = 2
    progress: bool = True
    llm_base_url: str = ""
    llm_model: str = ""
    llm_api_key: str = dataclasses.field(default="", repr=False)
    llm_mode: LLMMode = "values"
    llm_timeout_s: float = 60.0
    llm_models: str = ""
    llm_pool_lambda: float = 0.5
    llm_escalate_every: int = 2
    key_dir: str = ""
    trusted_keys: tuple[str, ...] = ()
    trust_unsigned: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _coerce(field.name, field.type, value))
        if self.min_partition_size < 1:
            raise OptionsError(
                f"option 'min_partition_size' must be >= 1, got {self.min_partition_size}"
            )
        if self.num_threads < 0:
            raise OptionsError(f"option 'num_threads' must be >= 0, got {self.num_threads}")
        if self.measure_repeats < 1:
            raise OptionsError(f"option 'measure_repeats' must be >= 1, got {self.measure_repeats}")
        if self.cache_url and not self.cache_url.startswith(("redis://", "rediss://", "unix://")):
            raise OptionsError(
                f"option 'cache_url' must be a redis:// URL (or empty for the local SQLite cache), got {self.cache_url!r}"
            )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise OptionsError(f"option {field.name!r} must be a finite number, got {value}")
        for name in ("rtol", "atol", "measure_budget_s", "select_margin", "lock_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise OptionsError(f"option {name!r} must be a finite number >= 0, got {value}")
        if self.select_margin >= 1:
            raise OptionsError(f"option 'select_margin' must be below 1, got {self.select_margin}")
        for name in (
            "trials",
            "tune_time_s",
            "tune_total_s",
            "tune_context_depth",
            "tune_rollout_depth",
            "tune_handoff",
            "tune_screen",
        ):
            if getattr(self, name) < 0:
                raise OptionsError(f"option {name!r} must be >= 0, got {getattr(self, name)}")
        if self.tune_branching < 1:
            raise OptionsError(f"option 'tune_branching' must be >= 1, got {self.tune_branching}")
        if self.llm_models:
            try:
                parse_pool(self.llm_models, environ={})
            except ValueError as exc:
                raise OptionsError(f"option 'llm_models': {exc}") from None
        if self.llm_escalate_every < 1:
            raise OptionsError(
                f"option 'llm_escalate_every' must be >= 1, got {self.llm_escalate_every}"
            )
        if self.tune_drivers < 1:
            raise OptionsError(f"option 'tune_drivers' must be >= 1, got {self.tune_drivers}")
        if not 0 <= self.tune_driver_index < self.tune_drivers:
            raise OptionsError(
                f"option 'tune_driver_index' must be in 0..{self.tune_drivers - 1} "
                f"(tune_drivers={self.tune_drivers}), got {self.tune_driver_index}"
            )
        if self.rpc_tracker:
            host, sep, port = self.rpc_tracker.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise OptionsError(
                    f"option 'rpc_tracker' must be HOST:PORT (e.g. 127.0.0.1:9190), "
                    f"got {self.rpc_tracker!r}"
                )
            if not self.rpc_key:
                raise OptionsError(
                    "option 'rpc_key' is needed with 'rpc_tracker': the device key the RPC "
                    "servers registered with (python -m tvm.exec.rpc_server --key KEY)"
                )
        elif self.rpc_key:
            raise OptionsError("option 'rpc_key' needs 'rpc_tracker' (HOST:PORT of the tracker)")
        if self.rpc_timeout_s <= 0:
            raise OptionsError(f"option 'rpc_timeout_s' must be > 0, got {self.rpc_timeout_s}")
        if self.rpc_retries < 0:
            raise OptionsError(f"option 'rpc_retries' must be >= 0, got {self.rpc_retries}")
        if self.llm_timeout_s <= 0:
            raise OptionsError(f"option 'llm_timeout_s' must be > 0, got {self.llm_timeout_s}")

    @property
    def tuning(self) -> bool:
        """Whether compiles with these options tune."""
        return self.tune == "auto" and self.trials > 0

    @property
    def llm_enabled(self) -> bool:
        return self.tune != "never" and bool(self.llm_base_url or self.llm_model or self.llm_models)

    @classmethod
    def resolve(
        cls,
        options: Mapping[str, Any] | None = None,
        mode: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Options:
        """Build the options of one compile from its mode, the environment and explicit options.

        Args:
            options: The ``options=`` dict given to ``torch.compile`` (may be None).
            mode: The ``mode=`` given to ``torch.compile`` (None means ``"default"``).
            environ: Environment to read ``TORCH_RC_*`` variables from; ``os.environ`` if None.

        Raises:
            OptionsError: for an unknown mode, an unknown key (naming its closest match), or a
                value of the wrong type.
        """
        mode = mode or "default"
        if mode not in MODE_PRESETS:
            raise OptionsError(
                f"unknown torch.compile mode {mode!r} for backend 'reasoning'; "
                f"known modes: {', '.join(sorted(MODE_PRESETS))}"
            )
        merged: dict[str, Any] = dict(MODE_PRESETS[mode])
        env = os.environ if environ is None else environ
        # The openai client's own variables, as fallbacks for the LLM endpoint and key.
        for name, key in (("OPENAI_BASE_URL", "llm_base_url"), ("OPENAI_API_KEY", "llm_api_key")):
            if env.get(name):
                merged[key] = env[name]
        merged.update(_from_environ(env))
        for key, value in (options or {}).items():
            if key == "llm" and isinstance(value, Mapping):
                # options={"llm": {"base_url": ..., "model": ..., "api_key": ...}}
                for sub, sub_value in value.items():
                    if sub == "models" and not isinstance(sub_value, str):
                        sub_value = json.dumps(sub_value)
                    merged[_check_key(f"llm_{sub}", "torch.compile option llm.")] = sub_value
                continue
            if key == "llm_models" and not isinstance(value, str):
                value = json.dumps(value)
            merged[_check_key(key, "torch.compile option")] = value
        return cls(**merged)

    def store_location(self) -> str:
        """Where the persistent cache lives: ``cache_url`` if set, else the SQLite file."""
        return self.cache_url or self.store_path()

    def store_path(self) -> str:
        """The SQLite file of the persistent cache."""
        if self.cache_dir:
            return os.path.join(os.path.expanduser(self.cache_dir), "store.sqlite")
        return os.path.join(platformdirs.user_cache_dir("torch_rc"), "store.sqlite")

    def key_path(self) -> str:
        """The directory of this machine's signing key (see ``key_dir``; when it is empty,
        ``TORCH_RC_KEY_DIR`` still names the machine's key, even for Options built directly)."""
        key_dir = self.key_dir or os.environ.get(f"{ENV_PREFIX}KEY_DIR", "")
        if key_dir:
            return os.path.expanduser(key_dir)
        return platformdirs.user_config_dir("torch_rc")

    def replace(self, **changes: Any) -> Options:
        """Return a copy with ``changes`` applied (validated like the constructor)."""
        for key in changes:
            _check_key(key, "option")
        return dataclasses.replace(self, **changes)


def with_budget(
    options: Mapping[str, Any] | None,
    *,
    trials: int | None = None,
    time_limit_s: float | None = None,
    default_trials: int = 0,
) -> dict[str, Any]:
    """``options`` with a tuning budget given as function arguments (``torch_rc.tune``,
    ``warmup``, the CLI): the one place budgets meet options.

    An argument that is given (not None) wins over the option of the same meaning; ``trials``
    is the model's total, ``time_limit_s`` is ``tune_total_s`` (all tuning of the call).
    ``default_trials`` applies when neither the argument nor ``options`` sets ``trials``.
    """
    merged = dict(options or {})
    if trials is not None:
        merged["trials"] = trials
    elif default_trials:
        merged.setdefault("trials", default_trials)
    if time_limit_s is not None:
        merged["tune_total_s"] = time_limit_s
    return merged


# mode= of torch.compile -> option presets. max-autotune tunes (bounded by trials and time).
MODE_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "reduce-overhead": {"min_partition_size": 4},
    "max-autotune": {"trials": 256, "tune_time_s": 900.0},
    "max-autotune-no-cudagraphs": {"trials": 256, "tune_time_s": 900.0},
}


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Options)]


def _check_key(key: str, what: str) -> str:
    names = _field_names()
    if key in names:
        return key
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known options: {', '.join(names)}"
    raise OptionsError(f"unknown {what} {key!r} for backend 'reasoning'{hint}")


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in _field_names():
            # Later stages (cache, LLM) own their own TORCH_RC_* names once they land;
            # until then an unknown name is reported, not silently ignored.
            _check_key(key, f"environment variable {name} ->")
        found[key] = value
    return found


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Convert ``value`` (possibly a string from the environment) to the field's type."""
    kind = _resolve_annotation(annotation)
    try:
        if kind is bool:
            return _to_bool(value)
        if kind is int:
            if isinstance(value, bool):
                raise TypeError("a bool is not an int")
            return int(value)
        if kind is float:
            return float(value)
        if kind is str:
            return str(value)
        if kind == "tuple":
            if isinstance(value, str):
                return tuple(item.strip() for item in value.split(",") if item.strip())
            return tuple(str(item) for item in value)
        if isinstance(kind, tuple):  # Literal choices
            if value not in kind:
                raise ValueError(f"expected one of {', '.join(map(repr, kind))}")
            return value
    except (TypeError, ValueError) as exc:
        raise OptionsError(f"invalid value {value!r} for option {name!r}: {exc}") from None
    return value


def _resolve_annotation(annotation: Any) -> Any:
    table: dict[str, Any] = {
        "bool": bool,
        "int": int,
        "float": float,
        "tuple[str, ...]": "tuple",
        "str": str,
        "Select": get_args(Select),
        "Library": get_args(Library),
        "Schedule": get_args(Schedule),
        "Tune": get_args(Tune),
        "TuneMethod": get_args(TuneMethod),
        "LLMMode": get_args(LLMMode),
    }
    if isinstance(annotation, str):
        return table.get(annotation, annotation)
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return annotation


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected a boolean (true/false, 1/0)")
