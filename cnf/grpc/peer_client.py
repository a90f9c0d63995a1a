"""The calling half of CNFPeer/CNFControl: another cloud's drivers, reached through its agent.

``RemoteCloud``, ``RemoteStorage``, ``RemoteBgp`` and ``RemoteHypervisor`` implement the four port
Protocols by calling the owning agent, so ``connect_drivers(...)`` returns a ``ClusterDrivers`` that
is a drop-in for in-process drivers: the engine cannot tell the difference, and must not.

Call policy (explicit, per RPC; see ``DEFAULT_TIMEOUTS`` and ``RetryPolicy``):
- every call has a deadline (reads 5 s, mutations 30 s, Nova/QEMU set-up 60 s; overridable);
- reads are idempotent: retried on retryable errors (peer unreachable, remote ``retryable`` error)
  with capped exponential back-off, inside the read's own deadline budget;
- mutations are retried only when the request provably never reached the peer (connection refused
  or TLS handshake failed before the RPC was sent); a deadline or a remote error is returned to the
  engine, whose step policy (check first, then retry or compensate) decides — never a blind re-send;
- a peer that is down fails in milliseconds (no ``wait_for_ready``, short reconnect back-off):
  ``DriverUnavailable`` naming the peer, the operation and a diagnosed ``reason``;
- mutations carry ``epoch_provider()`` (e.g. ``election.epoch``); no epoch (None/0) -> ``NotMaster``
  locally, nothing is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import structlog

from cnf.errors import CNFError, ConfigError, NotMaster
from cnf.grpc import convert
from cnf.grpc.control import AgentStatus, HandoverDecision, InventorySnapshot, inventory_from_pb, status_from_pb
from cnf.grpc.status import ERROR_METADATA_KEY, decode_error
from cnf.grpc.tls import CLAIM_METADATA_KEY, ClientTlsSource, TlsFiles, diagnose_handshake, tls_name_for
from cnf.grpc.wire import MAX_PROGRESS_WAIT_MS, pb, rpc
from cnf.hypervisor.base import Domain, MigrationParams, MigrationProgress
from cnf.network.base import BgpPath, BgpPeer
from cnf.openstack.base import CloudMetrics, Flavor, Host, Server, ServerSpec
from cnf.ports import ClusterDrivers
from cnf.storage.base import MirrorStatus

log = structlog.get_logger(__name__)

M = TypeVar("M")

READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 30.0
DEFAULT_TIMEOUTS: dict[str, float] = {
    "Ping": 2.0,
    "CloudCreateReceiver": 60.0,
    "CloudActivateReceiver": 60.0,
    "CloudBootReceiver": 60.0,
    "HypervisorPrepareIncoming": 60.0,
    "GetStatus": 10.0,
    "GetInventory": 30.0,
    "HandoverReady": 30.0,
}

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.enable_retries", 0),  # retries are ours, explicit, per call (see module docstring)
)

#: reasons after which re-sending cannot help within one call (needs an operator or a cert reload)
_PERMANENT_REASONS = ("peer_certificate", "our_certificate", "own_certificate", "peer_cluster_mismatch",
                      "peer_speaks_plaintext", "peer_requires_tls")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # total attempts for a retryable call
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0


class PeerConnection:
    """One gRPC channel to one agent, with identity, deadlines, retries and TLS reload.

    ``peer_cluster_id`` is the cluster the far end must prove to be (checked by TLS against its
    certificate); ``local_cluster_id`` is who we are (sent as ``cnf-cluster-id`` and matched by the
    peer against our certificate). ``tls=None`` needs ``allow_plaintext=True`` (development only).
    """

    def __init__(self, target: str, *, peer_cluster_id: str, local_cluster_id: str, tls: TlsFiles | None,
                 epoch_provider: Callable[[], int | None], allow_plaintext: bool = False,
                 timeouts: Mapping[str, float] | None = None, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if tls is None and not allow_plaintext:
            raise ConfigError("peer connections need TLS files (or allow_plaintext=True for development)",
                              key="tls")
        self.target = target
        self.peer_cluster_id = peer_cluster_id
        self.local_cluster_id = local_cluster_id
        self.tls = tls
        self._tls_source = ClientTlsSource(tls) if tls is not None else None
        self._epoch_provider = epoch_provider
        self._timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self.retry = retry
        self._sleep = sleep
        self._channel: grpc.aio.Channel | None = None
        self._peer_stub: Any = None
        self._control_stub: Any = None
        self._metadata = ((CLAIM_METADATA_KEY, local_cluster_id),)
        self._diagnosis: tuple[float, str] | None = None

    # --- channel ------------------------------------------------------------------------------

    def _open(self) -> None:
        if self._tls_source is not None:
            options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", tls_name_for(self.peer_cluster_id))]
            self._channel = grpc.aio.secure_channel(self.target, self._tls_source.credentials(), options=options)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=list(CHANNEL_OPTIONS))
        self._peer_stub = rpc.CNFPeerStub(self._channel)
        self._control_stub = rpc.CNFControlStub(self._channel)

    async def _ensure_channel(self) -> None:
        if self._tls_source is not None and self._tls_source.changed() and self._channel is not None:
            old = self._channel
            self._open()  # new handshakes use the new files; calls in flight finish on the old channel
            asyncio.get_running_loop().call_later(5.0, lambda: asyncio.ensure_future(old.close()))
        if self._channel is None:
            self._open()

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    def epoch(self) -> int:
        epoch = int(self._epoch_provider() or 0)  # Election.epoch() is None while not master
        if epoch <= 0:
            raise NotMaster("no master epoch: this agent cannot send mutating peer calls",
                            peer=self.peer_cluster_id)
        return epoch

    def timeout_for(self, method: str, mutating: bool) -> float:
        return self._timeouts.get(method, WRITE_TIMEOUT_S if mutating else READ_TIMEOUT_S)

    # --- calls --------------------------------------------------------------------------------

    async def read(self, method: str, request: Any, *, service: str = "peer") -> Any:
        return await self._call(method, lambda: request, mutating=False, service=service)

    async def write(self, method: str, build: Callable[[int], Any], *, service: str = "peer") -> Any:
        """``build(epoch)`` makes the request; the epoch is read once per attempt (a newer term wins)."""
        return await self._call(method, lambda: build(self.epoch()), mutating=True, service=service)

    async def _call(self, method: str, build: Callable[[], Any], *, mutating: bool, service: str) -> Any:
        timeout = self.timeout_for(method, mutating)
        deadline = time.monotonic() + timeout
        backoff = self.retry.backoff_s
        attempt = 0
        while True:
            attempt += 1
            request = build()
            remaining = deadline - time.monotonic()
            try:
                return await self._once(method, request, remaining, service)
            except _Failure as failure:
                err = failure.error
                retry = (attempt < self.retry.attempts and err.retryable
                         and (not mutating or failure.not_sent) and not failure.permanent
                         and deadline - time.monotonic() > backoff)
                log.log(20 if retry else 30, "peer_call_failed", peer=self.peer_cluster_id, target=self.target,
                        operation=method, attempt=attempt, retry=retry, code=err.code, error=err.message,
                        reason=err.details.get("reason", ""))
                if not retry:
                    raise err from None
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.retry.max_backoff_s)

    async def _once(self, method: str, request: Any, budget_s: float, service: str) -> Any:
        await self._ensure_channel()
        stub = self._peer_stub if service == "peer" else self._control_stub
        try:
            return await getattr(stub, method)(request, timeout=max(0.001, budget_s), metadata=self._metadata,
                                               wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            trailing = list(exc.trailing_metadata() or ())
            from_peer = any(k == ERROR_METADATA_KEY for k, _ in trailing)
            err = decode_error(exc.code(), exc.details(), trailing, peer=self.peer_cluster_id, operation=method)
            not_sent = False
            permanent = False
            if not from_peer and exc.code() is grpc.StatusCode.UNAVAILABLE:
                reason = await self._diagnose()
                err.details["reason"] = reason
                err.message = f"{err.message} [{reason}]"
                # "failed to connect": refused or handshake failed, so the RPC was never sent
                not_sent = "failed to connect" in (exc.details() or "").lower()
                permanent = reason.startswith(_PERMANENT_REASONS)
            raise _Failure(err, not_sent=not_sent, permanent=permanent) from None

    async def _diagnose(self) -> str:
        """Why the transport failed (cached 5 s): peer down, or which TLS rejection; logged once."""
        now = time.monotonic()
        if self._diagnosis is not None and now - self._diagnosis[0] < 5.0:
            return self._diagnosis[1]
        reason = await asyncio.to_thread(diagnose_handshake, self.target, self.tls, self.peer_cluster_id,
                                         timeout_s=1.0)
        self._diagnosis = (now, reason)
        level = 30 if reason in ("peer_down", "handshake_ok") else 40
        log.log(level, "peer_connect_failed", peer=self.peer_cluster_id, target=self.target, reason=reason)
        return reason

    # --- extras -------------------------------------------------------------------------------

    async def ping(self, payload: bytes = b"") -> bytes:
        reply = await self.read("Ping", pb.PingRequest(payload=payload))
        return bytes(reply.payload)

    async def describe(self) -> pb.PeerDescription:
        return await self.read("Describe", pb.Empty())


class _Failure(Exception):
    def __init__(self, error: CNFError, *, not_sent: bool, permanent: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.not_sent = not_sent
        self.permanent = permanent


# --- the four ports ------------------------------------------------------------------------------


class RemoteCloud:
    """CloudDriver of another cluster, through its agent."""

    def __init__(self, conn: PeerConnection) -> None:
        self._c = conn
        self.cluster_id = conn.peer_cluster_id

    async def list_servers(self) -> list[Server]:
        r = await self._c.read("CloudListServers", pb.Empty())
        return [convert.server_from_pb(s) for s in r.servers]

    async def get_server(self, vm_id: str) -> Server | None:
        r = await self._c.read("CloudGetServer", pb.VmQuery(vm_id=vm_id))
        return convert.server_from_pb(r.server) if r.found else None

    async def list_hosts(self) -> list[Host]:
        r = await self._c.read("CloudListHosts", pb.Empty())
        return [convert.host_from_pb(h) for h in r.hosts]

    async def list_flavors(self) -> list[Flavor]:
        r = await self._c.read("CloudListFlavors", pb.Empty())
        return [convert.flavor_from_pb(f) for f in r.flavors]

    async def metrics(self) -> CloudMetrics:
        return convert.metrics_from_pb(await self._c.read("CloudGetMetrics", pb.Empty()))

    async def stop_server(self, vm_id: str) -> None:
        await self._c.write("CloudStopServer", lambda e: pb.VmMutation(epoch=e, vm_id=vm_id))

    async def start_server(self, vm_id: str) -> None:
        await self._c.write("CloudStartServer", lambda e: pb.VmMutation(epoch=e, vm_id=vm_id))

    async def create_receiver(self, spec: ServerSpec) -> Server:
        r = await self._c.write("CloudCreateReceiver",
                                lambda e: pb.CreateReceiverRequest(epoch=e, spec=convert.spec_to_pb(spec)))
        return convert.server_from_pb(r)

    async def delete_receiver(self, vm_id: str) -> None:
        await self._c.write("CloudDeleteReceiver", lambda e: pb.VmMutation(epoch=e, vm_id=vm_id))

    async def activate_receiver(self, vm_id: str) -> Server:
        r = await self._c.write("CloudActivateReceiver", lambda e: pb.VmMutation(epoch=e, vm_id=vm_id))
        return convert.server_from_pb(r)

    async def boot_receiver(self, vm_id: str, power_on: bool = True) -> Server:
        r = await self._c.write("CloudBootReceiver",
                                lambda e: pb.BootReceiverRequest(epoch=e, vm_id=vm_id, power_on=power_on))
        return convert.server_from_pb(r)

    async def retire_server(self, vm_id: str) -> None:
        await self._c.write("CloudRetireServer", lambda e: pb.VmMutation(epoch=e, vm_id=vm_id))


class RemoteStorage:
    """StorageDriver of another cluster, through its agent."""

    def __init__(self, conn: PeerConnection) -> None:
        self._c = conn
        self.cluster_id = conn.peer_cluster_id

    async def status(self, image: str) -> MirrorStatus:
        return convert.mirror_from_pb(await self._c.read("StorageStatus", pb.ImageQuery(image=image)))

    async def enable_mirroring(self, image: str) -> bool:
        r = await self._c.write("StorageEnableMirroring", lambda e: pb.ImageMutation(epoch=e, image=image))
        return bool(r.value)

    async def disable_mirroring(self, image: str) -> None:
        await self._c.write("StorageDisableMirroring", lambda e: pb.ImageMutation(epoch=e, image=image))

    async def create_mirror_snapshot(self, image: str) -> int:
        r = await self._c.write("StorageCreateMirrorSnapshot", lambda e: pb.ImageMutation(epoch=e, image=image))
        return int(r.snapshot_id)

    async def demote(self, image: str) -> None:
        await self._c.write("StorageDemote", lambda e: pb.ImageMutation(epoch=e, image=image))

    async def promote(self, image: str) -> None:
        await self._c.write("StoragePromote", lambda e: pb.ImageMutation(epoch=e, image=image))

    async def peer_reachable(self) -> bool:
        return bool((await self._c.read("StoragePeerReachable", pb.Empty())).value)


class RemoteBgp:
    """BgpDriver of another cluster, through its agent. ``as_number``/``default_next_hop`` come from
    the peer's ``Describe`` (see ``connect_drivers``) or the cluster registry."""

    def __init__(self, conn: PeerConnection, *, as_number: int, default_next_hop: str) -> None:
        self._c = conn
        self.cluster_id = conn.peer_cluster_id
        self.as_number = as_number
        self.default_next_hop = default_next_hop

    async def announce(self, prefix: str, next_hop: str | None = None) -> None:
        def build(e: int) -> pb.AnnounceRequest:
            req = pb.AnnounceRequest(epoch=e, prefix=prefix)
            if next_hop is not None:
                req.next_hop = next_hop
            return req

        await self._c.write("BgpAnnounce", build)

    async def withdraw(self, prefix: str) -> None:
        await self._c.write("BgpWithdraw", lambda e: pb.WithdrawRequest(epoch=e, prefix=prefix))

    async def announced(self, prefix: str) -> bool:
        return bool((await self._c.read("BgpAnnounced", pb.PrefixQuery(prefix=prefix))).value)

    async def fabric_best_path(self, prefix: str) -> BgpPath | None:
        r = await self._c.read("BgpFabricBestPath", pb.PrefixQuery(prefix=prefix))
        return convert.path_from_pb(r.path) if r.found else None

    async def peers(self) -> list[BgpPeer]:
        r = await self._c.read("BgpPeers", pb.Empty())
        return [convert.peer_from_pb(p) for p in r.peers]


class RemoteHypervisor:
    """HypervisorDriver of another cluster, through its agent."""

    def __init__(self, conn: PeerConnection) -> None:
        self._c = conn
        self.cluster_id = conn.peer_cluster_id

    async def domain(self, vm_id: str) -> Domain | None:
        r = await self._c.read("HypervisorDomain", pb.VmQuery(vm_id=vm_id))
        return convert.domain_from_pb(r.domain) if r.found else None

    async def prepare_incoming(self, vm_id: str, ram_mb: int, image: str, host: str = "") -> str:
        r = await self._c.write("HypervisorPrepareIncoming", lambda e: pb.PrepareIncomingRequest(
            epoch=e, vm_id=vm_id, ram_mb=ram_mb, image=image, host=host))
        return str(r.uri)

    async def destroy_incoming(self, vm_id: str) -> None:
        await self._c.write("HypervisorDestroyIncoming", lambda e: pb.VmMutation(epoch=e, vm_id=vm_id))

    async def start_migration(self, vm_id: str, dest_uri: str, params: MigrationParams) -> None:
        await self._c.write("HypervisorStartMigration", lambda e: pb.StartMigrationRequest(
            epoch=e, vm_id=vm_id, dest_uri=dest_uri, params=convert.params_to_pb(params)))

    async def progress(self, vm_id: str, wait_s: float = 0.0) -> MigrationProgress:
        wait_ms = max(0, min(int(wait_s * 1000), MAX_PROGRESS_WAIT_MS))
        return convert.progress_from_pb(await self._c.read("HypervisorProgress",
                                                           pb.VmQuery(vm_id=vm_id, wait_ms=wait_ms)))

    async def apply_convergence(self, vm_id: str, action: str) -> None:
        await self._c.write("HypervisorApplyConvergence",
                            lambda e: pb.ConvergenceRequest(epoch=e, vm_id=vm_id, action=action))

    async def continue_switchover(self, vm_id: str) -> None:
        await self._c.write("HypervisorContinueSwitchover", lambda e: pb.VmMutation(epoch=e, vm_id=vm_id))

    async def cancel_migration(self, vm_id: str) -> None:
        await self._c.write("HypervisorCancelMigration", lambda e: pb.VmMutation(epoch=e, vm_id=vm_id))

    async def destroy_source(self, vm_id: str) -> None:
        await self._c.write("HypervisorDestroySource", lambda e: pb.VmMutation(epoch=e, vm_id=vm_id))


def remote_drivers(conn: PeerConnection, *, as_number: int, default_next_hop: str) -> ClusterDrivers:
    """The peer's four ports, when its BGP identity is already known (cluster registry)."""
    return ClusterDrivers(cluster_id=conn.peer_cluster_id, cloud=RemoteCloud(conn), storage=RemoteStorage(conn),
                          bgp=RemoteBgp(conn, as_number=as_number, default_next_hop=default_next_hop),
                          hypervisor=RemoteHypervisor(conn))


async def connect_drivers(conn: PeerConnection) -> ClusterDrivers:
    """Ask the peer who it is (``Describe``) and return its four ports; refuses a different cluster."""
    d = await conn.describe()
    if d.cluster_id != conn.peer_cluster_id:
        raise ConfigError(f"{conn.target} serves cluster {d.cluster_id}, expected {conn.peer_cluster_id}",
                          key="peer_clusters")
    return remote_drivers(conn, as_number=int(d.as_number), default_next_hop=d.default_next_hop)


# --- CNFControl ----------------------------------------------------------------------------------


class ControlClient:
    """CNFControl of another agent: status, inventory, master hand-over."""

    def __init__(self, conn: PeerConnection) -> None:
        self._c = conn

    async def status(self) -> AgentStatus:
        return status_from_pb(await self._c.read("GetStatus", pb.Empty(), service="control"))

    async def inventory(self) -> InventorySnapshot:
        return inventory_from_pb(await self._c.read("GetInventory", pb.Empty(), service="control"))

    async def handover_prepare(self) -> HandoverDecision:
        return await self._handover("HandoverPrepare")

    async def handover_ready(self) -> HandoverDecision:
        return await self._handover("HandoverReady")

    async def _handover(self, method: str) -> HandoverDecision:
        r = await self._c.write(method, lambda e: pb.HandoverRequest(
            epoch=e, from_cluster_id=self._c.local_cluster_id, to_cluster_id=self._c.peer_cluster_id),
            service="control")
        return HandoverDecision(accepted=r.accepted, detail=r.detail, epoch=int(r.epoch))
