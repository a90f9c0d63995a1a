"""The serving agent's memory of the highest master epoch it has accepted (peer-side fencing).

Why persisted: a paused or partitioned old master may wake up and call a peer after a new master
took over. The peer refuses any mutating call whose epoch is lower than the highest it has seen —
and that must survive an agent restart, or a restart would reopen the door to the old master.

Contract of ``EpochStore.admit(epoch)``:
- ``epoch <= 0`` -> ``InvalidInput(field="epoch")`` (a mutating call must carry one);
- ``epoch < highest`` -> ``Fenced`` (nothing is executed);
- ``epoch >= highest`` -> accepted; a higher one is made durable *before* ``admit`` returns.
Equal epochs are accepted: the same master sends many calls in one term.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

import structlog

from cnf.errors import ConfigError, Fenced, InvalidInput

log = structlog.get_logger(__name__)


class EpochStore(Protocol):
    def highest(self) -> int:
        ...

    def admit(self, epoch: int) -> int:
        """Accept ``epoch`` or raise (see module docstring); returns the highest epoch after the call."""


class _EpochGate:
    def __init__(self, initial: int = 0) -> None:
        self._highest = initial
        self._lock = threading.Lock()

    def highest(self) -> int:
        return self._highest

    def admit(self, epoch: int) -> int:
        if epoch <= 0:
            raise InvalidInput("a mutating peer call must carry the master's epoch (> 0)", field="epoch")
        with self._lock:
            if epoch < self._highest:
                log.warning("peer_call_fenced", epoch=epoch, highest_seen=self._highest)
                raise Fenced(f"epoch {epoch} is lower than {self._highest}, already seen from a newer master",
                             epoch=epoch, highest_seen=self._highest)
            if epoch > self._highest:
                self._persist(epoch)
                log.info("epoch_advanced", previous=self._highest, epoch=epoch)
                self._highest = epoch
            return self._highest

    def _persist(self, epoch: int) -> None:
        """Hook for durable stores; the in-memory gate keeps nothing."""


class MemoryEpochStore(_EpochGate):
    """Not durable: for tests and the embedded single-process default (no other master can exist)."""


class FileEpochStore(_EpochGate):
    """The highest epoch as a decimal number in one small file (default ``<state_dir>/peer-epoch``).

    Written with write-temp + fsync + rename + fsync(dir), so a crash leaves either the old or the new
    value, never a torn one. A missing file means 0 (fresh agent); an unreadable one is a
    ``ConfigError`` — silently restarting from 0 would defeat fencing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(self._read())

    def _read(self) -> int:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"epoch file {self.path} is corrupt: {text[:40]!r}", key="peer_epoch_file") from None
        if value < 0:
            raise ConfigError(f"epoch file {self.path} holds a negative epoch", key="peer_epoch_file")
        return value

    def _persist(self, epoch: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{epoch}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
