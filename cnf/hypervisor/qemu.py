"""``QemuHypervisor``: the HypervisorDriver port over QMP, for QEMU processes this driver starts itself.

Why this shape (measured in ``lab/qemu`` and ``lab/qemu-rbd``, QEMU 7.2, see docs/hypervisor.md):
- The destination is started with ``-incoming defer`` and gets its capabilities (``events``,
  ``late-block-activate``, ``postcopy-ram``; ``multifd`` when configured) *before* ``migrate-incoming``; it
  listens on port 0 and the real port is read back from ``query-migrate`` (``socket-address``), so two clouds on
  one machine never collide.
- The source gets every capability set explicitly on every migration (a source that survived a failed migration
  keeps its old ones, lab pitfall P4), always with ``pause-before-switchover``: the migration stops in status
  ``pre-switchover`` with the source vCPUs stopped until ``continue_switchover``. The engine runs the storage
  handover in that window; QEMU counts the window as downtime.
- The guest-visible pause is taken from QEMU's own STOP (source) and RESUME (destination) event timestamps,
  not from ``downtime`` (which is only right when the handover runs inside ``pre-switchover``).
- ``history`` (the dirty set per pass) is sampled at every ``MIGRATION_PASS`` event, which is what the engine
  needs to see that passes stopped shrinking.

Layout on disk (one directory per domain, like libvirt's ``/run/libvirt/qemu``): ``<runtime_dir>/<vm_id>/``
holds ``domain.json`` (role, RAM, endpoint), ``pid``, ``qmp.sock``, ``serial.log`` and ``qemu.log``. The driver
finds domains from there after a restart; QEMU runs in its own session so it outlives the agent.

Contract (beyond the port's): one QMP client per domain (QEMU serves one monitor client at a time); every QMP
call has a timeout (``DriverUnavailable`` when it expires or the monitor is unreachable while the process lives);
QMP errors become ``DriverError`` with the QEMU message; bad arguments are ``InvalidInput`` naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError, StateError

from cnf.errors import DriverError, DriverUnavailable, IllegalTransition, InvalidInput, NotFound
from cnf.hypervisor.base import Domain, MigrationParams, MigrationProgress
from cnf.hypervisor.qmp_translation import (
    CONVERGENCE_ACTIONS,
    IN_FLIGHT,
    RUN_STATES,
    VM_ID_RE,
    incoming_capabilities,
    progress_from_query_migrate,
    source_capabilities,
    source_parameters,
    stop_resume_times,
    validate_params,
)

log = structlog.get_logger(__name__)

PORT = "hypervisor"
#: how often a starting QEMU is looked at until its QMP socket accepts: the destination's start is on the
#: migration's critical path (benchmarks/live_migration.py), and a 50 ms step cost 25 ms on average there; a look
#: is one ``stat``
QMP_CONNECT_POLL_S = 0.01

@dataclass(frozen=True)
class QemuMachine:
    """How this cloud starts a guest: must be identical on both sides of a migration (same devices, same RAM).

    The lab boots a kernel + initramfs (``kernel``/``initrd``/``append``). A disk ``image`` given to
    ``prepare_incoming``/``boot`` becomes a virtio-blk drive ``disk_template.format(image=...)`` with
    ``werror=stop,rerror=stop`` (lab/qemu-rbd P5), e.g. ``rbd:{image}:conf=/etc/ceph/site-b.conf:id=cnf``;
    an empty ``disk_template`` ignores images (the lab's diskless guest, whose disk is simulated).
    """

    binary: str = "qemu-system-x86_64"
    accel: str = "tcg"
    cpu: str = "max"
    machine: str = "q35"
    smp: int = 1
    kernel: str = ""
    initrd: str = ""
    append: str = "console=ttyS0 quiet"
    extra_args: tuple[str, ...] = ()
    disk_template: str = "{image}"

    def argv(self, *, name: str, ram_mb: int, qmp_path: Path, serial_path: Path, image: str = "",
             append: str | None = None, incoming: bool = False) -> list[str]:
        argv = [self.binary, "-name", name, "-accel", self.accel, "-cpu", self.cpu, "-machine", self.machine,
                "-m", str(ram_mb), "-smp", str(self.smp), "-display", "none", "-nodefaults", "-no-user-config",
                "-serial", f"file:{serial_path}", "-qmp", f"unix:{qmp_path},server=on,wait=off"]
        if self.kernel:
            argv += ["-kernel", self.kernel]
        if self.initrd:
            argv += ["-initrd", self.initrd]
        if self.kernel:
            argv += ["-append", self.append if append is None else append]
        if image and self.disk_template:
            drive = f"file={self.disk_template.format(image=image)},if=none,id=disk0,format=raw,cache=none"
            argv += ["-drive", f"{drive},werror=stop,rerror=stop",
                     "-device", "virtio-blk-pci,drive=disk0"]
        argv += list(self.extra_args)
        if incoming:
            argv += ["-incoming", "defer"]
        return argv


@dataclass
class _Event:
    name: str
    data: dict[str, Any]
    qemu_time: float  # QEMU's timestamp (wall clock of the QEMU host)
    local_time: float  # our monotonic receipt time


@dataclass
class _Handle:
    """In-memory view of one domain directory; rebuilt from disk when the driver restarts."""

    vm_id: str
    path: Path
    proc: subprocess.Popen[bytes] | None = None
    client: QMPClient | None = None
    reader: asyncio.Task[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    events: list[_Event] = field(default_factory=list)
    mark: int = 0  # index in ``events`` where the current migration started
    history: list[int] = field(default_factory=list)
    caps: dict[str, bool] = field(default_factory=dict)
    samplers: set[asyncio.Task[None]] = field(default_factory=set)
    wakers: set[asyncio.Event] = field(default_factory=set)  # set at every QMP event (``_await_status_change``)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def qmp_path(self) -> Path:
        return self.path / "qmp.sock"

    @property
    def serial_path(self) -> Path:
        return self.path / "serial.log"

    def meta(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.path / "domain.json").read_text()))
        except (OSError, ValueError):
            return {}

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        tmp = self.path / "domain.json.tmp"
        tmp.write_text(json.dumps(dict(meta)))
        tmp.replace(self.path / "domain.json")

    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        try:
            return int((self.path / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        """True while the QEMU process lives (zombies and reused PIDs count as dead)."""
        if self.proc is not None:
            return self.proc.poll() is None
        pid = self.pid()
        if pid is None:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        state = stat.rsplit(")", 1)[-1].split()[0]
        return state not in ("Z", "X") and str(self.qmp_path).encode() in cmdline

    def since_mark(self) -> list[_Event]:
        return self.events[self.mark:]


# --- the driver ----------------------------------------------------------------------------------------------


class QemuHypervisor:
    """The HypervisorDriver port over QMP for QEMU processes it starts itself under ``runtime_dir``."""

    def __init__(self, cluster_id: str, runtime_dir: str | os.PathLike[str], machine: QemuMachine, *,
                 listen_address: str = "127.0.0.1", host_addresses: Mapping[str, str] | None = None,
                 multifd_channels: int = 0, command_timeout: float = 10.0, start_timeout: float = 30.0) -> None:
        self.cluster_id = cluster_id
        self.runtime_dir = Path(runtime_dir)
        self.machine = machine
        self.listen_address = listen_address
        self.host_addresses = dict(host_addresses or {})
        self.multifd_channels = multifd_channels
        self.command_timeout = command_timeout
        self.start_timeout = start_timeout
        self._handles: dict[str, _Handle] = {}
        self._final: dict[str, MigrationProgress] = {}
        self.runtime_dir.mkdir(parents=True, exist_ok=True)

    # --- helpers --------------------------------------------------------------------------------------------

    def _handle(self, vm_id: str, *, create: bool = False) -> _Handle | None:
        if not VM_ID_RE.match(vm_id or ""):
            raise InvalidInput("vm_id must be 1-64 characters of [A-Za-z0-9._-]", field="vm_id")
        h = self._handles.get(vm_id)
        if h is not None and (h.path.exists() or create):
            return h
        path = self.runtime_dir / vm_id
        if not path.exists() and not create:
            self._handles.pop(vm_id, None)
            return None
        h = _Handle(vm_id=vm_id, path=path)
        self._handles[vm_id] = h
        return h

    def _archive_logs(self, h: _Handle) -> None:
        """Keep the serial console and QEMU's own log of a removed domain under ``.logs/`` (post-mortems)."""
        logs = self.runtime_dir / ".logs"
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time() % 1:.3f}"[1:]
        for name in ("serial.log", "qemu.log"):
            src = h.path / name
            if src.exists():
                logs.mkdir(exist_ok=True)
                with contextlib.suppress(OSError):
                    src.rename(logs / f"{h.vm_id}-{stamp}-{name}")

    def archived_logs(self, vm_id: str, name: str = "serial.log") -> list[Path]:
        """Logs of removed domains of ``vm_id``, oldest first."""
        return sorted((self.runtime_dir / ".logs").glob(f"{vm_id}-*-{name}"))

    def serial_path(self, vm_id: str) -> Path:
        """The guest's serial console log (the lab guest prints its heartbeat there)."""
        return self.runtime_dir / vm_id / "serial.log"

    def pid(self, vm_id: str) -> int | None:
        h = self._handle(vm_id)
        return h.pid() if h is not None and h.alive() else None

    def _err(self, h: _Handle, op: str, exc: BaseException) -> DriverError:
        if isinstance(exc, ExecuteError):
            return DriverError(f"QEMU refused {op}: {exc}", port=PORT, operation=op, vm_id=h.vm_id,
                               cluster_id=self.cluster_id)
        if not h.alive():
            return DriverError(f"QEMU of {h.vm_id} is not running ({op})", port=PORT, operation=op, vm_id=h.vm_id,
                               cluster_id=self.cluster_id)
        return DriverUnavailable(f"QMP of {h.vm_id} did not answer {op}: {exc!r}", port=PORT, operation=op,
                                 vm_id=h.vm_id, cluster_id=self.cluster_id)

    async def _client(self, h: _Handle) -> QMPClient:
        loop = asyncio.get_running_loop()
        if h.client is not None and h.loop is not loop:
            self._abandon_client(h)  # made on another (closed) event loop: cannot be awaited any more
        if h.client is not None and h.client.runstate.name == "RUNNING":
            return h.client
        await self._drop_client(h)
        client = QMPClient(f"{self.cluster_id}/{h.vm_id}")
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not h.alive():
                raise DriverError(f"QEMU of {h.vm_id} is not running: {self._log_tail(h)}", port=PORT,
                                  operation="connect", vm_id=h.vm_id, cluster_id=self.cluster_id)
            if not h.qmp_path.exists():  # QEMU is still starting (connecting now would only log errors)
                if time.monotonic() > deadline:
                    raise DriverUnavailable(f"QEMU of {h.vm_id} never opened {h.qmp_path}", port=PORT,
                                            operation="connect", vm_id=h.vm_id)
                await asyncio.sleep(QMP_CONNECT_POLL_S)
                continue
            try:
                await asyncio.wait_for(client.connect(str(h.qmp_path)), self.command_timeout)
                break
            except (ConnectError, OSError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise DriverUnavailable(f"cannot reach QMP of {h.vm_id}: {exc!r}", port=PORT,
                                            operation="connect", vm_id=h.vm_id) from exc
                with contextlib.suppress(Exception):
                    await client.disconnect()
                client = QMPClient(f"{self.cluster_id}/{h.vm_id}")
                await asyncio.sleep(QMP_CONNECT_POLL_S)
        h.client, h.loop = client, loop
        h.reader = asyncio.create_task(self._read_events(h, client), name=f"qmp-events-{h.vm_id}")
        return client

    @staticmethod
    def _abandon_client(h: _Handle) -> None:
        """Close the socket of a client whose event loop is gone, so QEMU accepts the next monitor client."""
        writer = getattr(h.client, "_writer", None)
        with contextlib.suppress(Exception):
            if writer is not None:
                writer.transport.abort()
        h.client, h.reader, h.loop = None, None, None

    async def _drop_client(self, h: _Handle) -> None:
        client, reader = h.client, h.reader
        h.client, h.reader = None, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), self.command_timeout)

    async def _read_events(self, h: _Handle, client: QMPClient) -> None:
        """Record every QMP event with QEMU's timestamp; sample the dirty set at every new pass."""
        try:
            async for msg in client.events:
                raw: dict[str, Any] = dict(msg)
                ts: dict[str, Any] = raw.get("timestamp") or {}
                ev = _Event(name=str(raw.get("event")), data=dict(raw.get("data") or {}),
                            qemu_time=float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6,
                            local_time=time.monotonic())
                h.events.append(ev)
                for waker in h.wakers:
                    waker.set()
                if ev.name == "MIGRATION_PASS" and int(ev.data.get("pass", 0)) >= 2:
                    task = asyncio.create_task(self._sample_pass(h, client))
                    h.samplers.add(task)
                    task.add_done_callback(h.samplers.discard)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection lost: qemu.qmp ends the iterator with an error
            log.info("qmp_events_ended", cluster=self.cluster_id, vm_id=h.vm_id, reason=repr(exc))
        finally:
            for waker in h.wakers:  # a waiter looks again (and finds the process gone)
                waker.set()

    async def _sample_pass(self, h: _Handle, client: QMPClient) -> None:
        with contextlib.suppress(QMPError, OSError, TimeoutError, StateError):
            info = await asyncio.wait_for(client.execute("query-migrate"), self.command_timeout)
            ram = info.get("ram") if isinstance(info, dict) else None
            if ram:
                h.history.append(int(ram.get("remaining", 0)))

    async def _qmp(self, h: _Handle, cmd: str, args: Mapping[str, object] | None = None) -> Any:
        try:
            client = await self._client(h)
            return await asyncio.wait_for(client.execute(cmd, args), self.command_timeout)
        except (ExecuteError, ExecInterruptedError, StateError, ConnectError, OSError, TimeoutError, EOFError) as exc:
            if not isinstance(exc, ExecuteError):
                await self._drop_client(h)
            raise self._err(h, cmd, exc) from exc

    @staticmethod
    def _log_tail(h: _Handle) -> str:
        try:
            return (h.path / "qemu.log").read_text(errors="replace").strip()[-600:]
        except OSError:
            return ""

    def _listen_for(self, host: str) -> str:
        return self.host_addresses.get(host, self.listen_address) if host else self.listen_address

    async def _spawn(self, h: _Handle, argv: list[str]) -> None:
        h.path.mkdir(parents=True, exist_ok=True)
        for name in ("qmp.sock", "serial.log", "pid"):
            with contextlib.suppress(FileNotFoundError):
                (h.path / name).unlink()
        with (h.path / "qemu.log").open("wb") as logf:
            # Popen, not asyncio's subprocess: QEMU must outlive this event loop (and the agent), as under libvirt;
            # fork+exec does not block the loop measurably.
            h.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,  # noqa: ASYNC220
                                      start_new_session=True, close_fds=True)
        (h.path / "pid").write_text(str(h.proc.pid))
        h.events.clear()
        h.mark = 0
        log.info("qemu_started", cluster=self.cluster_id, vm_id=h.vm_id, pid=h.proc.pid)
        try:
            await self._client(h)
        except DriverError:
            await self._terminate(h)
            raise

    async def _terminate(self, h: _Handle) -> None:
        """End the QEMU process of ``h`` (``quit``, then SIGKILL of its PID) and reap it."""
        if h.alive() and h.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(h.client.execute("quit"), 2.0)
        await self._drop_client(h)
        pid = h.pid()
        if h.alive() and pid is not None:  # no monitor connection (e.g. a destination that is exiting): SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while h.alive() and time.monotonic() < deadline:  # noqa: ASYNC110 - a process exit has no event to await
            await asyncio.sleep(0.05)
        if h.alive() and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 2.0
            while h.alive() and time.monotonic() < deadline:  # noqa: ASYNC110 - see above
                await asyncio.sleep(0.02)
        if h.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(h.proc.wait, 5.0)
        elif pid is not None and not h.alive():
            await self._reap(pid)

    @staticmethod
    async def _reap(pid: int) -> None:
        """Reap a QEMU started by an earlier driver object of this process (else it stays a zombie). A process
        that is not our child (started by another agent run) raises ChildProcessError: init reaps those."""
        deadline = time.monotonic() + 2.0
        with contextlib.suppress(ChildProcessError, OSError):
            while os.waitpid(pid, os.WNOHANG)[0] == 0 and time.monotonic() < deadline:  # noqa: ASYNC222, ASYNC110
                await asyncio.sleep(0.02)  # still exiting (its /proc entry looks dead before it is a zombie)

    async def _remove(self, h: _Handle) -> None:
        await self._terminate(h)
        self._archive_logs(h)
        shutil.rmtree(h.path, ignore_errors=True)
        self._handles.pop(h.vm_id, None)

    async def _run_state(self, h: _Handle) -> str:
        status = await self._qmp(h, "query-status")
        return str(status.get("status", "unknown"))

    async def _state_or_dead(self, h: _Handle) -> str:
        """QEMU's run state, or ``"dead"`` when the process is gone or exits right now (a destination whose
        incoming stream failed exits by itself, lab/qemu Q6: its monitor drops before the process ends)."""
        if not h.alive():
            return "dead"
        try:
            return await self._run_state(h)
        except DriverError:  # monitor gone: unavailable while the process lives, "not running" once it died
            deadline = time.monotonic() + 2.0
            while h.alive() and time.monotonic() < deadline:  # noqa: ASYNC110 - a process exit has no event
                await asyncio.sleep(0.05)
            if not h.alive():
                return "dead"
            raise

    def _times(self, h: _Handle) -> tuple[float | None, float | None]:
        return stop_resume_times([(e.name, e.qemu_time) for e in h.since_mark()])

    # --- port: domains ------------------------------------------------------------------------------------------

    async def domain(self, vm_id: str) -> Domain | None:
        h = self._handle(vm_id)
        if h is None:
            return None
        ram_mb = int(h.meta().get("ram_mb", 0))
        qemu_state = await self._state_or_dead(h)
        if qemu_state == "dead":
            return Domain(vm_id=vm_id, state="shutoff", ram_mb=ram_mb)
        return Domain(vm_id=vm_id, state=RUN_STATES.get(qemu_state, "paused"), ram_mb=ram_mb)

    async def boot(self, vm_id: str, ram_mb: int, image: str = "", *, append: str | None = None) -> Domain:
        """Start a running domain (not part of the port: Nova boots servers; the lab and tests use this)."""
        if ram_mb <= 0:
            raise InvalidInput("ram_mb must be > 0", field="ram_mb")
        h = self._handle(vm_id, create=True)
        assert h is not None
        async with h.lock:
            if h.alive():
                raise DriverError(f"a domain of {vm_id} already runs here", vm_id=vm_id, cluster_id=self.cluster_id)
            h.path.mkdir(parents=True, exist_ok=True)
            h.write_meta({"vm_id": vm_id, "role": "source", "ram_mb": ram_mb, "image": image})
            await self._spawn(h, self.machine.argv(name=vm_id, ram_mb=ram_mb, qmp_path=h.qmp_path,
                                                   serial_path=h.serial_path, image=image, append=append))
        return Domain(vm_id=vm_id, state="running", ram_mb=ram_mb)

    async def prepare_incoming(self, vm_id: str, ram_mb: int, image: str, host: str = "") -> str:
        if ram_mb <= 0:
            raise InvalidInput("ram_mb must be > 0", field="ram_mb")
        h = self._handle(vm_id, create=True)
        assert h is not None
        async with h.lock:
            if h.alive():
                meta = h.meta()
                state = await self._run_state(h)
                if meta.get("role") == "incoming" and state == "inmigrate" and meta.get("endpoint"):
                    return str(meta["endpoint"])
                raise DriverError(f"a domain of {vm_id} already exists here in state {state}", vm_id=vm_id,
                                  cluster_id=self.cluster_id)
            h.path.mkdir(parents=True, exist_ok=True)
            h.write_meta({"vm_id": vm_id, "role": "incoming", "ram_mb": ram_mb, "image": image})
            await self._spawn(h, self.machine.argv(name=vm_id, ram_mb=ram_mb, qmp_path=h.qmp_path,
                                                   serial_path=h.serial_path, image=image, incoming=True))
            try:
                endpoint = await self._listen(h, self._listen_for(host))
            except DriverError:
                await self._remove(h)
                raise
            h.write_meta({**h.meta(), "endpoint": endpoint})
            log.info("incoming_prepared", cluster=self.cluster_id, vm_id=vm_id, endpoint=endpoint)
            return endpoint

    async def _listen(self, h: _Handle, address: str) -> str:
        caps = incoming_capabilities(multifd=self.multifd_channels > 0)
        try:
            await self._set_caps(h, caps)
        except DriverError as exc:  # no userfaultfd on this host: post-copy is unavailable, pre-copy still works
            log.warning("postcopy_unavailable", cluster=self.cluster_id, vm_id=h.vm_id, reason=exc.message)
            caps["postcopy-ram"] = False
            await self._set_caps(h, caps)
        if self.multifd_channels > 0:
            await self._qmp(h, "migrate-set-parameters", {"multifd-channels": self.multifd_channels})
        await self._qmp(h, "migrate-incoming", {"uri": f"tcp:{address}:0"})
        info = await self._qmp(h, "query-migrate")
        for sock in info.get("socket-address") or []:
            if sock.get("type") == "inet" and sock.get("port"):
                return f"tcp:{sock.get('host', address)}:{sock['port']}"
        raise DriverError(f"QEMU of {h.vm_id} reports no listening address: {info}", vm_id=h.vm_id)

    async def _set_caps(self, h: _Handle, caps: Mapping[str, bool]) -> None:
        await self._qmp(h, "migrate-set-capabilities",
                        {"capabilities": [{"capability": k, "state": v} for k, v in caps.items()]})
        h.caps = dict(caps)

    async def destroy_incoming(self, vm_id: str) -> None:
        h = self._handle(vm_id)
        if h is None:
            return
        async with h.lock:
            if await self._state_or_dead(h) == "running":
                log.warning("destroy_incoming_refused_running", cluster=self.cluster_id, vm_id=vm_id)
                return
            await self._remove(h)
            log.info("incoming_destroyed", cluster=self.cluster_id, vm_id=vm_id)

    def kill_incoming(self, vm_id: str) -> None:
        """Test hook: the destination QEMU dies as ``kill -9`` would (the domain directory stays)."""
        h = self._handle(vm_id)
        pid = h.pid() if h is not None and h.alive() else None
        if pid is not None:
            os.kill(pid, signal.SIGKILL)

    # --- port: migration ----------------------------------------------------------------------------------------

    async def start_migration(self, vm_id: str, dest_uri: str, params: MigrationParams) -> None:
        validate_params(params)
        if not re.match(r"^(tcp:[^:\s]+:\d{1,5}|unix:/\S+)$", dest_uri or ""):
            raise InvalidInput("dest_uri must be tcp:<host>:<port> or unix:<path>", field="dest_uri")
        h = self._handle(vm_id)
        if h is None:
            raise NotFound(f"no domain of {vm_id} on {self.cluster_id}", vm_id=vm_id)
        async with h.lock:
            meta = h.meta()
            status = await self._outgoing_status(h)
            if status in IN_FLIGHT or status == "completed":
                if meta.get("outgoing_uri") == dest_uri:
                    log.info("migration_already_started", cluster=self.cluster_id, vm_id=vm_id, status=status)
                    return
                raise DriverError(f"{vm_id} is already migrating to {meta.get('outgoing_uri')} ({status})",
                                  vm_id=vm_id, cluster_id=self.cluster_id)
            state = await self._run_state(h)
            if state != "running":
                raise DriverError(f"{vm_id} is not running here (QEMU state {state})", vm_id=vm_id,
                                  cluster_id=self.cluster_id)
            await self._set_caps(h, source_capabilities(params, multifd=self.multifd_channels > 0))
            await self._qmp(h, "migrate-set-parameters",
                            source_parameters(params, multifd_channels=self.multifd_channels))
            h.mark = len(h.events)
            h.history.clear()
            self._final.pop(vm_id, None)
            meta = {k: v for k, v in meta.items() if k != "gave_up"}
            h.write_meta({**meta, "role": "source", "outgoing_uri": dest_uri, "max_passes": params.max_passes})
            await self._qmp(h, "migrate", {"uri": dest_uri})
            log.info("migration_started", cluster=self.cluster_id, vm_id=vm_id, dest_uri=dest_uri,
                     caps=h.caps, downtime_limit_ms=params.downtime_limit_ms,
                     max_bandwidth_mbps=params.max_bandwidth_mbps)

    async def progress(self, vm_id: str, wait_s: float = 0.0) -> MigrationProgress:
        h = self._handle(vm_id)
        if h is None:
            return self._final.get(vm_id, MigrationProgress(status="none"))
        if wait_s > 0 and h.alive() and h.meta().get("outgoing_uri"):
            await self._await_status_change(h, wait_s)
        if not h.alive():
            final = self._final.get(vm_id)
            if final is not None:
                return final
            stopped, resumed = self._times(h)
            return MigrationProgress(status="failed", error=f"QEMU of {vm_id} exited: {self._log_tail(h)}",
                                     history=tuple(h.history), stopped_at=stopped, resumed_at=resumed)
        info = await self._qmp(h, "query-migrate")
        stopped, resumed = self._times(h)
        if not h.meta().get("outgoing_uri"):
            # A destination (or a guest that arrived here): no outgoing migration. Its query-migrate describes the
            # *incoming* stream, which must not read as this domain's migration ("completed" would make the engine
            # skip starting one); only when the guest started running here is reported.
            if info.get("status") == "completed" and resumed is None:
                await self._await_event(h, "RESUME", 1.0)  # RESUME follows the incoming "completed" by ~ms
                stopped, resumed = self._times(h)
            return MigrationProgress(status="none", resumed_at=resumed, error=str(info.get("error-desc", "")))
        p = progress_from_query_migrate(info, history=h.history, stopped_at=stopped, resumed_at=resumed)
        p = await self._enforce_max_passes(h, p)
        if p.status in ("completed", "failed", "cancelled"):
            self._final[vm_id] = p
        return p

    async def _enforce_max_passes(self, h: _Handle, p: MigrationProgress) -> MigrationProgress:
        """``max_passes`` bounds pre-copy (as in the sim): past it the copy is cancelled and reads as failed.

        The engine normally acts earlier (its non-convergence policy); this is the backstop that keeps a guest
        from being copied forever when nobody acts.
        """
        meta = h.meta()
        limit = int(meta.get("max_passes", 0) or 0)
        if limit and p.status == "active" and p.passes >= limit:
            reason = (f"pre-copy did not converge in {p.passes} passes (max_passes {limit}); remaining "
                      f"{p.remaining_bytes // (1024 * 1024)} MiB, dirty rate {p.dirty_rate_bps / 1048576:.0f} MiB/s")
            h.write_meta({**meta, "gave_up": reason})
            await self._qmp(h, "migrate_cancel")
            log.warning("migration_gave_up", cluster=self.cluster_id, vm_id=h.vm_id, reason=reason)
            meta = h.meta()
        if meta.get("gave_up") and p.status in ("active", "cancelling", "cancelled"):
            return dataclasses.replace(p, status="failed", error=str(meta["gave_up"]))
        return p

    async def _outgoing_status(self, h: _Handle) -> str:
        """Status of the migration *from* this domain ("none" when it only ever received one)."""
        if not h.meta().get("outgoing_uri"):
            return "none"
        return str((await self._qmp(h, "query-migrate")).get("status", "none"))

    async def _await_status_change(self, h: _Handle, wait_s: float) -> None:
        """Until QEMU announced (``MIGRATION`` event) a status past setup/active since the migration began, or
        ``wait_s``. Woken by the event reader at every QMP event, so the caller learns of ``pre-switchover`` at
        once (the guest is paused from then on) and nothing spins while the copy runs (was: a look every 2 ms,
        CPU the copy competes for on a small host); a look every 50 ms at the latest, to notice a dead QEMU."""
        deadline = time.monotonic() + wait_s
        while True:
            waker = asyncio.Event()
            h.wakers.add(waker)  # before looking: an event arriving after the look still wakes this waiter
            try:
                left = deadline - time.monotonic()
                if left <= 0 or not h.alive() or any(e.name == "MIGRATION" and e.data.get("status") not in (
                        "setup", "active") for e in h.since_mark()):
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waker.wait(), min(left, 0.05))
            finally:
                h.wakers.discard(waker)

    async def _await_event(self, h: _Handle, name: str, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not any(e.name == name for e in h.since_mark()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def apply_convergence(self, vm_id: str, action: str) -> None:
        if action not in CONVERGENCE_ACTIONS:
            raise InvalidInput(f"action must be one of {', '.join(CONVERGENCE_ACTIONS)}", field="action")
        h = self._handle(vm_id)
        if h is None:
            raise NotFound(f"no domain of {vm_id} on {self.cluster_id}", vm_id=vm_id)
        async with h.lock:
            info: dict[str, Any] = {"status": "none"}
            if h.meta().get("outgoing_uri"):
                info = await self._qmp(h, "query-migrate")
            if info.get("status") != "active":
                log.info("convergence_not_applied", cluster=self.cluster_id, vm_id=vm_id, action=action,
                         status=info.get("status"))
                return
            # read from QEMU, not from memory: this driver may have restarted since ``start_migration``
            caps = {c["capability"]: bool(c["state"]) for c in await self._qmp(h, "query-migrate-capabilities")}
            if action == "auto_converge":
                if not caps.get("auto-converge"):
                    raise IllegalTransition("auto-converge was not enabled when the migration started and QEMU "
                                            "refuses capability changes while migrating", vm_id=vm_id, action=action)
                current = await self._qmp(h, "query-migrate-parameters")
                # throttle harder on every application: QEMU raises the throttle by ``increment`` at each dirty
                # sync where the guest still dirties more than ``threshold`` % of what was sent
                increment = min(50, int(current.get("cpu-throttle-increment", 10)) + 10)
                await self._qmp(h, "migrate-set-parameters", {
                    "cpu-throttle-initial": min(99, 10 + increment), "cpu-throttle-increment": increment,
                    "throttle-trigger-threshold": 1})
            else:
                if not caps.get("postcopy-ram"):
                    raise IllegalTransition("post-copy needs postcopy-ram enabled when the migration starts",
                                            vm_id=vm_id, action=action)
                await self._qmp(h, "migrate-start-postcopy")
                # QEMU switches at its next iteration (later under a low max-bandwidth): return once it did, so the
                # caller's next look at the progress sees the effect (as with the sim), not a still-"active" copy
                deadline = time.monotonic() + self.command_timeout
                while (await self._qmp(h, "query-migrate")).get("status") == "active":
                    if time.monotonic() > deadline:
                        raise DriverUnavailable(f"QEMU of {vm_id} did not switch to post-copy in time", vm_id=vm_id)
                    await asyncio.sleep(0.02)
            log.info("convergence_applied", cluster=self.cluster_id, vm_id=vm_id, action=action,
                     passes=(info.get("ram") or {}).get("dirty-sync-count"), history=list(h.history),
                     throttle_percent=info.get("cpu-throttle-percentage", 0))

    async def continue_switchover(self, vm_id: str) -> None:
        h = self._handle(vm_id)
        if h is None:
            raise NotFound(f"no domain of {vm_id} on {self.cluster_id}", vm_id=vm_id)
        async with h.lock:
            status = await self._outgoing_status(h)
            if status in ("device", "completed", "postcopy-active"):
                return
            if status == "none":
                raise NotFound(f"no migration of {vm_id} from {self.cluster_id}", vm_id=vm_id)
            if status != "pre-switchover":
                raise DriverError(f"migration of {vm_id} is {status}, not in pre-switchover", vm_id=vm_id)
            await self._qmp(h, "migrate-continue", {"state": "pre-switchover"})
            log.info("switchover_continued", cluster=self.cluster_id, vm_id=vm_id)

    async def cancel_migration(self, vm_id: str) -> None:
        """Cancel before the switchover; returns once the source runs again (QEMU resumes it by itself).

        On a migration that already ended (failed/cancelled) this acknowledges it: ``progress`` reads ``none``
        afterwards (the engine's compensation calls this, so a later migration starts from a clean slate).
        """
        h = self._handle(vm_id)
        if h is None or not h.alive():
            return
        async with h.lock:
            status = await self._outgoing_status(h)
            if status in ("postcopy-active", "postcopy-paused", "postcopy-recover"):
                raise IllegalTransition("the guest already runs on the destination (post-copy); cancelling would "
                                        "lose it", vm_id=vm_id, status=status)
            if status in IN_FLIGHT:
                await self._qmp(h, "migrate_cancel")
                log.info("migration_cancelled", cluster=self.cluster_id, vm_id=vm_id, status_before=status)
            if status in IN_FLIGHT or status == "failed":
                await self._wait_source_running(h)
            if status in ("failed", "cancelled"):
                # Cancelling a finished migration acknowledges it: QEMU keeps reporting the old status until the
                # next ``migrate``, and a new migration's check-before-do must not read that old failure.
                h.write_meta({k: v for k, v in h.meta().items() if k not in ("outgoing_uri", "gave_up")})
                self._final.pop(vm_id, None)
                log.info("migration_acknowledged", cluster=self.cluster_id, vm_id=vm_id, status=status)

    async def _wait_source_running(self, h: _Handle) -> None:
        deadline = time.monotonic() + self.command_timeout
        while True:
            status = await self._outgoing_status(h)
            state = await self._run_state(h)
            if status not in IN_FLIGHT and state == "running":
                return
            if time.monotonic() > deadline:
                raise DriverError(f"source of {h.vm_id} did not resume after cancel (migration {status}, "
                                  f"QEMU {state})", vm_id=h.vm_id)
            await asyncio.sleep(0.05)

    async def destroy_source(self, vm_id: str) -> None:
        h = self._handle(vm_id)
        if h is None:
            return
        async with h.lock:
            if h.alive():
                state = await self._run_state(h)
                if state == "running":
                    raise IllegalTransition(f"refusing to destroy the running domain of {vm_id}", vm_id=vm_id)
                status = await self._outgoing_status(h)
                if status in IN_FLIGHT:  # e.g. parked in pre-switchover: this QEMU still holds the only copy
                    raise IllegalTransition(f"refusing to destroy the source of {vm_id} while its migration is "
                                            f"{status}", vm_id=vm_id, status=status)
                with contextlib.suppress(DriverError):  # caches the final figures: the engine reads them later
                    await self.progress(vm_id)
            await self._remove(h)
            log.info("source_destroyed", cluster=self.cluster_id, vm_id=vm_id)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Disconnect from every QMP monitor (QEMU processes keep running, as under libvirt)."""
        for h in list(self._handles.values()):
            await self._drop_client(h)

    async def destroy_all(self) -> None:
        """Lab teardown: end every QEMU under ``runtime_dir`` (by its recorded PID) and remove its directory."""
        for path in sorted(self.runtime_dir.glob("*/domain.json")):
            h = self._handle(path.parent.name)
            if h is not None:
                await self._remove(h)
