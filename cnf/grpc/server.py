"""The agent's gRPC server: CNFPeer and CNFControl over its OWN cloud's drivers (grpc.aio, mTLS).

Why: the master never touches another cloud directly. Every cloud-local step of a migration reaches
the owning agent through CNFPeer, which runs it with that agent's ``ClusterDrivers``. This module is
the serving half; ``cnf.grpc.peer_client`` is the calling half.

Every RPC goes through one ``CallGate``, in this order:
1. identity: the caller's certificate names a known cluster, equal to the ``cnf-cluster-id`` it claims
   (``cnf.grpc.tls.PeerIdentityVerifier``) — skipped only on an explicitly plaintext server;
2. fencing: a mutating request's ``epoch`` is admitted by the ``EpochStore`` (lower -> ``Fenced``);
3. the driver call, bounded by the caller's deadline (and ``max_call_s``);
4. errors: a ``CNFError`` leaves as status + ``cnf-error-bin`` (``cnf.grpc.status``), anything else as
   a ``DriverError`` — the driver's exception never leaks raw.

Usage (the agent)::

    server = PeerServer(drivers, listen="0.0.0.0:50051", tls=TlsFiles.in_dir("/etc/cnf/tls", cid),
                        known_peers=lambda: registered_ids, epoch_store=FileEpochStore(state / "peer-epoch"))
    port = await server.start()
    ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import structlog

from cnf.errors import CNFError, ConfigError, DriverError, DriverUnavailable, InvalidInput
from cnf.grpc import convert
from cnf.grpc.control import AgentRole, ControlServicer, HandoverParticipant
from cnf.grpc.epoch import EpochStore, MemoryEpochStore
from cnf.grpc.status import encode_error
from cnf.grpc.tls import CLAIM_METADATA_KEY, PeerIdentityVerifier, ServerTlsSource, TlsFiles
from cnf.grpc.wire import MAX_PROGRESS_WAIT_MS, pb, rpc
from cnf.network.base import BgpPath
from cnf.ports import ClusterDrivers

log = structlog.get_logger(__name__)

T = TypeVar("T")

SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.so_reuseport", 0),  # a second agent on the same port must fail, not share it silently
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


@dataclass(frozen=True)
class CallRecord:
    """One served call, kept in ``PeerServer.recent_calls`` (status pages, tests, debugging)."""

    operation: str
    caller: str | None
    epoch: int | None
    outcome: str  # "ok" or the error code
    duration_ms: float


class CallGate:
    """Identity check, epoch admission, deadline, error mapping and log line for every RPC."""

    def __init__(self, cluster_id: str, verifier: PeerIdentityVerifier | None, epochs: EpochStore, *,
                 max_call_s: float, history: int = 1000) -> None:
        self.cluster_id = cluster_id
        self.verifier = verifier
        self.epochs = epochs
        self.max_call_s = max_call_s
        self.recent: deque[CallRecord] = deque(maxlen=history)

    def caller(self, context: Any) -> str | None:
        """The verified caller (TLS) or the unverified claim (plaintext server)."""
        md = dict(context.invocation_metadata() or ())
        claimed = md.get(CLAIM_METADATA_KEY)
        return claimed if isinstance(claimed, str) else None

    async def run(self, context: Any, operation: str, epoch: int | None, thunk: Callable[[], Awaitable[T]]) -> T:
        t0 = time.perf_counter()
        caller = self.caller(context)
        try:
            if self.verifier is not None:
                caller = self.verifier.verify(context.auth_context(), caller, operation=operation)
            if epoch is not None:
                self.epochs.admit(epoch)
            remaining = context.time_remaining()
            # a little under the caller's deadline, so the caller gets this explanation, not a bare deadline
            budget = self.max_call_s if remaining is None else min(self.max_call_s, max(0.0, remaining - 0.05))
            try:
                async with asyncio.timeout(budget):
                    result = await thunk()
            except TimeoutError:
                raise DriverUnavailable(f"{operation} on {self.cluster_id} did not finish within {budget:.1f} s",
                                        port=operation.split(".")[0], operation=operation) from None
        except CNFError as err:
            self._record(operation, caller, epoch, err.code, t0, err)
            code, message, trailing = encode_error(err)
            await context.abort(code, message, trailing_metadata=trailing)
            raise AssertionError("unreachable: abort raises") from err
        except asyncio.CancelledError:
            self._record(operation, caller, epoch, "cancelled", t0, None)
            raise
        except Exception as exc:  # a driver broke its contract; still answer with a CNF error
            log.exception("peer_call_crashed", operation=operation, caller=caller)
            crash = DriverError(f"{operation} failed on {self.cluster_id}: {type(exc).__name__}: {exc}",
                                port=operation.split(".")[0], operation=operation)
            self._record(operation, caller, epoch, crash.code, t0, crash)
            code, message, trailing = encode_error(crash)
            await context.abort(code, message, trailing_metadata=trailing)
            raise AssertionError("unreachable: abort raises") from exc
        self._record(operation, caller, epoch, "ok", t0, None)
        return result

    def _record(self, operation: str, caller: str | None, epoch: int | None, outcome: str, t0: float,
                err: CNFError | None) -> None:
        ms = (time.perf_counter() - t0) * 1000.0
        self.recent.append(CallRecord(operation, caller, epoch, outcome, ms))
        if operation == "peer.ping":
            return
        if err is not None:
            log.warning("peer_call", operation=operation, caller=caller, epoch=epoch, outcome=outcome,
                        error=err.message, duration_ms=round(ms, 2), cluster_id=self.cluster_id)
        elif epoch is not None:
            log.info("peer_call", operation=operation, caller=caller, epoch=epoch, outcome=outcome,
                     duration_ms=round(ms, 2), cluster_id=self.cluster_id)
        else:
            log.debug("peer_call", operation=operation, caller=caller, outcome=outcome, duration_ms=round(ms, 2))


_ACK = pb.Ack()


class PeerServicer(rpc.CNFPeerServicer):  # type: ignore[misc]
    """One RPC per port method; the request's fields are the method's arguments."""

    def __init__(self, drivers: ClusterDrivers, gate: CallGate) -> None:
        self._d = drivers
        self._g = gate

    async def _ack(self, context: Any, op: str, epoch: int, thunk: Callable[[], Awaitable[Any]]) -> pb.Ack:
        await self._g.run(context, op, epoch, thunk)
        return _ACK

    # --- extras ----------------------------------------------------------------------------

    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingReply:
        async def pong() -> pb.PingReply:
            return pb.PingReply(payload=request.payload)

        return await self._g.run(context, "peer.ping", None, pong)

    async def Describe(self, request: pb.Empty, context: Any) -> pb.PeerDescription:
        async def describe() -> pb.PeerDescription:
            b = self._d.bgp
            return pb.PeerDescription(cluster_id=self._d.cluster_id, as_number=b.as_number,
                                      default_next_hop=b.default_next_hop, highest_epoch=self._g.epochs.highest())

        return await self._g.run(context, "peer.describe", None, describe)

    # --- CloudDriver -------------------------------------------------------------------------

    async def CloudListServers(self, request: pb.Empty, context: Any) -> pb.ServerList:
        servers = await self._g.run(context, "cloud.list_servers", None, self._d.cloud.list_servers)
        return pb.ServerList(servers=[convert.server_to_pb(s) for s in servers])

    async def CloudGetServer(self, request: pb.VmQuery, context: Any) -> pb.ServerLookup:
        s = await self._g.run(context, "cloud.get_server", None, lambda: self._d.cloud.get_server(request.vm_id))
        return pb.ServerLookup(found=False) if s is None else pb.ServerLookup(found=True,
                                                                              server=convert.server_to_pb(s))

    async def CloudListHosts(self, request: pb.Empty, context: Any) -> pb.HostList:
        hosts = await self._g.run(context, "cloud.list_hosts", None, self._d.cloud.list_hosts)
        return pb.HostList(hosts=[convert.host_to_pb(h) for h in hosts])

    async def CloudListFlavors(self, request: pb.Empty, context: Any) -> pb.FlavorList:
        flavors = await self._g.run(context, "cloud.list_flavors", None, self._d.cloud.list_flavors)
        return pb.FlavorList(flavors=[convert.flavor_to_pb(f) for f in flavors])

    async def CloudGetMetrics(self, request: pb.Empty, context: Any) -> pb.CloudMetrics:
        return convert.metrics_to_pb(await self._g.run(context, "cloud.metrics", None, self._d.cloud.metrics))

    async def CloudStopServer(self, request: pb.VmMutation, context: Any) -> pb.Ack:
        return await self._ack(context, "cloud.stop_server", request.epoch,
                               lambda: self._d.cloud.stop_server(request.vm_id))

    async def CloudStartServer(self, request: pb.VmMutation, context: Any) -> pb.Ack:
        return await self._ack(context, "cloud.start_server", request.epoch,
                               lambda: self._d.cloud.start_server(request.vm_id))

    async def CloudCreateReceiver(self, request: pb.CreateReceiverRequest, context: Any) -> pb.Server:
        spec = convert.spec_from_pb(request.spec)
        s = await self._g.run(context, "cloud.create_receiver", request.epoch,
                              lambda: self._d.cloud.create_receiver(spec))
        return convert.server_to_pb(s)

    async def CloudDeleteReceiver(self, request: pb.VmMutation, context: Any) -> pb.Ack:
        return await self._ack(context, "cloud.delete_receiver", request.epoch,
                               lambda: self._d.cloud.delete_receiver(request.vm_id))

    async def CloudActivateReceiver(self, request: pb.VmMutation, context: Any) -> pb.Server:
        s = await self._g.run(context, "cloud.activate_receiver", request.epoch,
                              lambda: self._d.cloud.activate_receiver(request.vm_id))
        return convert.server_to_pb(s)

    async def CloudBootReceiver(self, request: pb.BootReceiverRequest, context: Any) -> pb.Server:
        s = await self._g.run(context, "cloud.boot_receiver", request.epoch,
                              lambda: self._d.cloud.boot_receiver(request.vm_id, request.power_on))
        return convert.server_to_pb(s)

    async def CloudRetireServer(self, request: pb.VmMutation, context: Any) -> pb.Ack:
        return await self._ack(context, "cloud.retire_server", request.epoch,
                               lambda: self._d.cloud.retire_server(request.vm_id))

    # --- StorageDriver -----------------------------------------------------------------------

    async def StorageStatus(self, request: pb.ImageQuery, context: Any) -> pb.MirrorStatus:
        st = await self._g.run(context, "storage.status", None, lambda: self._d.storage.status(request.image))
        return convert.mirror_to_pb(st)

    async def StorageEnableMirroring(self, request: pb.ImageMutation, context: Any) -> pb.BoolReply:
        enabled = await self._g.run(context, "storage.enable_mirroring", request.epoch,
                                    lambda: self._d.storage.enable_mirroring(request.image))
        return pb.BoolReply(value=bool(enabled))

    async def StorageDisableMirroring(self, request: pb.ImageMutation, context: Any) -> pb.Ack:
        return await self._ack(context, "storage.disable_mirroring", request.epoch,
                               lambda: self._d.storage.disable_mirroring(request.image))

    async def StorageCreateMirrorSnapshot(self, request: pb.ImageMutation, context: Any) -> pb.SnapshotReply:
        snap = await self._g.run(context, "storage.create_mirror_snapshot", request.epoch,
                                 lambda: self._d.storage.create_mirror_snapshot(request.image))
        return pb.SnapshotReply(snapshot_id=snap)

    async def StorageDemote(self, request: pb.ImageMutation, context: Any) -> pb.Ack:
        return await self._ack(context, "storage.demote", request.epoch,
                               lambda: self._d.storage.demote(request.image))

    async def StoragePromote(self, request: pb.ImageMutation, context: Any) -> pb.Ack:
        return await self._ack(context, "storage.promote", request.epoch,
                               lambda: self._d.storage.promote(request.image))

    async def StoragePeerReachable(self, request: pb.Empty, context: Any) -> pb.BoolReply:
        ok = await self._g.run(context, "storage.peer_reachable", None, self._d.storage.peer_reachable)
        return pb.BoolReply(value=bool(ok))

    # --- BgpDriver ---------------------------------------------------------------------------

    async def BgpAnnounce(self, request: pb.AnnounceRequest, context: Any) -> pb.Ack:
        next_hop = request.next_hop if request.HasField("next_hop") else None
        return await self._ack(context, "bgp.announce", request.epoch,
                               lambda: self._d.bgp.announce(request.prefix, next_hop))

    async def BgpWithdraw(self, request: pb.WithdrawRequest, context: Any) -> pb.Ack:
        return await self._ack(context, "bgp.withdraw", request.epoch, lambda: self._d.bgp.withdraw(request.prefix))

    async def BgpAnnounced(self, request: pb.PrefixQuery, context: Any) -> pb.BoolReply:
        ok = await self._g.run(context, "bgp.announced", None, lambda: self._d.bgp.announced(request.prefix))
        return pb.BoolReply(value=bool(ok))

    async def BgpFabricBestPath(self, request: pb.PrefixQuery, context: Any) -> pb.BgpPathLookup:
        path: BgpPath | None = await self._g.run(context, "bgp.fabric_best_path", None,
                                                 lambda: self._d.bgp.fabric_best_path(request.prefix))
        return pb.BgpPathLookup(found=False) if path is None else pb.BgpPathLookup(found=True,
                                                                                   path=convert.path_to_pb(path))

    async def BgpPeers(self, request: pb.Empty, context: Any) -> pb.BgpPeerList:
        peers = await self._g.run(context, "bgp.peers", None, self._d.bgp.peers)
        return pb.BgpPeerList(peers=[convert.peer_to_pb(p) for p in peers])

    # --- HypervisorDriver --------------------------------------------------------------------

    async def HypervisorDomain(self, request: pb.VmQuery, context: Any) -> pb.DomainLookup:
        d = await self._g.run(context, "hypervisor.domain", None, lambda: self._d.hypervisor.domain(request.vm_id))
        return pb.DomainLookup(found=False) if d is None else pb.DomainLookup(found=True,
                                                                              domain=convert.domain_to_pb(d))

    async def HypervisorPrepareIncoming(self, request: pb.PrepareIncomingRequest, context: Any) -> pb.EndpointReply:
        uri = await self._g.run(context, "hypervisor.prepare_incoming", request.epoch,
                                lambda: self._d.hypervisor.prepare_incoming(request.vm_id, request.ram_mb,
                                                                            request.image, request.host))
        return pb.EndpointReply(uri=uri)

    async def HypervisorDestroyIncoming(self, request: pb.VmMutation, context: Any) -> pb.Ack:
        return await self._ack(context, "hypervisor.destroy_incoming", request.epoch,
                               lambda: self._d.hypervisor.destroy_incoming(request.vm_id))

    async def HypervisorStartMigration(self, request: pb.StartMigrationRequest, context: Any) -> pb.Ack:
        params = convert.params_from_pb(request.params)
        return await self._ack(context, "hypervisor.start_migration", request.epoch,
                               lambda: self._d.hypervisor.start_migration(request.vm_id, request.dest_uri, params))

    async def HypervisorProgress(self, request: pb.VmQuery, context: Any) -> pb.MigrationProgress:
        p = await self._g.run(context, "hypervisor.progress", None,
                              lambda: self._d.hypervisor.progress(
                                  request.vm_id, wait_s=min(request.wait_ms, MAX_PROGRESS_WAIT_MS) / 1000.0))
        return convert.progress_to_pb(p)

    async def HypervisorApplyConvergence(self, request: pb.ConvergenceRequest, context: Any) -> pb.Ack:
        return await self._ack(context, "hypervisor.apply_convergence", request.epoch,
                               lambda: self._d.hypervisor.apply_convergence(request.vm_id, request.action))

    async def HypervisorContinueSwitchover(self, request: pb.VmMutation, context: Any) -> pb.Ack:
        return await self._ack(context, "hypervisor.continue_switchover", request.epoch,
                               lambda: self._d.hypervisor.continue_switchover(request.vm_id))

    async def HypervisorCancelMigration(self, request: pb.VmMutation, context: Any) -> pb.Ack:
        return await self._ack(context, "hypervisor.cancel_migration", request.epoch,
                               lambda: self._d.hypervisor.cancel_migration(request.vm_id))

    async def HypervisorDestroySource(self, request: pb.VmMutation, context: Any) -> pb.Ack:
        return await self._ack(context, "hypervisor.destroy_source", request.epoch,
                               lambda: self._d.hypervisor.destroy_source(request.vm_id))


class PeerServer:
    """CNFPeer + CNFControl for one agent's ``ClusterDrivers``.

    ``tls`` is required unless ``allow_plaintext=True`` (benchmarks, single-host development): a
    plaintext server trusts the caller's claimed cluster id and says so in its log at start.
    ``known_peers``: cluster ids allowed to call (a callable is re-read per call). ``epoch_store``:
    where the highest accepted master epoch lives (``FileEpochStore`` in production; default is an
    in-memory store, which only suits tests). ``max_call_s`` bounds any single driver call even if
    the caller set no deadline. ``call_history``: how many served calls ``recent_calls`` keeps.
    """

    def __init__(self, drivers: ClusterDrivers, *, listen: str = "127.0.0.1:0", tls: TlsFiles | None = None,
                 known_peers: Collection[str] | Callable[[], Collection[str]] = (),
                 epoch_store: EpochStore | None = None, role_provider: Callable[[], AgentRole] | None = None,
                 handover: HandoverParticipant | None = None, allow_plaintext: bool = False,
                 max_call_s: float = 300.0, version: str = "", call_history: int = 1000) -> None:
        if tls is None and not allow_plaintext:
            raise ConfigError("the peer gRPC server needs TLS files (or allow_plaintext=True for development)",
                              key="tls")
        if max_call_s <= 0:
            raise InvalidInput("max_call_s must be positive", field="max_call_s")
        self.drivers = drivers
        self.listen = listen
        self.tls = tls
        self._tls_source = ServerTlsSource(tls) if tls is not None else None
        verifier = PeerIdentityVerifier(known_peers) if tls is not None else None
        self.gate = CallGate(drivers.cluster_id, verifier, epoch_store or MemoryEpochStore(), max_call_s=max_call_s,
                             history=call_history)
        self._control = ControlServicer(drivers, self.gate, version=version or _package_version(),
                                        role_provider=role_provider, handover=handover)
        self._peer = PeerServicer(drivers, self.gate)
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        if self.port is None:
            raise DriverError("server not started", port="grpc", operation="address")
        host = self.listen.rpartition(":")[0] or "127.0.0.1"
        return f"{host}:{self.port}"

    @property
    def recent_calls(self) -> list[CallRecord]:
        return list(self.gate.recent)

    @property
    def tls_reloads(self) -> int:
        return self._tls_source.reloads if self._tls_source is not None else 0

    async def start(self) -> int:
        """Bind and serve; returns the bound port (``listen`` may use port 0)."""
        if self._server is not None:
            raise DriverError("server already started", port="grpc", operation="start")
        server = grpc.aio.server(options=list(SERVER_OPTIONS))
        rpc.add_CNFPeerServicer_to_server(self._peer, server)
        rpc.add_CNFControlServicer_to_server(self._control, server)
        try:
            if self._tls_source is not None:
                port = server.add_secure_port(self.listen, self._tls_source.credentials())
            else:
                port = server.add_insecure_port(self.listen)
        except RuntimeError as exc:
            raise DriverUnavailable(f"cannot listen on {self.listen}: {exc}", port="grpc",
                                    operation="start") from None
        if port == 0:
            raise DriverUnavailable(f"cannot listen on {self.listen} (address in use?)", port="grpc",
                                    operation="start")
        await server.start()
        self._server, self.port = server, port
        log.info("peer_server_started", cluster_id=self.drivers.cluster_id, address=self.address,
                 tls=self.tls is not None, highest_epoch=self.gate.epochs.highest())
        if self.tls is None:
            log.warning("peer_server_plaintext", cluster_id=self.drivers.cluster_id,
                        detail="callers are not authenticated; development only")
        return port

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop accepting calls; in-flight calls get ``grace_s`` to finish, then are cancelled."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.stop(grace_s)
        log.info("peer_server_stopped", cluster_id=self.drivers.cluster_id, port=self.port)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("openstack-cnf")
    except Exception:
        return "0+unknown"
