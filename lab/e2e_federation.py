"""The e2e lab's running federation: a detached supervisor that holds ``AgentClouds`` until SIGTERM.

Why: issue 14's ``make lab`` leaves the whole product running - both clouds' agents (mTLS gRPC, etcd, PostgreSQL,
Celery on Redis) next to Ceph, FRR, QEMU and (by default) the real Keystone + Nova of ``lab.openstack`` - so that
an operator can run ``openstack cnf vm live-migrate ... --wait`` against it, and ``make lab-migrate`` can measure
one move without starting anything. ``AgentClouds`` owns its processes through ``Popen`` objects, which only the
process that started them holds; so one process, the supervisor (``python -m lab.e2e_federation serve --root
<lab>``, its own session, log ``<lab>/federation.log``), starts them and stops them on SIGTERM/SIGINT.

Contract:

* the supervisor writes ``<lab>/federation.json`` (``RECORD``) once everything is up: its PID, the master's URL,
  each agent's name / cluster id / API URL / gRPC port / config / log / PID, each worker's log and PID, the tasks
  mode, the OpenStack lab record it used (or None: the sim cloud). A failing start writes ``error`` instead and
  the supervisor exits after stopping what it started (``AgentClouds.start`` does that);
* another process rebuilds an ``AgentClouds`` from the record with :func:`attach` (agents and workers known by PID,
  :class:`AttachedAgent` / :class:`AttachedWorker`; they cannot be started or stopped from there) and migrates
  through it with ``lab.e2e_agents.run_migration``;
* :func:`stop_federation` SIGTERMs the supervisor (it stops workers, agents, Redis, etcd and drops the database)
  and, if the supervisor died without cleaning up, ends the agents and workers named in the record by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx

from lab.e2e import E2EError, E2ELab
from lab.federation import ROOT, CeleryWorker, LoopbackAgent
from lab.owned_process import end_process, end_processes, process_alive

RECORD = "federation.json"
LOG = "federation.log"
#: how long the supervisor may take to stop everything on SIGTERM (agents 15 s grace each, workers, etcd, ...)
STOP_GRACE_S = 120.0


def _say(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class _KnownByPid:
    """A process another process started (the supervisor), known here by PID only: read, never started here.

    Mixed in before ``LoopbackAgent`` / ``CeleryWorker``: their fields come first, ``attached_pid`` last."""

    attached_pid: int | None = None

    @property
    def pid(self) -> int | None:
        return self.attached_pid

    def alive(self) -> bool:
        return self.attached_pid is not None and process_alive(self.attached_pid)

    def start(self, *_args: Any, **_kwargs: Any) -> None:
        raise E2EError(f"{getattr(self, 'name', 'this process')} belongs to the federation's supervisor: it "
                       "starts it")


@dataclass
class AttachedAgent(_KnownByPid, LoopbackAgent):
    """A ``cnf-agent`` the supervisor started."""


@dataclass
class AttachedWorker(_KnownByPid, CeleryWorker):
    """A ``cnf-worker`` the supervisor started (its log is what is read)."""


# --- the record ------------------------------------------------------------------------------------------------


def record_path(root: Path) -> Path:
    return root / RECORD


def read_record(root: Path) -> dict[str, Any] | None:
    """The supervisor's record, or None when no federation was started for this lab."""
    try:
        return dict(json.loads(record_path(root).read_text()))
    except (OSError, ValueError):
        return None


def running_record(root: Path) -> dict[str, Any] | None:
    """The record of a federation that is up: ready and its supervisor alive."""
    rec = read_record(root)
    if rec and rec.get("ready") and process_alive(int(rec.get("supervisor_pid", 0))):
        return rec
    return None


#: where an agent / a worker runs and is reached (``lab.federation``'s namespace fields), recorded when present
AGENT_PLACEMENT = ("namespace", "api_host", "peer_host")
WORKER_PLACEMENT = ("namespace",)


def _placement(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(obj, n) for n in names if hasattr(obj, n)}


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` restricted to ``cls``'s dataclass fields (a record written by another version of the lab)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _describe(fed: Any, openstack_record: str | None, up_s: float) -> dict[str, Any]:
    agents = {cid: {"name": a.name, "cluster_id": a.cluster_id, "url": a.url, "api_port": a.api_port,
                    "grpc_port": a.grpc_port, "as_number": a.as_number, "config": str(a.config), "log": str(a.log),
                    "pid": a.pid, **_placement(a, AGENT_PLACEMENT)} for cid, a in fed.agents.items()}
    workers = {cid: {"name": w.name, "config": str(w.config), "log": str(w.log), "pid": w.pid,
                     **_placement(w, WORKER_PLACEMENT)} for cid, w in fed.workers.items()}
    master_url = None
    try:
        m = httpx.get(fed._any().url + "/v1/master", timeout=5).json()
        master_url = next((a["url"] for a in agents.values() if a["cluster_id"] == m.get("cluster_id")), None)
    except (httpx.HTTPError, ValueError, StopIteration):
        pass
    return {"ready": True, "supervisor_pid": os.getpid(), "base": str(fed.base), "tasks": fed.tasks,
            "controllers": getattr(fed, "controllers", "loopback"),
            "openstack_record": openstack_record, "cloud": "sim" if fed.openstack is None else "openstack",
            "database": fed.database, "redis_url": None if fed.redis is None else fed.redis.url,
            "master_url": master_url or agents["a"]["url"], "agents": agents, "workers": workers,
            "nova_boot_s": fed.nova_boot_s, "up_s": up_s}


def attach(lab: E2ELab, rec: dict[str, Any]) -> Any:
    """An ``AgentClouds`` over the running federation ``rec`` describes (for ``run_migration``)."""
    from lab.e2e_agents import AgentClouds
    from lab.e2e_nova import openstack_from_record

    agents = {cid: AttachedAgent(**_known(AttachedAgent, a | {"config": Path(a["config"]), "log": Path(a["log"]),
                                                              "attached_pid": a["pid"]}))
              for cid, a in rec["agents"].items()}
    workers = {cid: AttachedWorker(**_known(AttachedWorker, w | {"config": Path(w["config"]), "log": Path(w["log"]),
                                                                 "attached_pid": w["pid"]}))
               for cid, w in rec["workers"].items()}
    openstack = openstack_from_record(Path(rec["openstack_record"])) if rec.get("openstack_record") else None
    return AgentClouds(lab=lab, base=Path(rec["base"]), openstack=openstack, tasks=rec["tasks"],
                       agents=dict(agents), workers=dict(workers), database=rec["database"],
                       nova_boot_s=rec.get("nova_boot_s"))


# --- the supervisor ----------------------------------------------------------------------------------------------


def serve(root: Path, *, openstack_record: str | None, tasks: str, controllers: str | None = None) -> int:
    """Start the agents for the lab at ``root``, record them, hold them until SIGTERM/SIGINT, stop them."""
    from lab.e2e_agents import AgentClouds
    from lab.e2e_nova import openstack_from_record

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds AgentClouds.start (it stops what it started) or the wait below

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    lab = E2ELab.load(root)
    openstack = openstack_from_record(Path(openstack_record)) if openstack_record else None
    t0 = time.monotonic()
    try:
        where = {"controllers": controllers} if controllers else {}  # None: AgentClouds' default
        fed = AgentClouds.start(lab, openstack=openstack, tasks=tasks, **where)  # type: ignore[arg-type]
    except Exception as exc:  # recorded for the process that waits for us, then we exit
        record_path(root).write_text(json.dumps({"ready": False, "supervisor_pid": os.getpid(),
                                                 "error": f"{type(exc).__name__}: {exc}"[:4000]}))
        _say(f"[agents] FAILED: {type(exc).__name__}: {str(exc)[:2000]}")
        return 1
    up_s = round(time.monotonic() - t0, 2)
    rec = _describe(fed, openstack_record, up_s)
    record_path(root).write_text(json.dumps(rec, indent=1))
    _say(f"[agents] up in {up_s:.1f} s; master {rec['master_url']}; holding them until SIGTERM")
    try:
        while True:
            time.sleep(1.0)
    except SystemExit:
        pass
    finally:
        t1 = time.monotonic()
        fed.stop()
        with_ = "workers, Redis, " if tasks == "celery" else ""
        _say(f"[agents] agents, {with_}etcd and the database stopped in {time.monotonic() - t1:.1f} s")
        record_path(root).unlink(missing_ok=True)
    return 0


def start_federation(lab: E2ELab, *, openstack_record: str | None, tasks: str = "celery",
                     controllers: str | None = None, within_s: float = 300.0) -> dict[str, Any]:
    """Spawn the supervisor for ``lab``, echo its log while waiting, return its record once ready.

    ``E2EError`` (after ending the supervisor) when it reports an error, dies, or is not ready within ``within_s``.
    """
    record_path(lab.root).unlink(missing_ok=True)
    log = lab.root / LOG
    argv = [sys.executable, "-m", "lab.e2e_federation", "serve", "--root", str(lab.root), "--tasks", tasks]
    if openstack_record:
        argv += ["--openstack-record", openstack_record]
    if controllers:
        argv += ["--controllers", controllers]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(ROOT),
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = 0
    deadline = time.monotonic() + within_s
    why = ""
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text[seen:].splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            seen += len(line)
            if line.startswith("[agents]"):
                _say("[up]   " + line.rstrip()[:400])
        rec = read_record(lab.root)
        if rec and rec.get("ready"):
            return rec
        if rec and rec.get("error"):
            why = rec["error"]
            break
        if proc.poll() is not None:
            why = f"the supervisor exited with {proc.returncode}: {text[-1500:]}"
            break
        time.sleep(0.3)
    else:
        why = f"not up within {within_s:.0f} s"
    end_process(proc.pid, grace_s=STOP_GRACE_S)
    proc.poll()
    raise E2EError(f"agents: {why} (log {log})")


def stop_federation(root: Path) -> bool:
    """Stop the supervisor of the lab at ``root`` (it stops everything it started); returns whether one ran.

    If the supervisor is gone but left its record (killed), the agents and workers it names are ended by PID."""
    rec = read_record(root)
    if rec is None:
        return False
    pid = int(rec.get("supervisor_pid", 0))
    if pid and process_alive(pid):
        end_process(pid, grace_s=STOP_GRACE_S)
    rec_left = read_record(root)
    if rec_left and rec_left.get("ready"):
        pids = [int(p["pid"]) for group in ("agents", "workers") for p in rec_left[group].values()
                if p.get("pid") and process_alive(int(p["pid"]))]
        if pids:
            end_processes(pids, grace_s=15.0, groups=True)
    record_path(root).unlink(missing_ok=True)
    return True


def federation_status(rec: dict[str, Any]) -> dict[str, Any]:
    """Who is master and each cloud's status, from the agents' REST API, plus which processes live."""
    out: dict[str, Any] = {"supervisor_pid": rec["supervisor_pid"], "tasks": rec["tasks"], "cloud": rec["cloud"],
                           "agents": {cid: {"name": a["name"], "url": a["url"], "pid": a["pid"],
                                            "alive": process_alive(int(a["pid"]))}
                                      for cid, a in rec["agents"].items()},
                           "workers_alive": {w["name"]: process_alive(int(w["pid"])) for w in rec["workers"].values()}}
    urls = [a["url"] for a in rec["agents"].values() if process_alive(int(a["pid"]))]
    if urls:
        try:
            master = httpx.get(urls[0] + "/v1/master", timeout=5).json()
            names = {a["cluster_id"]: a["name"] for a in rec["agents"].values()}
            out["master"] = names.get(master.get("cluster_id"), master.get("cluster_id"))
            clusters = httpx.get(urls[0] + "/v1/clusters", timeout=5).json().get("clusters", [])
            out["clusters"] = {c.get("name"): c.get("status") for c in clusters}
        except (httpx.HTTPError, ValueError) as exc:
            out["api_error"] = repr(exc)
    return out


# --- the whole federation: OpenStack lab + e2e lab + agents ------------------------------------------------------


def openstack_running() -> Path | None:
    """The record (``current.json``) of an OpenStack lab that is up, every process of it alive; else None."""
    from lab.openstack import STATE_ROOT, OpenStackLab

    current = STATE_ROOT / "current.json"
    try:
        lab = OpenStackLab.from_dict(json.loads(current.read_text()))
    except (OSError, ValueError, KeyError):
        return None
    pids = [int(p) for c in lab.clouds for p in c.pids.values()]
    return current if pids and all(process_alive(p) for p in pids) else None


def _openstack_up(lab: E2ELab) -> None:
    """Reuse the running OpenStack lab, else start one (``python -m lab.openstack up``; ``down`` ends it)."""
    t0 = time.monotonic()
    current = openstack_running()
    if current is not None:
        lab.federation.update(openstack_record=str(current), openstack_started=False)
        lab.save()
        _say(f"[up] openstack: reusing the running clouds ({current})")
        return
    _say("[up] openstack: Keystone + Placement + Glance + Nova + Neutron x2 (python -m lab.openstack up) ...")
    log = lab.root / "openstack-up.log"
    with log.open("wb") as out:
        p = subprocess.run([sys.executable, "-m", "lab.openstack", "up"], stdout=out, stderr=subprocess.STDOUT,
                           cwd=str(ROOT), timeout=900, check=False)
    current = openstack_running()
    if p.returncode != 0 or current is None:
        _say(f"[up] openstack FAILED after {time.monotonic() - t0:.1f} s (exit {p.returncode}): "
             f"{log.read_text(errors='replace')[-1500:]}")
        raise E2EError(f"openstack did not come up (exit {p.returncode}; log {log})")
    lab.federation.update(openstack_record=str(current), openstack_started=True)
    lab.bringup_s["openstack"] = round(time.monotonic() - t0, 2)
    lab.save()
    _say(f"[up] openstack ok in {lab.bringup_s['openstack']:.1f} s ({current})")


def _openstack_down(lab: E2ELab) -> None:
    if not lab.federation.get("openstack_started"):
        return
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "lab.openstack", "down"], cwd=str(ROOT), timeout=300, check=False,
                   capture_output=True)
    _say(f"[down] openstack (started by up) stopped in {time.monotonic() - t0:.1f} s")


def up_federation(lab: E2ELab, *, openstack: bool, tasks: str, controllers: str | None = None) -> None:
    """After ``lab.up``: the OpenStack clouds (``openstack``; reused if up), then the agents' supervisor.

    On failure everything started here and the e2e lab are torn down, and ``E2EError`` names the part."""
    try:
        if openstack:
            _openstack_up(lab)
        t0 = time.monotonic()
        cloud = "real Nova" if openstack else "sim cloud"
        runner = "Redis + 2 Celery workers" if tasks == "celery" else "in-process runner"
        _say(f"[up] agents: etcd x3, PostgreSQL, {runner}, 2 cnf-agents ({cloud}) under a supervisor ...")
        rec = start_federation(lab, openstack_record=lab.federation.get("openstack_record"), tasks=tasks,
                               controllers=controllers)
        lab.bringup_s["agents"] = round(time.monotonic() - t0, 2)
        lab.federation["tasks"] = tasks
        lab.save()
        _say(f"[up] agents ok in {lab.bringup_s['agents']:.1f} s: master {rec['master_url']}, "
             + ", ".join(f"{a['name']} {a['url']} (pid {a['pid']})" for a in rec["agents"].values())
             + f"; supervisor pid {rec['supervisor_pid']}")
    except BaseException:
        _say("[up] tearing down what was started")
        down_federation(lab)
        raise


def down_federation(lab: E2ELab) -> None:
    """The supervisor (agents, workers, Redis, etcd, database), then the e2e lab, then the OpenStack lab if ``up``
    started it; each with its time."""
    t0 = time.monotonic()
    if stop_federation(lab.root):
        _say(f"[down] agents, workers, Redis, etcd, database (supervisor) stopped in {time.monotonic() - t0:.1f} s")
    lab.down()
    _openstack_down(lab)


# --- `python -m lab.e2e migrate` through agents ------------------------------------------------------------------


def migrate_running(lab: E2ELab, fed_rec: dict[str, Any], args: argparse.Namespace) -> int:
    """``migrate`` while the federation is up: through its agents, by the CLI unless ``--via rest`` (or the failure
    run); ``--direct`` / another destination are refused in one line. Exit 0 when the state is the wanted one."""
    from lab.e2e import CLUSTERS, print_report
    from lab.e2e_agents import Via, run_migration

    if args.direct or args.to not in (None, next(c for c in CLUSTERS if c != lab.where)):
        _say("the running agents hold the guest's QMP connection: only `migrate` through them (to the other "
             "cloud); for --direct or the in-process engine use `up --no-agents`")
        return 2
    via: Via = args.via or ("rest" if args.fail_before_promote else "osc")
    fig = run_migration(attach(lab, fed_rec), downtime_limit_ms=args.downtime_limit_ms,
                        fail_before_promote=args.fail_before_promote, via=via)
    fig["cloud"] = fed_rec["cloud"]
    print_report(fig, _say)
    if "cli" in fig:
        c = fig["cli"]
        _say(f"CLI: `openstack {' '.join(c['argv'][1:])}` exit {c['exit_code']} in {c['wall_s']} s, printed "
             f"migration {c['migration_id']} state {c['state']}; stderr: {c['stderr'].strip()[-300:]!r}")
    return 0 if fig["state"] == ("failed" if args.fail_before_promote else "completed") else 1


def migrate_once_through_agents(lab: E2ELab, args: argparse.Namespace) -> int:
    """``migrate --through-agents`` on a lab without a running federation: agents started for one move."""
    from lab.e2e import CLUSTERS, print_report
    from lab.e2e_agents import migrate_through_agents

    other = next(c for c in CLUSTERS if c != lab.where)
    if args.direct or args.to not in (None, other):
        _say("--through-agents migrates to the other cloud, with the engine")
        return 2
    openstack = None
    if args.openstack:
        from lab.e2e_nova import openstack_from_state

        try:
            openstack = openstack_from_state()
        except FileNotFoundError as exc:
            _say(f"--openstack: {exc}")
            return 2
    fig = migrate_through_agents(lab, downtime_limit_ms=args.downtime_limit_ms, openstack=openstack,
                                 tasks=args.tasks, fail_before_promote=args.fail_before_promote,
                                 via=args.via or "rest", controllers=args.controllers)
    print_report(fig, _say)
    _say("(through the agents the lab holds no QMP client: STOP->RESUME is the product's figure from QEMU's "
         f"events; agents up in {fig['agents_up_s']} s, migration {fig['migration_id']})")
    return 0 if fig["state"] == ("failed" if args.fail_before_promote else "completed") else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.e2e_federation")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="(the supervisor; `python -m lab.e2e up` starts it) hold the agents")
    s.add_argument("--root", required=True)
    s.add_argument("--openstack-record")
    s.add_argument("--tasks", choices=("celery", "inprocess"), default="celery")
    s.add_argument("--controllers", choices=("netns", "loopback"), help="default: AgentClouds'")
    args = ap.parse_args(argv)
    return serve(Path(args.root), openstack_record=args.openstack_record, tasks=args.tasks,
                 controllers=args.controllers)


if __name__ == "__main__":
    sys.exit(main())
