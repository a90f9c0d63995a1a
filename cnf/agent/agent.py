"""The agent process: one per cloud, on its controller. Wires config, state, drivers, election and API.

Lifecycle: ``start()`` upgrades the schema (Alembic), builds the drivers of this
agent's cloud (``sim`` or real per port, from config) and the directory of every
cluster it can act on, starts the election, and — while master — registers the
clusters, syncs the inventory, resumes unfinished migrations and runs the
periodic loops. ``stop()`` resigns and stops everything it started.

Embedded default (no config file): this one agent serves the demo's three sim
clouds in-process (``cnf.sim.demo``), SQLite in a private temp dir, in-process
tasks, single-node election. Its clouds live in memory, so its database does
too (a restart starts a fresh federation) unless ``database.url`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from cnf import __version__
from cnf.agent.raft import Election, MasterInfo, SingleNodeElection
from cnf.agent.service import FederationService
from cnf.clock import Clock, SystemClock
from cnf.config import CNFConfig
from cnf.db.store import FederationStore, make_engine
from cnf.errors import CNFError
from cnf.migration.engine import EngineSettings, MigrationEngine
from cnf.migration.model import MigrationEvent, MigrationRecord
from cnf.observability.logs import migration_log_context
from cnf.observability.metrics import CNFMetrics
from cnf.observability.telemetry import MigrationTelemetry
from cnf.observability.tracing import configure_tracing
from cnf.ports import ClusterDrivers, DriverDirectory, StaticDirectory
from cnf.sim.demo import DEMO_CLUSTERS, demo_fabric, sim_drivers
from cnf.sim.fabric import SimFabric
from cnf.tasks.runner import InProcessRunner

if TYPE_CHECKING:
    from cnf.db.models import ClusterRow
    from cnf.tasks.celery_runner import CeleryRunner

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "db" / "migrations"


def upgrade_schema(url: str, revision: str = "head") -> None:
    """Run ``alembic upgrade`` against ``url`` (blocking: call it in a thread from async code)."""
    import logging

    from alembic import command
    from alembic.config import Config

    logging.getLogger("alembic").setLevel(logging.WARNING)

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, revision)


class Agent:
    def __init__(self, config: CNFConfig, *, clock: Clock | None = None, fabric: SimFabric | None = None,
                 engine_settings: EngineSettings | None = None, install_global_tracing: bool = False) -> None:
        self.config = config
        self.install_global_tracing = install_global_tracing
        self.clock = clock or SystemClock()
        self.fabric = fabric
        self.engine_settings = engine_settings
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._master_tasks_started = False
        self.store: FederationStore
        self.service: FederationService
        self.runner: InProcessRunner | CeleryRunner
        self.election: Election
        self.directory: DriverDirectory
        self.peer_server: Any = None
        #: this cloud's own drivers (not the embedded default's): closed at stop
        self.own_drivers: ClusterDrivers | None = None
        self._known_clusters: set[str] = {config.cluster_id}
        self._attached: set[str] = set()

    # --- wiring ----------------------------------------------------------------------------------

    def database_url(self) -> str:
        url = self.config.database.url
        explicit = "database" in self.config.model_fields_set
        if self.config.embedded and not explicit:
            self._tmp = tempfile.TemporaryDirectory(prefix="cnf-embedded-")
            url = f"sqlite+aiosqlite:///{self._tmp.name}/cnf.sqlite"
        return url

    def _own_drivers(self) -> ClusterDrivers:
        """This agent's cloud: each port real or sim per ``drivers.*``; sim ports live in the sim world (private,
        or shared through ``sim.state_file``)."""
        if self.fabric is None:
            self.fabric = SimFabric(clock=self.clock, state_file=self.config.sim.state_file or None)
        self.fabric.replication_mbps = self.config.sim.replication_mbps
        cid, name = self.config.cluster_id, self.config.cluster_name
        with self.fabric.transaction() as world:
            if cid not in world.clusters:
                n = len(world.clusters) + 1
                world.add_cluster(cid, name=name, as_number=self.config.bgp.as_number,
                                  next_hop=self.config.bgp.next_hop or f"192.0.2.{n}")
                for h in (1, 2):
                    world.add_host(cid, f"compute-{h}.{name}")
                for v in range(1, self.config.sim.vms + 1):
                    vm_id = str(uuid.uuid5(uuid.UUID(cid), f"vm-{v}"))
                    world.add_vm(cid, vm_id, name=f"{name}-vm-{v}", host=f"compute-{1 + v % 2}.{name}",
                                 flavor="m1.small", ip=f"10.99.{n}.{10 + v}", cpu_pct=15.0 + 5 * v)
        from cnf.agent.own_cloud import own_cloud_drivers

        return own_cloud_drivers(self.config, self.clock, sim_drivers(self.fabric, cid))

    def _embedded_world(self) -> SimFabric:
        """The demo world; with ``sim.state_file`` a shared one (Celery workers act on it), seeded if empty."""
        if not self.config.sim.state_file:
            return demo_fabric(self.clock)
        fabric = SimFabric(clock=self.clock, state_file=self.config.sim.state_file)
        fabric.replication_mbps = self.config.sim.replication_mbps
        with fabric.transaction() as world:
            if not world.clusters:
                world._load(demo_fabric(self.clock)._dump())  # seed under the lock: first process wins
        return fabric

    def _build_directory(self) -> DriverDirectory:
        if self.config.embedded:
            if self.fabric is None:
                self.fabric = self._embedded_world()
            return StaticDirectory({cid: sim_drivers(self.fabric, cid) for cid in self.fabric.clusters})
        own = self.own_drivers = self._own_drivers()
        tls_cfg = self.config.tls
        if not tls_cfg.dir and not tls_cfg.allow_plaintext:
            return StaticDirectory({self.config.cluster_id: own})  # a cloud alone: no peers to reach
        from cnf.grpc.directory import PeerDirectory
        from cnf.grpc.epoch import FileEpochStore
        from cnf.grpc.server import PeerServer
        from cnf.grpc.tls import TlsFiles

        tls = TlsFiles.in_dir(tls_cfg.dir, self.config.cluster_id) if tls_cfg.dir else None
        Path(self.config.state_dir).mkdir(parents=True, exist_ok=True)
        self.peer_server = PeerServer(own, listen=self.config.cluster_grpc_addr, tls=tls,
                                      known_peers=lambda: self._known_clusters,
                                      epoch_store=FileEpochStore(Path(self.config.state_dir) / "peer-epoch"),
                                      allow_plaintext=tls_cfg.allow_plaintext)
        return PeerDirectory(local_cluster_id=self.config.cluster_id, tls=tls, epoch_provider=self._acting_epoch,
                             local=own, allow_plaintext=tls_cfg.allow_plaintext)

    async def _attach_peer(self, cluster_id: str, grpc_addr: str) -> bool:
        """Reach another cloud through its agent (CNFPeer); learns its AS and next hop from ``Describe``."""
        from cnf.grpc.directory import PeerDirectory

        if not isinstance(self.directory, PeerDirectory) or cluster_id == self.config.cluster_id:
            return False
        if cluster_id in self._attached:
            return True
        try:
            await self.directory.attach(cluster_id, grpc_addr)
        except CNFError as e:
            log.warning("peer_unreachable", peer=cluster_id, address=grpc_addr, error=e.message)
            return False
        self._attached.add(cluster_id)
        log.info("peer_attached", peer=cluster_id, address=grpc_addr)
        return True

    async def _reach_registered_peer(self, row: ClusterRow, epoch: int) -> None:
        """Attach to a registered cloud's agent; a cloud registered while its agent was down becomes ``active``.

        Why: ``cluster register`` stores ``unreachable`` when the peer did not answer, and migrations to a
        non-active cloud are refused (409). The master keeps trying, and the first successful attach is what
        turns the row active — otherwise a cloud whose agent started a second late would stay refused forever.
        """
        if not row.grpc_addr or row.id == self.config.cluster_id:
            return
        if row.id not in self._attached and not await self._attach_peer(row.id, row.grpc_addr):
            return
        if row.status == "unreachable":
            await self.store.upsert_cluster(epoch, id=row.id, status="active")
            log.info("decision", decision="cluster_active", cluster_id=row.id, reason="its agent answers now")

    def _build_election(self) -> Election:
        address = self.config.api.advertise_url or f"http://127.0.0.1:{self.config.api.port}"
        if not self.config.raft.etcd_endpoints:
            return SingleNodeElection(self.config.cluster_id, address, clock=self.clock)
        from cnf.agent.raft import EtcdElection

        return EtcdElection(cluster_id=self.config.cluster_id, address=address,
                            endpoints=self.config.raft.etcd_endpoints,
                            lease_ttl_s=self.config.raft.lease_ttl_s)

    async def start(self) -> None:
        url = self.database_url()
        await asyncio.to_thread(upgrade_schema, url)
        self.store = FederationStore(make_engine(url))
        self.directory = self._build_directory()
        self.election = self._build_election()
        engine = MigrationEngine(self.directory, self.clock, self.engine_settings)
        self.metrics = CNFMetrics(cluster_id=self.config.cluster_id, cluster_name=self.config.cluster_name,
                                  version=__version__)
        self.tracing = configure_tracing(cluster_id=self.config.cluster_id, cluster_name=self.config.cluster_name,
                                         install_global=self.install_global_tracing)
        self.telemetry = MigrationTelemetry(self.metrics, self.tracing, log_lifecycle=False)
        if self.config.tasks.runner == "celery":  # workers (cnf-worker) drive; the master reconciles
            from cnf.tasks.celery_runner import CeleryRunner

            self.runner = CeleryRunner(self.store, self.config, self._acting_epoch)
        else:
            self.runner = InProcessRunner(self.store, engine, self.clock, self._acting_epoch,
                                          observers=[self._observe, self.telemetry.observe])
        self.service = FederationService(config=self.config, store=self.store, engine=engine, runner=self.runner,
                                         directory=self.directory, election=self.election, clock=self.clock)
        self.service.on_register = self._on_register
        self.service.metrics = self.metrics
        self.service.fabric = self.fabric
        from cnf.agent.policy_loop import PolicyLoop

        self.policy_loop = PolicyLoop(self.service, interval_s=self.config.scheduler.interval_s)
        self.service.policy_loop = self.policy_loop
        await self.runner.start()
        if self.peer_server is not None:
            await self.peer_server.start()
        self._loops.append(asyncio.create_task(self._periodic_membership()))
        self.election.on_change(self._on_master_change)
        await self.election.start()
        if self.election.is_master():
            await self._become_master()

    async def stop(self) -> None:
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        await self.runner.stop()
        with contextlib.suppress(Exception):
            await self.election.stop()
        if self.peer_server is not None:
            await self.peer_server.stop()
        close = getattr(self.directory, "close", None)
        if close is not None:
            await close()
        await self._close_own_drivers()
        await self.store.close()
        self.tracing.shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()

    def _acting_epoch(self) -> int | None:
        return self.election.epoch() if self.election.is_master() else None

    # --- master duties ---------------------------------------------------------------------------

    def _on_master_change(self, info: MasterInfo | None) -> None:
        mine = info is not None and info.cluster_id == self.config.cluster_id
        self.metrics.set_master(mine, info.epoch if info is not None else 0)
        if not mine:
            self.telemetry.reset_in_flight()
        if info is not None and info.cluster_id == self.config.cluster_id and not self._master_tasks_started:
            self._loops.append(asyncio.create_task(self._become_master()))
        elif (info is None or info.cluster_id != self.config.cluster_id) and self._master_tasks_started:
            self._master_tasks_started = False
            log.info("decision", decision="stop_master_duties", reason="this agent is no longer the master")

    async def _become_master(self) -> None:
        if self._master_tasks_started:
            return
        self._master_tasks_started = True
        epoch = self.election.epoch()
        if epoch is None:
            self._master_tasks_started = False
            return
        log.info("decision", decision="master_duties", reason="elected master", epoch=epoch)
        try:
            await self.store.record_master(epoch, self.config.cluster_id)
            await self._register_known_clusters(epoch)
            for row in await self.store.list_clusters():  # reach every cloud before resuming its migrations
                await self._reach_registered_peer(row, epoch)
            await self.service.sync_inventory()
            resumed = await self.runner.resume_unfinished()
        except Exception as e:  # the database is briefly away, or we were fenced: retry while still master
            self._master_tasks_started = False
            log.warning("decision", decision="master_duties_deferred", reason=repr(e))
            await asyncio.sleep(1.0)
            if self.election.is_master():
                self._loops.append(asyncio.create_task(self._become_master()))
            return
        if resumed:
            log.info("decision", decision="resume_migrations", reason="unfinished migrations found at takeover",
                     migrations=resumed)
        self._loops.append(asyncio.create_task(self._periodic_inventory()))
        self._loops.append(asyncio.create_task(self.policy_loop.run()))

    async def _close_own_drivers(self) -> None:
        """Close this cloud's real drivers (Ceph worker's image handles, QMP clients, vtysh sessions).

        Why: a Ceph worker that exits with images open leaves its watch and, after a promote, the exclusive lock
        registered until the OSD expires it (~30 s): the guest's next write at that site and ``rbd rm`` wait for the
        dead owner. QEMU processes keep running (``QemuHypervisor.close`` only disconnects).
        """
        d = self.own_drivers
        if d is None:
            return
        for port in (d.storage, d.hypervisor, d.bgp, d.cloud):
            close = getattr(port, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    async def _register_known_clusters(self, epoch: int) -> None:
        known = {c.id for c in await self.store.list_clusters()}
        if self.config.embedded and self.fabric is not None:
            for cid, name, asn in DEMO_CLUSTERS:
                if cid in self.fabric.clusters and cid not in known:
                    await self.store.upsert_cluster(epoch, id=cid, name=name, grpc_addr=f"127.0.0.1:{50050 + asn % 10}",
                                                    auth_url=f"sim://{name}", bgp_as=asn, region="RegionOne",
                                                    credentials={}, status="active")
        elif self.config.cluster_id not in known:
            await self.store.upsert_cluster(epoch, id=self.config.cluster_id, name=self.config.cluster_name,
                                            grpc_addr=self.config.cluster_grpc_addr, auth_url="",
                                            bgp_as=self.config.bgp.as_number, region="RegionOne",
                                            api_url=self.config.api.advertise_url, credentials={}, status="active")

    async def _periodic_inventory(self, every_s: float = 5.0) -> None:
        while self._master_tasks_started:
            await asyncio.sleep(every_s)
            try:
                if self.fabric is not None:
                    with self.fabric.transaction() as world:
                        world.drift_load()
                await self.service.sync_inventory()
            except CNFError as e:
                log.warning("inventory_sync_failed", error=e.message)

    async def _periodic_membership(self, every_s: float = 1.0) -> None:
        """Every agent: learn the federation's cluster ids (who may call us); the master attaches to peers."""
        while True:
            try:
                rows = await self.store.list_clusters()
                self._known_clusters = {r.id for r in rows} | {self.config.cluster_id}
                epoch = self.election.epoch()
                if self.election.is_master() and epoch is not None:
                    for r in rows:
                        await self._reach_registered_peer(r, epoch)
            except Exception as e:  # the database or a peer is briefly away: try again next round
                log.warning("membership_refresh_failed", error=repr(e))
            await asyncio.sleep(every_s)

    async def _on_register(self, *, cluster_id: str, name: str, auth_url: str, bgp_as: int,
                           credentials: dict[str, Any], grpc_addr: str = "") -> str:
        """A new cluster. Embedded default: ``sim://`` URLs create a sim cloud. Federation: reach its agent."""
        if self.config.embedded and auth_url.startswith("sim://") and self.fabric is not None:
            with self.fabric.transaction() as world:
                if cluster_id not in world.clusters:
                    n = len(world.clusters) + 1
                    world.add_cluster(cluster_id, name=name, as_number=bgp_as, next_hop=f"192.0.2.{n}")
                    for h in (1, 2):
                        world.add_host(cluster_id, f"compute-{h}.{name}")
            if isinstance(self.directory, StaticDirectory):
                self.directory.add(sim_drivers(self.fabric, cluster_id))
            return "active"
        self._known_clusters.add(cluster_id)
        if cluster_id == self.config.cluster_id:
            return "active"  # this agent's own cloud: its drivers are local, there is no peer to reach
        if grpc_addr and await self._attach_peer(cluster_id, grpc_addr):
            return "active"
        return "unreachable"

    # --- observation -----------------------------------------------------------------------------

    def _observe(self, rec: MigrationRecord, events: Sequence[MigrationEvent]) -> None:
        with migration_log_context(rec):
            for e in events:
                log.info(e.kind, message=e.message, phase=e.phase, step=e.step, state=str(rec.state),
                         **{k: v for k, v in e.data.items() if k in ("duration_ms", "reason", "policy")})
