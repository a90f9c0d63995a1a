"""The e2e lab's live migration driven through the product: two ``cnf-agent`` processes, REST, mTLS gRPC.

Why: ``lab.e2e`` runs ``MigrationEngine`` inside the lab's process; an operator runs two agents (one per cloud)
and asks one of them over REST. This module starts that federation next to a running ``E2ELab`` and measures the
same migration with the same instruments (probe, serial tails, route watch, taps), so the two figures compare.

What runs (all started here, ended here by PID; the e2e lab's parts are reused as they are):

* a 3-member etcd (``lab.etcd``) for the master election, a throwaway PostgreSQL database (``lab.postgres``);
* one ``python -m cnf.main --config <file>`` per cloud (``lab.federation`` ``LoopbackAgent``; certificates from
  ``cnf.manage``, mTLS gRPC between the agents), by default (``controllers="netns"``) inside its cloud's controller
  network namespace on the fabric, the shared services reached through a relay and the QEMUs it spawns kept in the
  root namespace by a wrapper (``lab.controller_ns``); ``controllers="loopback"``: on loopback in the lab's own
  namespace. Each agent has its cloud's
  real drivers, chosen by config: ``storage`` = that site's Ceph (``ceph:``), ``bgp`` = that cloud's FRR router,
  the route server as observer (``bgp:``), ``hypervisor`` = QEMU with runtime_dir ``<lab>/qemu/<cloud>`` - the
  directory the lab booted the guest in, so the source agent adopts the running QEMU (the lab's own driver for it
  is closed: one QMP client per domain) - and the guest NIC's tap backend (``hypervisor.extra_args``);
* ``cloud``: with an ``OpenStackLab`` (``openstack=``; the tests pass the session's, the CLI takes the one named by
  ``CNF_LAB_OPENSTACK_REUSE``) ``drivers.cloud: real`` + ``openstack:`` = that cloud's Keystone (admin) and the lab's
  receiver options: cloud a is the OpenStack lab's first cloud, b its second. Before the agents start, the guest
  gets its record in the Nova of the cloud it runs in (``lab.e2e_nova``: tagged ``cnf-vm-e2e-vm1``, metadata
  ``cnf_vm_id``, so CNF's id of it is the name the lab booted QEMU under). Without one: ``drivers.cloud: sim`` on
  a shared state file in which the lab registers the VM in the cloud it runs in;
* the task runner: ``tasks="celery"`` (default) starts a private ``redis-server`` (``lab.redis``) as the broker and
  one ``cnf-worker`` per agent with that agent's config (``lab.federation.CeleryWorker``): the workers drive every
  step and reach both clouds, their own included, through the agents over CNFPeer. ``inprocess`` (or
  ``CNF_E2E_AGENTS_TASKS=inprocess`` for the CLI): the master agent drives the migration itself;
* the migration: ``POST /v1/clusters`` (both clouds, with their Keystone URL and gRPC address),
  ``POST /v1/vms/<vm>/live-migrate`` (or, ``via="osc"``, the operator's ``openstack cnf vm live-migrate --wait``
  as a subprocess), ``GET /v1/migrations/<id>`` polled until terminal. ``lab.e2e_federation`` keeps these agents
  running between CLI calls (``python -m lab.e2e up``) and rebuilds an ``AgentClouds`` from its record.

The lab cannot see the agents' QMP events, so the STOP->RESUME pause is the one the product computed from QEMU's
events (``downtime.guest_pause_ms``); the heartbeat pause, the blackout and the total are the lab's own. Who drove
the steps is read from the processes' logs afterwards (``AgentClouds.who_drove``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from cnf.clock import SystemClock
from cnf.migration.model import MigrationEvent, MigrationState, StepRecord
from cnf.sim.fabric import SimFabric
from lab.ceph import POOL
from lab.controller_ns import Controller, Relay, attach_root, detach_root, plan_controllers, write_qemu_wrapper
from lab.e2e import (
    CLUSTERS,
    DISK_MS,
    HB_MS,
    HOST_ADDRESSES,
    IMAGE_MB,
    PREFIX,
    RAM_MB,
    VM_ID,
    E2EError,
    E2ELab,
    check_site_record,
    domain_qemu_pid,
)
from lab.e2e_net import VM_IP
from lab.e2e_nova import agent_openstack_section, clouds_of, openstack_from_env, place_vm
from lab.e2e_probe import kernel_errors
from lab.e2e_report import figures
from lab.e2e_watch import MigrationWatch
from lab.etcd import EtcdCluster
from lab.federation import CeleryWorker, LoopbackAgent, plan_federation, write_agent_config
from lab.loopback import free_port
from lab.postgres import PG_ADMIN_DSN, async_url, pg_admin
from lab.redis import RedisServer

#: agent (cluster) names per lab cloud
NAMES = {"a": "lab-a", "b": "lab-b"}
TasksMode = Literal["celery", "inprocess"]
#: where the agents and workers run: each in its cloud's controller network namespace (``lab.controller_ns``:
#: agent-to-agent gRPC across the fabric) or all in the lab's own namespace on loopback
ControllersMode = Literal["netns", "loopback"]
#: how the lab asks for the move: REST (``POST /v1/vms/<vm>/live-migrate``) or the operator's CLI
Via = Literal["rest", "osc"]
#: the ``openstack`` command of the venv the lab runs in (python-openstackclient + CNF's plugin)
OPENSTACK_CLI = Path(sys.executable).with_name("openstack")
#: ``CNF_E2E_AGENTS_TASKS=inprocess``: the CLI's agents drive the migration themselves (no Redis, no workers)
TASKS_ENV = "CNF_E2E_AGENTS_TASKS"


def _say(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class AgentRecord:
    """What ``lab.e2e_report.figures`` reads of a migration record, rebuilt from ``GET /v1/migrations/<id>``."""

    state: MigrationState
    error: dict[str, Any] | None
    context: dict[str, Any]
    steps: list[StepRecord]

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> AgentRecord:
        down = view.get("downtime") or {}
        return cls(state=MigrationState(view["state"]), error=view.get("error"),
                   context={k: v for k, v in down.items() if v is not None},
                   steps=[StepRecord.from_dict(s) for s in view.get("steps", [])])


@dataclass
class AgentClouds:
    """Two agents for the lab's clouds a and b, their etcd and their database (see the module docstring)."""

    lab: E2ELab
    base: Path
    #: the real OpenStack lab (``lab.openstack.OpenStackLab``) whose two clouds are a and b; None: the sim cloud
    openstack: Any = None
    #: who drives the migration: ``celery`` (a private redis-server, one ``cnf-worker`` per agent) or ``inprocess``
    tasks: TasksMode = "celery"
    agents: dict[str, LoopbackAgent] = field(default_factory=dict)
    workers: dict[str, CeleryWorker] = field(default_factory=dict)
    redis: RedisServer | None = None
    etcd: EtcdCluster | None = None
    database: str = ""
    nova_boot_s: float | None = None
    #: ``netns``: each cloud's agent and worker in its controller namespace; ``loopback``: in the lab's namespace
    controllers: ControllersMode = "netns"
    namespaces: dict[str, Controller] = field(default_factory=dict)
    relays: dict[str, Relay] = field(default_factory=dict)
    #: QEMU wrapper per cloud (``hypervisor.binary``): QEMU stays in the root namespace whoever spawns it
    qemu_wrappers: dict[str, Path] = field(default_factory=dict)

    # --- lifecycle -------------------------------------------------------------------------------------------

    @classmethod
    def start(cls, lab: E2ELab, *, openstack: Any = None, tasks: TasksMode = "celery",
              controllers: ControllersMode = "netns", within_s: float = 90.0) -> AgentClouds:
        """Start etcd, the database, Redis + workers (``tasks="celery"``) and both agents, register both clouds; on
        failure stop what was started. ``openstack``: an ``OpenStackLab`` whose Nova of each cloud the agents use
        (``drivers.cloud: real``). ``controllers="netns"``: each cloud's agent and worker in its controller
        namespace on the fabric (``lab.controller_ns``), ``"loopback"``: in the lab's namespace."""
        base = lab.root / "agents"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        fed = cls(lab=lab, base=base, openstack=openstack, tasks=tasks, controllers=controllers)
        try:
            fed._start(within_s)
        except BaseException:
            fed.stop()
            raise
        return fed

    def _start(self, within_s: float) -> None:
        t0 = time.monotonic()
        self.etcd = EtcdCluster(3, base_dir=self.base / "etcd")
        self.etcd.start()
        self.database = f"cnf_e2e_{secrets.token_hex(6)}"
        asyncio.run(pg_admin(f'CREATE DATABASE "{self.database}"'))
        planned = plan_federation(self.base, names=tuple(NAMES[c] for c in CLUSTERS))
        self.agents = dict(zip(CLUSTERS, planned, strict=True))
        for cid, agent in self.agents.items():
            agent.as_number = self.lab.router(cid).as_number
        if self.controllers == "netns":
            self._controller_namespaces()
        if self.openstack is None:
            self._seed_world()
        else:
            t1 = time.monotonic()
            nova_id = place_vm(self.openstack, self.lab.where)
            self.nova_boot_s = round(time.monotonic() - t1, 2)
            t0 += self.nova_boot_s  # Nova's boot (its own deadline) is not the agents' start-up budget
            _say(f"[agents] {VM_ID} is Nova server {nova_id} in cloud {self.lab.where} "
                 f"(ACTIVE, placed in {self.nova_boot_s:.1f} s)")
        tasks: dict[str, Any] = {}
        if self.tasks == "celery":
            (self.base / "redis").mkdir()
            self.redis = RedisServer(port=free_port(), workdir=self.base / "redis")
            self.redis.start()
            tasks = {"tasks": {"runner": "celery", "broker_url": self.redis.url}}
        if self.controllers == "netns":
            self._start_relays()
        for cid, agent in self.agents.items():
            write_agent_config(agent, self.base, etcd_endpoints=self.etcd.endpoints, lease_ttl_s=5.0,
                               database_url=async_url(self.database), sim_vms=0,
                               extra={**self._real_drivers(cid), **tasks})
        for agent in self.agents.values():
            agent.start()
        if self.tasks == "celery":
            self.workers = {cid: CeleryWorker(name=f"worker-{a.name}", config=a.config, namespace=a.namespace,
                                              log=self.base / f"worker-{a.name}.log") for cid, a in self.agents.items()}
            for w in self.workers.values():
                w.start()
        self._wait(lambda: all(a.healthy() for a in self.agents.values()), t0 + within_s, "both agents healthy")
        self._wait(lambda: all(w.ready() for w in self.workers.values()), t0 + within_s, "both Celery workers ready")
        for cid, agent in self.agents.items():
            body = {"id": agent.cluster_id, "name": agent.name, "auth_url": self._auth_url(cid),
                    "grpc_addr": agent.grpc_addr, "bgp_as": agent.as_number}
            self._wait(lambda body=body: self._post(self._any().url + "/v1/clusters", body).status_code
                       in (201, 409), t0 + within_s, f"cluster register {body['name']}")
        self._wait(self._both_active, t0 + within_s, "both clouds registered and active")
        # a cloud that turned active at a later attach enters the inventory at the master's next sync (every 5 s)
        self._wait(self._vm_known, t0 + within_s, f"{VM_ID} in the federation's inventory")

    def _controller_namespaces(self) -> None:
        """Each cloud's controller namespace on the fabric + its link to the root namespace, and the QEMU wrapper
        that keeps a QEMU the agent spawns in the root namespace (``lab.controller_ns``)."""
        t0 = time.monotonic()
        token = self.lab.net_token
        root_netns = attach_root(token)
        rs = self.lab.frr.route_server.namespace
        for ctl in plan_controllers(token, CLUSTERS):
            self.namespaces[ctl.cid] = ctl
            ctl.up(rs)
            agent = self.agents[ctl.cid]
            agent.namespace, agent.api_host, agent.peer_host = ctl.namespace, ctl.api_address, ctl.fabric_address
            self.qemu_wrappers[ctl.cid] = write_qemu_wrapper(self.base / f"qemu-on-host-{ctl.cid}", root_netns)
        where = ", ".join(f"{c.namespace} (fabric {c.fabric_address}, REST via {c.api_address})"
                          for c in self.namespaces.values())
        _say(f"[agents] controller namespaces {where} up in {time.monotonic() - t0:.1f} s")

    def _relay_ports(self, cid: str) -> list[int]:
        """The root namespace's 127.0.0.1 ports controller ``cid`` needs: etcd, PostgreSQL, Redis, both Ceph sites
        (mons + messenger range: the storage driver reads the peer site's mirror snapshots itself, with the pool's
        mirror peer credentials) and its own OpenStack cloud's services (not the other cloud's: that one it reaches
        only through the other agent)."""
        assert self.etcd is not None
        ports = [int(e.rsplit(":", 1)[1]) for e in self.etcd.endpoints]
        ports.append(urlsplit(PG_ADMIN_DSN).port or 5432)
        if self.redis is not None:
            ports.append(self.redis.port)
        for site in (self.lab.site(c) for c in CLUSTERS):
            ports += [site.mon_v1, site.mon_v2, *range(site.msgr_min, site.msgr_min + 40)]
        if self.openstack is not None:
            p = clouds_of(self.openstack)[cid].ports
            ports += [p.keystone, p.placement, p.nova, p.glance, p.neutron]
        return ports

    def _start_relays(self) -> None:
        t0 = time.monotonic()
        for cid, ctl in self.namespaces.items():
            relay = Relay(namespace=ctl.namespace, ports=self._relay_ports(cid), log=self.base / f"relay-{cid}.log",
                          pid_file=self.base / f"relay-{cid}.pid")
            self.relays[cid] = relay
            relay.start()
        counts = ", ".join(f"{r.namespace}: {len(set(r.ports))} ports, pid {r.proc.pid if r.proc else '-'}"
                           for r in self.relays.values())
        _say(f"[agents] relays to the shared services ({counts}) up in {time.monotonic() - t0:.1f} s")

    def _seed_world(self) -> None:
        """The shared sim world (Nova's stand-in): both clouds, one host each, the VM in the cloud it runs in."""
        fabric = SimFabric(clock=SystemClock(), state_file=str(self.base / "sim-world.json"))
        with fabric.transaction() as world:
            for cid, agent in self.agents.items():
                world.add_cluster(agent.cluster_id, name=agent.name, as_number=agent.as_number,
                                  next_hop=HOST_ADDRESSES[cid])
                world.add_host(agent.cluster_id, f"qemu-{cid}")
                world.cluster(agent.cluster_id).flavors[f"lab.{RAM_MB}"] = (1, RAM_MB)
            src = self.lab.where
            world.add_vm(self.agents[src].cluster_id, VM_ID, name=VM_ID, host=f"qemu-{src}", flavor=f"lab.{RAM_MB}",
                         ip=VM_IP, image_size_mb=IMAGE_MB)

    def _auth_url(self, cid: str) -> str:
        if self.openstack is None:
            return f"sim://{self.agents[cid].name}"
        return str(clouds_of(self.openstack)[cid].auth_url)

    def _real_drivers(self, cid: str) -> dict[str, Any]:
        """The config sections that give agent ``cid`` the lab cloud's real storage, BGP, hypervisor and (with
        ``openstack``) Keystone + Nova."""
        lab, site, router = self.lab, self.lab.site(cid), self.lab.router(cid)
        sc = site.driver_config()
        cloud: dict[str, Any] = {}
        if self.openstack is not None:
            cloud = {"openstack": agent_openstack_section(clouds_of(self.openstack)[cid])}
        return {
            **cloud,
            "drivers": {"cloud": "sim" if self.openstack is None else "real", "storage": "real", "bgp": "real",
                        "hypervisor": "real"},
            "ceph": {"pool": sc["pool"], "conf": sc["conf_path"], "client_name": sc["client_name"],
                     "keyring": sc["keyring"], "cluster_name": sc["cluster_name"]},
            "bgp": {"as_number": router.as_number, "next_hop": lab.next_hop(cid), "vtysh_pathspace": router.pathspace,
                    "observer_pathspace": lab.frr.route_server.pathspace},
            "hypervisor": {"runtime_dir": str(lab.root / "qemu" / cid), "accel": "tcg", "kernel": lab.kernel,
                           **({"binary": str(self.qemu_wrappers[cid])} if cid in self.qemu_wrappers else {}),
                           "initrd": lab.initrd, "append": lab.append,
                           "disk_template": f"rbd:{POOL}/{{image}}:conf={site.conf}:id=admin",
                           "listen_address": "127.0.0.1", "extra_args": list(lab.net.qemu_args(cid))},
        }

    def stop(self) -> None:
        """SIGTERM the workers and both agents (SIGKILL after a grace period), stop Redis and etcd, drop the
        database. QEMU keeps running."""
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                worker.stop()
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        for relay in self.relays.values():
            with contextlib.suppress(Exception):
                relay.stop()
        for ctl in self.namespaces.values():
            with contextlib.suppress(Exception):
                ctl.down()
        if self.namespaces:
            with contextlib.suppress(Exception):
                detach_root(self.lab.net_token)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.stop()
        if self.etcd is not None:
            with contextlib.suppress(Exception):
                self.etcd.stop()
        if self.database:
            with contextlib.suppress(Exception):
                asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))

    # --- REST ------------------------------------------------------------------------------------------------

    def _any(self) -> LoopbackAgent:
        return next(a for a in self.agents.values() if a.alive())

    @staticmethod
    def _post(url: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(url, json=body, timeout=30)

    def _both_active(self) -> bool:
        r = httpx.get(self._any().url + "/v1/clusters", timeout=5)
        rows = r.json().get("clusters", []) if r.status_code == 200 else []
        active = {c["id"] for c in rows if c.get("status") == "active"}
        return all(a.cluster_id in active for a in self.agents.values())

    def _vm_known(self, cid: str | None = None) -> bool:
        """The VM is in the federation's inventory (``cid``: listed in that cloud)."""
        params = {"cluster_id": self.agents[cid].cluster_id} if cid else None
        r = httpx.get(self._any().url + "/v1/vms", params=params, timeout=5)
        return r.status_code == 200 and any(v.get("id") == VM_ID for v in r.json().get("vms", []))

    def _wait(self, predicate: Any, deadline: float, what: str) -> None:
        last: Any = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (httpx.HTTPError, ValueError, KeyError, StopIteration) as exc:
                last = exc
            time.sleep(0.2)
        logs = {a.name: a.log for a in self.agents.values()} | {w.name: w.log for w in self.workers.values()}
        tails = {name: log.read_text(errors="replace")[-2000:] for name, log in logs.items() if log.exists()}
        raise E2EError(f"timed out waiting for {what} (last error: {last!r}); agent and worker logs: {tails}")

    # --- one migration ---------------------------------------------------------------------------------------

    async def migrate(self, *, downtime_limit_ms: int | None = None, deadline_s: float = 300.0,
                      fail_before_promote: bool = False, via: Via = "rest") -> dict[str, Any]:
        """Live-migrate the guest to the other cloud through the agents' REST API; returns the lab's figures.

        ``via="osc"``: the move is requested the operator's way, by running the real CLI as a subprocess
        (``openstack --os-auth-type none --os-endpoint <agent> cnf vm live-migrate <vm> --to <cloud> --wait -f
        json``); the lab's instruments watch as usual, the migration view is then read over REST for the figures,
        and ``fig["cli"]`` holds the CLI's argv, exit code, stdout, stderr and wall time. Not with
        ``fail_before_promote`` (the kill needs the migration id while the CLI still waits).

        ``fail_before_promote``: the lab kills the destination agent's QEMU (found by its pidfile in the
        destination's runtime_dir) as soon as ``GET /v1/migrations/<id>`` shows the migration in the cutover before
        the point of no return (``kill_window``); the product must give the migration up and keep the VM at the
        source. Can be called again on the same agents: the next run moves the VM from wherever it is then.
        """
        if via == "osc" and fail_before_promote:
            raise E2EError("the failure run needs the migration id while it runs: via rest only")
        lab = self.lab
        src = lab.where
        dst = next(c for c in CLUSTERS if c != src)
        # the master's inventory follows a finished move at its next sync: ask only once it has the VM at src
        await asyncio.to_thread(self._wait, lambda: self._vm_known(src), time.monotonic() + 30.0,
                                f"{VM_ID} listed in cloud {src}")
        serial = {cid: lab.root / "qemu" / cid / VM_ID / "serial.log" for cid in CLUSTERS}
        before_errors = kernel_errors(serial[src])
        lab.runs += 1
        body: dict[str, Any] = {"dest_cluster_id": self.agents[dst].cluster_id}
        if downtime_limit_ms is not None:
            body["options"] = {"downtime_limit_ms": downtime_limit_ms}
        watch = MigrationWatch(probe=lab.probe(f"agents{lab.runs}"), serials=serial,
                               route_namespace=lab.frr.route_server.namespace, prefix=PREFIX, net=lab.net,
                               clusters=CLUSTERS, src=src, dst=dst,
                               next_hops={cid: lab.next_hop(cid) for cid in CLUSTERS}, hb_ms=HB_MS,
                               disk_ms=DISK_MS)
        async with watch:
            async with httpx.AsyncClient(base_url=self._any().url, timeout=30) as http:
                watch.started()
                cli: dict[str, Any] | None = None
                if via == "osc":
                    cli = await run_osc_live_migrate(self._any().url, self.agents[dst].name, downtime_limit_ms,
                                                     deadline_s)
                    mid = cli["migration_id"]
                    if not mid:
                        raise E2EError(f"the CLI gave no migration id: {json.dumps(cli)[:1500]}")
                else:
                    r = await http.post(f"/v1/vms/{VM_ID}/live-migrate", json=body)
                    if r.status_code != 202:
                        raise E2EError(f"live-migrate refused: {r.status_code} {r.text[:500]}")
                    mid = r.json()["id"]
                injected: dict[str, Any] = {}
                if fail_before_promote:
                    injected = await _kill_in_window(http, mid, lab.root / "qemu" / dst / VM_ID, deadline_s)
                view = await _poll_terminal(http, mid, deadline_s)
            rec = AgentRecord.from_view(view)
            if "at" in injected:
                rec.context["e2e_injected_at"] = injected["at"]
            await watch.finished(dst if rec.state == MigrationState.COMPLETED else src)
        ob = watch.observation()
        events = [MigrationEvent(ts=e["ts"], kind=e["kind"], message=e["message"], phase=e.get("phase", ""),
                                 step=e.get("step", "")) for e in view.get("events", [])]
        fig = figures(rec, events, ob)  # type: ignore[arg-type]  # AgentRecord has the fields figures reads
        # the product's STOP -> RESUME pause from QEMU's events (the lab holds no QMP client of the agents' QEMUs)
        fig["guest_pause_ms_stop_resume"] = rec.context.get("guest_pause_ms")
        await asyncio.to_thread(check_site_record, lab, fig["integrity"])
        if before_errors:
            fig["guest_kernel_errors"] = [f"before: {e}" for e in before_errors] + fig["guest_kernel_errors"]
        fig["mode"] = "agents"
        fig["migration_id"] = mid
        fig["downtime_limit_ms"] = (view.get("options") or {}).get("downtime_limit_ms")
        fig["failure_injected"] = fail_before_promote
        if fail_before_promote:
            fig["injection"] = injected
        fig["tasks"] = self.tasks
        fig["via"] = via
        if cli is not None:
            fig["cli"] = cli
        fig["driven_by"] = self.who_drove(mid)
        if rec.state == MigrationState.COMPLETED:
            lab.where = dst
        lab.save()
        return fig


    def who_drove(self, migration_id: str) -> dict[str, Any]:
        """From the processes' own logs: the Celery tasks each worker finished for this migration, the engine steps
        the agents ran themselves (``step_started``: the in-process runner), and per cloud the operations its agent
        served over CNFPeer (a worker reaches every cloud, its own included, that way)."""
        tasks_done = {w.name: sum(1 for e in w.log_events() if e.get("event") == "task_done"
                                  and e.get("migration_id") == migration_id) for w in self.workers.values()}
        agent_steps = {a.name: sum(1 for e in a.log_events() if e.get("event") == "step_started")
                       for a in self.agents.values()}
        served = {cid: sorted({str(e.get("operation")) for e in a.log_events() if e.get("event") == "peer_call"})
                  for cid, a in self.agents.items()}
        return {"worker_tasks_done": tasks_done, "agent_steps_started": agent_steps, "peer_calls": served}


#: the cutover steps during which the destination QEMU is killed: the source is paused in pre-switchover (its
#: pre-copy is done) and demoted or demoting, the destination not promoted yet (the point of no return)
KILL_WINDOW = ("cutover.demote_source", "cutover.await_demotion", "cutover.promote_destination")


def kill_domain_qemu(domain_dir: Path) -> int | None:
    """SIGKILL the QEMU of a domain directory an agent's QemuHypervisor made (its ``pid`` file), as a crash would.

    Returns the PID killed, None when no such QEMU ran (``domain_qemu_pid``: a reused PID is left alone).
    """
    pid = domain_qemu_pid(domain_dir)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    return pid


async def _kill_in_window(http: httpx.AsyncClient, mid: str, domain_dir: Path, deadline_s: float) -> dict[str, Any]:
    """Poll the migration every 10 ms; in ``KILL_WINDOW`` before the promote started, kill the destination QEMU.

    Why from outside and by the REST view: the agents (or their workers) drive the steps, the lab cannot stop
    between two of them as it does in-process. Demote + await-demotion take ~100-200 ms here (plus a task hop
    each), a poll takes ~10-30 ms: the kill lands before the promote. Returns what was seen when killing
    (``step``, ``promote_status``, ``at``, ``pid``) or, if the window was missed, ``missed`` with the view's step.
    """
    def kill_or_stop(view: dict[str, Any]) -> dict[str, Any] | None:
        promote: dict[str, Any] = next((st for st in view.get("steps", []) if st["name"] == KILL_WINDOW[-1]), {})
        if MigrationState(view["state"]).terminal or view.get("point_of_no_return_passed") \
                or promote.get("status") not in (None, "pending"):
            return {"missed": view.get("step"), "state": view["state"]}
        if view.get("step") in KILL_WINDOW:
            return {"step": view["step"], "promote_status": promote.get("status"), "at": time.time(),
                    "pid": kill_domain_qemu(domain_dir)}
        return None

    return await _poll_view(http, mid, kill_or_stop, every_s=0.01, deadline_s=deadline_s,
                            what="never reached the cutover")


async def _poll_terminal(http: httpx.AsyncClient, mid: str, deadline_s: float) -> dict[str, Any]:
    """``GET /v1/migrations/<id>`` every 50 ms until the state is terminal (``E2EError`` after ``deadline_s``)."""
    return await _poll_view(http, mid, lambda v: v if MigrationState(v["state"]).terminal else None, every_s=0.05,
                            deadline_s=deadline_s, what="not terminal")


async def _poll_view(http: httpx.AsyncClient, mid: str, until: Callable[[dict[str, Any]], dict[str, Any] | None], *,
                     every_s: float, deadline_s: float, what: str) -> dict[str, Any]:
    """``GET /v1/migrations/<id>`` every ``every_s`` until ``until(view)`` returns a result (``E2EError`` naming
    ``what`` and the last view after ``deadline_s``); a failed request is polled again."""
    end = time.monotonic() + deadline_s
    view: dict[str, Any] = {}
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            r = await http.get(f"/v1/migrations/{mid}")
            if r.status_code == 200:
                view = r.json()
                result = until(view)
                if result is not None:
                    return result
        await asyncio.sleep(every_s)
    raise E2EError(f"migration {mid} {what} in {deadline_s:.0f} s: {json.dumps(view)[:800]}")


async def run_osc_live_migrate(endpoint: str, dest: str, downtime_limit_ms: int | None,
                               deadline_s: float) -> dict[str, Any]:
    """Run ``openstack cnf vm live-migrate <vm> --to <dest> --wait -f json`` against ``endpoint`` (no Keystone).

    Returns the argv, ``exit_code`` (0: the migration completed; 1 with a reason on stderr otherwise), ``stdout``
    (the final migration as JSON), ``stderr`` (the per-phase progress lines), ``wall_s``, and from the JSON
    ``migration_id`` and ``state`` (None when stdout is not the expected JSON)."""
    argv = [str(OPENSTACK_CLI), "--os-auth-type", "none", "--os-endpoint", endpoint, "cnf", "vm", "live-migrate",
            VM_ID, "--to", dest, "--wait", "--wait-timeout", str(int(deadline_s)), "-f", "json"]
    if downtime_limit_ms is not None:
        argv += ["--downtime-limit", str(downtime_limit_ms)]
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=deadline_s + 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise E2EError(f"`{' '.join(argv)}` did not return in {deadline_s + 60:.0f} s") from None
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    shown: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        shown = json.loads(stdout) if stdout.strip().startswith("{") else {}
    return {"argv": argv, "exit_code": proc.returncode, "wall_s": round(time.monotonic() - t0, 2),
            "stdout": stdout[-4000:], "stderr": stderr[-4000:], "migration_id": shown.get("id"),
            "state": shown.get("state")}


def run_migration(fed: AgentClouds, *, downtime_limit_ms: int | None = None,
                  fail_before_promote: bool = False, via: Via = "rest") -> dict[str, Any]:
    """One migration on running agents (any number of them one after the other); the figures + which cloud.

    ``via``: ``rest`` (the lab's own REST calls) or ``osc`` (the operator's ``openstack cnf vm live-migrate
    --wait``, see ``AgentClouds.migrate``)."""
    t1 = time.monotonic()
    fig = asyncio.run(fed.migrate(downtime_limit_ms=downtime_limit_ms, fail_before_promote=fail_before_promote,
                                  via=via))
    cli = f", CLI exit {fig['cli']['exit_code']} in {fig['cli']['wall_s']} s" if "cli" in fig else ""
    _say(f"[agents] migration {fig['from']}->{fig['to']} {fig['state']} (total {fig['total_s']} s{cli}), measured "
         f"in {time.monotonic() - t1:.1f} s")
    fig["cloud"] = "sim" if fed.openstack is None else "openstack"
    fig["nova_boot_s"] = fed.nova_boot_s
    return fig


def migrate_through_agents(lab: E2ELab, *, downtime_limit_ms: int | None = None, openstack: Any = None,
                           tasks: TasksMode | None = None, fail_before_promote: bool = False,
                           via: Via = "rest", controllers: ControllersMode = "netns") -> dict[str, Any]:
    """Start the two agents, migrate once through them, stop them; returns the figures (+ ``agents_up_s``).

    ``openstack``: the ``OpenStackLab`` whose clouds are a and b (the agents' cloud port is its Nova); None: the one
    named by ``CNF_LAB_OPENSTACK_REUSE``, else the sim cloud (``fig["cloud"]`` says which). ``tasks``: ``celery``
    (default) or ``inprocess``; None: ``CNF_E2E_AGENTS_TASKS``, else celery. ``controllers``: as
    ``AgentClouds.start``."""
    openstack = openstack if openstack is not None else openstack_from_env()
    mode: TasksMode = tasks or ("inprocess" if os.environ.get(TASKS_ENV) == "inprocess" else "celery")
    t0 = time.monotonic()
    fed = AgentClouds.start(lab, openstack=openstack, tasks=mode, controllers=controllers)
    up_s = round(time.monotonic() - t0, 2)
    runner = "Redis + 2 Celery workers, " if mode == "celery" else ""
    _say(f"[agents] etcd x3, PostgreSQL, {runner}2 agents up and both clouds registered in {up_s:.1f} s "
         f"({fed.base})")
    try:
        fig = run_migration(fed, downtime_limit_ms=downtime_limit_ms, fail_before_promote=fail_before_promote,
                            via=via)
    finally:
        t2 = time.monotonic()
        fed.stop()
        _say(f"[agents] agents, workers, Redis, etcd and the database stopped in {time.monotonic() - t2:.1f} s")
    fig["agents_up_s"] = up_s
    return fig
