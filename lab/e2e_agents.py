"""The e2e lab's live migration driven through the product: two ``cnf-agent`` processes, REST, mTLS gRPC.

Why: ``lab.e2e`` runs ``MigrationEngine`` inside the lab's process; an operator runs two agents (one per cloud)
and asks one of them over REST. This module starts that federation next to a running ``E2ELab`` and measures the
same migration with the same instruments (probe, serial tails, route watch, taps), so the two figures compare.

What runs (all started here, ended here by PID; the e2e lab's parts are reused as they are):

* a 3-member etcd (``lab.etcd``) for the master election, a throwaway PostgreSQL database (``lab.postgres``);
* one ``python -m cnf.main --config <file>`` per cloud on loopback in the root namespace (``lab.federation``
  ``LoopbackAgent``; certificates from ``cnf.manage``, mTLS gRPC between the agents). Each agent has its cloud's
  real drivers, chosen by config: ``storage`` = that site's Ceph (``ceph:``), ``bgp`` = that cloud's FRR router,
  the route server as observer (``bgp:``), ``hypervisor`` = QEMU with runtime_dir ``<lab>/qemu/<cloud>`` - the
  directory the lab booted the guest in, so the source agent adopts the running QEMU (the lab's own driver for it
  is closed: one QMP client per domain) - and the guest NIC's tap backend (``hypervisor.extra_args``);
  ``cloud`` = ``sim`` on a shared state file in which the lab registers the VM in the cloud it runs in;
* the migration: ``POST /v1/clusters`` (both clouds, with their gRPC address), ``POST /v1/vms/<vm>/live-migrate``,
  ``GET /v1/migrations/<id>`` polled until terminal.

The lab cannot see the agents' QMP events, so the STOP->RESUME pause is the one the product computed from QEMU's
events (``downtime.guest_pause_ms``); the heartbeat pause, the blackout and the total are the lab's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cnf.clock import SystemClock
from cnf.migration.model import MigrationEvent, MigrationState, StepRecord
from cnf.sim.fabric import SimFabric
from lab.ceph import POOL
from lab.e2e import CLUSTERS, HB_MS, HOST_ADDRESSES, IMAGE_MB, PREFIX, RAM_MB, VM_ID, E2EError, E2ELab
from lab.e2e_net import VM_IP
from lab.e2e_probe import kernel_errors
from lab.e2e_report import figures
from lab.e2e_watch import MigrationWatch
from lab.etcd import EtcdCluster
from lab.federation import LoopbackAgent, plan_federation, write_agent_config
from lab.postgres import async_url, pg_admin

#: agent (cluster) names per lab cloud
NAMES = {"a": "lab-a", "b": "lab-b"}


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
    agents: dict[str, LoopbackAgent] = field(default_factory=dict)
    etcd: EtcdCluster | None = None
    database: str = ""

    # --- lifecycle -------------------------------------------------------------------------------------------

    @classmethod
    def start(cls, lab: E2ELab, *, within_s: float = 90.0) -> AgentClouds:
        """Start etcd, the database and both agents, register both clouds; on failure stop what was started."""
        base = lab.root / "agents"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        fed = cls(lab=lab, base=base)
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
        self._seed_world()
        for cid, agent in self.agents.items():
            write_agent_config(agent, self.base, etcd_endpoints=self.etcd.endpoints, lease_ttl_s=5.0,
                               database_url=async_url(self.database), sim_vms=0, extra=self._real_drivers(cid))
        for agent in self.agents.values():
            agent.start()
        self._wait(lambda: all(a.healthy() for a in self.agents.values()), t0 + within_s, "both agents healthy")
        for agent in self.agents.values():
            body = {"id": agent.cluster_id, "name": agent.name, "auth_url": f"sim://{agent.name}",
                    "grpc_addr": f"127.0.0.1:{agent.grpc_port}", "bgp_as": agent.as_number}
            self._wait(lambda body=body: self._post(self._any().url + "/v1/clusters", body).status_code
                       in (201, 409), t0 + within_s, f"cluster register {body['name']}")
        self._wait(self._both_active, t0 + within_s, "both clouds registered and active")
        # a cloud that turned active at a later attach enters the inventory at the master's next sync (every 5 s)
        self._wait(self._vm_known, t0 + within_s, f"{VM_ID} in the federation's inventory")

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

    def _real_drivers(self, cid: str) -> dict[str, Any]:
        """The config sections that give agent ``cid`` the lab cloud's real storage, BGP and hypervisor."""
        lab, site, router = self.lab, self.lab.site(cid), self.lab.router(cid)
        sc = site.driver_config()
        return {
            "drivers": {"cloud": "sim", "storage": "real", "bgp": "real", "hypervisor": "real"},
            "ceph": {"pool": sc["pool"], "conf": sc["conf_path"], "client_name": sc["client_name"],
                     "keyring": sc["keyring"], "cluster_name": sc["cluster_name"]},
            "bgp": {"as_number": router.as_number, "next_hop": lab.next_hop(cid), "vtysh_pathspace": router.pathspace,
                    "observer_pathspace": lab.frr.route_server.pathspace},
            "hypervisor": {"runtime_dir": str(lab.root / "qemu" / cid), "accel": "tcg", "kernel": lab.kernel,
                           "initrd": lab.initrd, "append": lab.append,
                           "disk_template": f"rbd:{POOL}/{{image}}:conf={site.conf}:id=admin",
                           "listen_address": "127.0.0.1", "extra_args": list(lab.net.qemu_args(cid))},
        }

    def stop(self) -> None:
        """SIGTERM both agents (SIGKILL after a grace period), stop etcd, drop the database. QEMU keeps running."""
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
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

    def _vm_known(self) -> bool:
        r = httpx.get(self._any().url + "/v1/vms", timeout=5)
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
        tails = {a.name: a.log.read_text(errors="replace")[-2000:] for a in self.agents.values() if a.log.exists()}
        raise E2EError(f"timed out waiting for {what} (last error: {last!r}); agent logs: {tails}")

    # --- one migration ---------------------------------------------------------------------------------------

    async def migrate(self, *, downtime_limit_ms: int | None = None, deadline_s: float = 300.0) -> dict[str, Any]:
        """Live-migrate the guest to the other cloud through the agents' REST API; returns the lab's figures."""
        lab = self.lab
        src = lab.where
        dst = next(c for c in CLUSTERS if c != src)
        serial = {cid: lab.root / "qemu" / cid / VM_ID / "serial.log" for cid in CLUSTERS}
        before_errors = kernel_errors(serial[src])
        lab.runs += 1
        body: dict[str, Any] = {"dest_cluster_id": self.agents[dst].cluster_id}
        if downtime_limit_ms is not None:
            body["options"] = {"downtime_limit_ms": downtime_limit_ms}
        watch = MigrationWatch(probe=lab.probe(f"agents{lab.runs}"), serials=serial,
                               route_namespace=lab.frr.route_server.namespace, prefix=PREFIX, net=lab.net,
                               clusters=CLUSTERS, src=src, dst=dst,
                               next_hops={cid: lab.next_hop(cid) for cid in CLUSTERS}, hb_ms=HB_MS)
        async with watch:
            async with httpx.AsyncClient(base_url=self._any().url, timeout=30) as http:
                watch.started()
                r = await http.post(f"/v1/vms/{VM_ID}/live-migrate", json=body)
                if r.status_code != 202:
                    raise E2EError(f"live-migrate refused: {r.status_code} {r.text[:500]}")
                mid = r.json()["id"]
                view = await _poll_terminal(http, mid, deadline_s)
            rec = AgentRecord.from_view(view)
            await watch.finished(dst if rec.state == MigrationState.COMPLETED else src)
        ob = watch.observation()
        events = [MigrationEvent(ts=e["ts"], kind=e["kind"], message=e["message"], phase=e.get("phase", ""),
                                 step=e.get("step", "")) for e in view.get("events", [])]
        fig = figures(rec, events, ob)  # type: ignore[arg-type]  # AgentRecord has the fields figures reads
        # the product's STOP -> RESUME pause from QEMU's events (the lab holds no QMP client of the agents' QEMUs)
        fig["guest_pause_ms_stop_resume"] = rec.context.get("guest_pause_ms")
        if before_errors:
            fig["guest_kernel_errors"] = [f"before: {e}" for e in before_errors] + fig["guest_kernel_errors"]
        fig["mode"] = "agents"
        fig["migration_id"] = mid
        fig["downtime_limit_ms"] = (view.get("options") or {}).get("downtime_limit_ms")
        fig["failure_injected"] = False
        if rec.state == MigrationState.COMPLETED:
            lab.where = dst
        lab.save()
        return fig


async def _poll_terminal(http: httpx.AsyncClient, mid: str, deadline_s: float) -> dict[str, Any]:
    """``GET /v1/migrations/<id>`` every 50 ms until the state is terminal (``E2EError`` after ``deadline_s``)."""
    end = time.monotonic() + deadline_s
    view: dict[str, Any] = {}
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            r = await http.get(f"/v1/migrations/{mid}")
            if r.status_code == 200:
                view = r.json()
                if MigrationState(view["state"]).terminal:
                    return view
        await asyncio.sleep(0.05)
    raise E2EError(f"migration {mid} not terminal after {deadline_s:.0f} s: {json.dumps(view)[:800]}")


def migrate_through_agents(lab: E2ELab, *, downtime_limit_ms: int | None = None) -> dict[str, Any]:
    """Start the two agents, migrate once through them, stop them; returns the figures (+ ``agents_up_s``)."""
    t0 = time.monotonic()
    fed = AgentClouds.start(lab)
    up_s = round(time.monotonic() - t0, 2)
    _say(f"[agents] etcd x3, PostgreSQL, 2 agents up and both clouds registered in {up_s:.1f} s ({fed.base})")
    try:
        t1 = time.monotonic()
        fig = asyncio.run(fed.migrate(downtime_limit_ms=downtime_limit_ms))
        _say(f"[agents] migration {fig['state']} (total {fig['total_s']} s), measured in "
             f"{time.monotonic() - t1:.1f} s")
    finally:
        t2 = time.monotonic()
        fed.stop()
        _say(f"[agents] agents, etcd and the database stopped in {time.monotonic() - t2:.1f} s")
    fig["agents_up_s"] = up_s
    return fig
