"""The e2e lab's live migration driven through the product: two ``cnf-agent`` processes, REST, mTLS gRPC.

One agent per cloud (``python -m cnf.main --config``) with that cloud's real drivers chosen by config (Keystone +
Nova of one of the session's two real OpenStack clouds, Ceph site, FRR router + the route server as observer, QEMU
with the guest's NIC in ``hypervisor.extra_args``), a 3-member etcd, a throwaway PostgreSQL database, a private Redis
and one Celery worker per agent; the clouds are registered with ``POST /v1/clusters`` (their Keystone URL) and the
VM moved with ``POST /v1/vms/<vm>/live-migrate`` (``lab.e2e_agents``). The VM's record is booted in the source
cloud's Nova beforehand (``lab.e2e_nova``); the source agent adopts the QEMU the lab booted. On the same agents:
the move there, the move back, and a move whose destination QEMU the lab kills (by the destination agent's pidfile)
while the migration is in the cutover before the point of no return. What is checked comes from the components,
not from CNF's record: the guest's serial heartbeat and its own disk records (a read-back at the destination returns
the source's last write, the guest writes on), the probe's replies and the tap they came through, the image's mirror
role at both sites, which FRR originates the /32, which Nova holds the VM's record in what state, and (from the
processes' logs) that the workers drove the steps. Reuses the session's lab bring-ups (conftest.py); no timing is
asserted.
"""
from __future__ import annotations

import os
import time
from typing import Any

import httpx
import pytest
from e2e_checks import assert_guest_disk_intact, assert_served_by

from lab.controller_ns import FABRIC_ADDRESSES, established
from lab.e2e import E2ELab
from lab.e2e_agents import KILL_WINDOW, AgentClouds, run_migration
from lab.e2e_nova import clouds_of, nova_view
from lab.e2e_report import print_report

pytestmark = [pytest.mark.lab]


def _assert_nova_only_in(clouds: Any, cid: str) -> None:
    """Nova: exactly one record of the VM, ACTIVE and running on cloud ``cid``'s compute host; none elsewhere."""
    nova = nova_view(clouds)
    assert all(records == [] for other, records in nova.items() if other != cid), nova
    assert len(nova[cid]) == 1, nova
    rec = nova[cid][0]
    assert (rec.status, rec.power_state) == ("ACTIVE", 1), rec
    assert rec.host == clouds_of(clouds)[cid].compute_host, rec


def _assert_in_controller_namespaces(fed: AgentClouds) -> None:
    """Each cloud's agent and Celery worker run in its controller namespace; the clouds are registered with the
    controllers' fabric addresses, and the agents' mTLS gRPC crosses the fabric: an established TCP connection
    between 10.255.0.31 and 10.255.0.32 to one agent's gRPC port (not the relay, which listens on loopback)."""
    assert fed.controllers == "netns"
    for cid, agent in fed.agents.items():
        ns = fed.namespaces[cid].namespace
        inode = os.stat(f"/run/netns/{ns}").st_ino
        for what, pid in (("agent", agent.pid), ("worker", fed.workers[cid].pid)):
            assert pid and os.stat(f"/proc/{pid}/ns/net").st_ino == inode, (cid, what, pid, ns)
    rows = httpx.get(next(iter(fed.agents.values())).url + "/v1/clusters", timeout=10).json()["clusters"]
    assert {r["id"]: r["grpc_addr"] for r in rows} == {
        a.cluster_id: f"{FABRIC_ADDRESSES[cid]}:{a.grpc_port}" for cid, a in fed.agents.items()}, rows
    a, b = FABRIC_ADDRESSES["a"], FABRIC_ADDRESSES["b"]
    grpc_a, grpc_b = f"{a}:{fed.agents['a'].grpc_port}", f"{b}:{fed.agents['b'].grpc_port}"
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + 30.0  # the master attaches to the other cloud at its next sync
    while time.monotonic() < deadline:
        seen = established(fed.namespaces["a"].namespace)
        if any((local.startswith(f"{a}:") and peer == grpc_b) or (local == grpc_a and peer.startswith(f"{b}:"))
               for local, peer in seen):
            return
        time.sleep(0.2)
    raise AssertionError(f"no gRPC connection between the controllers across the fabric: {seen}")


def _assert_moved(lab: E2ELab, clouds: Any, fig: dict[str, Any], src: str, dst: str) -> None:
    assert fig["state"] == "completed", (fig["error"], fig.get("timeline"))
    assert (fig["cloud"], fig["tasks"]) == ("openstack", "celery")
    assert (fig["from"], fig["to"]) == (src, dst)
    assert lab.where == dst
    assert not fig["guest_kernel_errors"], fig["guest_kernel_errors"]
    assert fig["guest_pause_ms_stop_resume"] is not None and fig["guest_pause_ms_stop_resume"] > 0, fig
    hb = fig["heartbeat"]
    # the same guest keeps counting on the destination: HB n at the source, HB n+1 at the destination
    assert hb["continues"], hb
    assert hb["destination_beats"] >= 3, hb
    pr = fig["probe"]
    assert pr["answered_before_migration"] >= 10, pr
    # the replies resumed, and after the run they came through the destination host's tap only
    assert pr["resumed"] and pr["answered_after_end"] >= 20, pr
    assert pr["replies_after_end_from"] == [dst], pr
    assert_guest_disk_intact(fig, dst)
    # running, primary image, /32 originated, route server's best path, host route and pings: dst only
    assert_served_by(lab, dst, via_qmp=False)
    # Nova: the record left the source cloud; the destination's receiver record was adopted and runs
    _assert_nova_only_in(clouds, dst)
    assert nova_view(clouds)[dst][0].receiver == "active"


@pytest.mark.timeout(480, func_only=True)  # the session's lab bring-ups (minutes) are not the test's
def test_live_migration_through_two_agents_there_back_and_failed(e2e_lab: E2ELab, e2e_clouds: Any) -> None:
    src = e2e_lab.where
    dst = "b" if src == "a" else "a"
    t0 = time.monotonic()
    fed = AgentClouds.start(e2e_lab, openstack=e2e_clouds, tasks="celery")
    print(f"[test] agents up in {time.monotonic() - t0:.1f} s")
    try:
        _assert_in_controller_namespaces(fed)
        # --- there ---
        fig = run_migration(fed)
        print_report(fig)  # the timeline and the figures (shown with -s, or with the failure)
        _assert_moved(e2e_lab, e2e_clouds, fig, src, dst)
        # the workers drove it (at least one task per step), the agents ran no step themselves but served the
        # workers' calls to their cloud over CNFPeer, the Nova ones included
        by = fig["driven_by"]
        assert sum(by["worker_tasks_done"].values()) >= len(fig["steps_ms"]), by
        assert not any(by["agent_steps_started"].values()), by
        assert {"cloud.create_receiver", "cloud.activate_receiver", "storage.promote"} <= set(by["peer_calls"][dst])
        assert {"cloud.retire_server", "storage.demote", "hypervisor.start_migration"} <= set(
            by["peer_calls"][src]), by

        # --- back, on the same agents ---
        t1 = time.monotonic()
        back = run_migration(fed, via="osc")  # the operator's `openstack cnf vm live-migrate ... --wait`
        print_report(back)
        _assert_moved(e2e_lab, e2e_clouds, back, dst, src)
        cli = back["cli"]
        assert cli["exit_code"] == 0, cli  # --wait exits 0 only when the migration completed
        assert (cli["state"], cli["migration_id"]) == ("completed", back["migration_id"]), cli
        print(f"[test] move back in {time.monotonic() - t1:.1f} s")

        # --- the destination QEMU dies in the cutover, before the point of no return ---
        t2 = time.monotonic()
        failed = run_migration(fed, fail_before_promote=True)
        print_report(failed)
        print(f"[test] failed run in {time.monotonic() - t2:.1f} s; injection {failed['injection']}")
        inj = failed["injection"]
        assert inj.get("step") in KILL_WINDOW and inj.get("pid"), inj  # the lab killed it inside the window
        assert failed["state"] == "failed", (failed["error"], failed.get("timeline"))
        assert failed["error"] and failed["error"].get("message"), failed["error"]  # with a reason
        assert failed["error"].get("step") in KILL_WINDOW, failed["error"]
        assert e2e_lab.where == src
        assert not failed["guest_kernel_errors"], failed["guest_kernel_errors"]
        hb = failed["heartbeat"]
        # the source was paused in pre-switchover when the destination died; it runs on, same guest, same counter
        assert hb["source_beats_after_end"] >= 3 and hb["source_continues"], hb
        assert hb["first_destination"] is None, hb  # the destination never ran the guest
        pr = failed["probe"]
        assert pr["answered_before_migration"] >= 10, pr
        assert pr["resumed"] and pr["answered_after_end"] >= 20, pr
        assert pr["replies_after_end_from"] == [src], pr
        assert_guest_disk_intact(failed, src)  # its disk writes went on at the source, nothing lost
        assert_served_by(e2e_lab, src, via_qmp=False)  # primary image, /32 announced, pings answered: source only
        _assert_nova_only_in(e2e_clouds, src)  # the receiver in the destination's Nova was removed
    finally:
        fed.stop()
