"""The e2e lab's live migration driven through the product: two ``cnf-agent`` processes, REST, mTLS gRPC.

One agent per cloud (``python -m cnf.main --config``) with that cloud's real drivers chosen by config (Keystone +
Nova of one of the session's two real OpenStack clouds, Ceph site, FRR router + the route server as observer, QEMU
with the guest's NIC in ``hypervisor.extra_args``), a 3-member etcd, a throwaway PostgreSQL database, a private Redis
and one Celery worker per agent; the clouds are registered with ``POST /v1/clusters`` (their Keystone URL) and the
VM moved with ``POST /v1/vms/<vm>/live-migrate`` (``lab.e2e_agents``). The VM's record is booted in the source
cloud's Nova beforehand (``lab.e2e_nova``); the source agent adopts the QEMU the lab booted. What is checked comes
from the components, not from CNF's record: the guest's serial heartbeat, the probe's replies and the tap they came
through, the image's mirror role at both sites, which FRR originates the /32, which Nova holds the VM's record in
what state, and (from the processes' logs) that the workers drove the steps. Reuses the session's lab bring-ups
(conftest.py); no timing is asserted.
"""
from __future__ import annotations

from typing import Any

import pytest

from lab.e2e import E2ELab, ping_check, state_of_world
from lab.e2e_agents import migrate_through_agents
from lab.e2e_nova import clouds_of, nova_view
from lab.e2e_report import print_report

pytestmark = [pytest.mark.lab]


@pytest.mark.timeout(300, func_only=True)  # the session's lab bring-ups (minutes) are not the test's
def test_live_migration_through_two_agents(e2e_lab: E2ELab, e2e_clouds: Any) -> None:
    src = e2e_lab.where
    dst = "b" if src == "a" else "a"

    # the agents, their Celery workers and Redis are stopped again when it returns
    fig = migrate_through_agents(e2e_lab, openstack=e2e_clouds, tasks="celery")
    print_report(fig)  # the timeline and the figures (shown with -s, or with the failure)

    assert fig["state"] == "completed", (fig["error"], fig.get("timeline"))
    assert (fig["cloud"], fig["tasks"]) == ("openstack", "celery")
    # the workers drove it (at least one task per step), the agents ran no step themselves but served the workers'
    # calls to their cloud over CNFPeer, the Nova ones included
    by = fig["driven_by"]
    assert sum(by["worker_tasks_done"].values()) >= len(fig["steps_ms"]), by
    assert not any(by["agent_steps_started"].values()), by
    assert {"cloud.create_receiver", "cloud.activate_receiver", "storage.promote"} <= set(by["peer_calls"][dst]), by
    assert {"cloud.retire_server", "storage.demote", "hypervisor.start_migration"} <= set(by["peer_calls"][src]), by
    assert (fig["from"], fig["to"]) == (src, dst)
    assert e2e_lab.where == dst
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
    world = state_of_world(e2e_lab)
    assert world["running"] == [dst], world
    assert world["primary"] == [dst], world  # the image is primary only at the destination
    assert world["announcing"] == [dst], world  # the /32 is originated only by the destination's router
    assert world["rs_best_next_hop"] == e2e_lab.next_hop(dst), world
    pings = ping_check(e2e_lab)
    assert pings["ok"] and pings["through"] == [dst], pings
    # Nova: the record left the source cloud; the destination's receiver record was adopted and runs
    nova = nova_view(e2e_clouds)
    assert nova[src] == [], nova
    assert len(nova[dst]) == 1, nova
    moved = nova[dst][0]
    assert (moved.status, moved.power_state, moved.receiver) == ("ACTIVE", 1, "active"), moved
    assert moved.host == clouds_of(e2e_clouds)[dst].compute_host, moved
