"""``SharedLab``: one instance of a lab per test process, shared by every fixture that asks for it.

Why: the FRR, Ceph, QEMU and OpenStack labs each take seconds to minutes to come up, and session fixtures in
several test directories (the contract suites, the lab tests, benchmarks) need the same one. Reference-counted:
the first ``acquire`` starts it, the last ``release`` stops it. Thread-safe (tests may acquire from threads).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedLab(Generic[T]):
    """``start`` brings a lab up (and cleans up after itself if it fails); ``stop`` takes it down.

    ``remember_failure``: a failed start is raised again to every later ``acquire`` instead of retried (for a lab
    whose bring-up takes minutes, so a broken one does not cost that for every test).
    """

    def __init__(self, start: Callable[[], T], stop: Callable[[T], None], *, remember_failure: bool = False) -> None:
        self._start, self._stop, self._remember = start, stop, remember_failure
        self._lab: T | None = None
        self._users = 0
        self._failure: BaseException | None = None
        self._lock = threading.Lock()

    def acquire(self) -> T:
        with self._lock:
            if self._failure is not None:
                raise RuntimeError(f"the lab's bring-up failed earlier in this process: {self._failure}")
            if self._lab is None:
                try:
                    self._lab = self._start()
                except BaseException as exc:
                    if self._remember:
                        self._failure = exc
                    raise
            self._users += 1
            return self._lab

    def release(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users == 0 and self._lab is not None:
                lab, self._lab = self._lab, None
                self._stop(lab)
