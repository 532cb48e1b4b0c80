"""Run a one-time decision on the first call, thread-safely, then dispatch straight to the choice."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["FirstCallDispatch"]


class FirstCallDispatch:
    """Holds the implementation chosen on the first call.

    ``dispatch(args, decide)`` runs ``decide(args)`` exactly once (other threads wait for it) and
    returns its result; ``decide`` must call :meth:`choose`. Later calls go to the choice with one
    attribute read and no lock.
    """

    def __init__(self, chosen: Callable[..., Any] | None = None) -> None:
        self.chosen = chosen
        self._lock = threading.Lock()

    def choose(self, fn: Callable[..., Any]) -> None:
        self.chosen = fn

    def dispatch(self, args: tuple[Any, ...], decide: Callable[[tuple[Any, ...]], Any]) -> Any:
        chosen = self.chosen
        if chosen is None:
            with self._lock:
                if self.chosen is None:
                    return decide(args)
            chosen = self.chosen
        return chosen(*args)
