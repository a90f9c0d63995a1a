"""The e2e lab's live migration driven through the product: two ``cnf-agent`` processes, REST, mTLS gRPC.

One agent per cloud (``python -m cnf.main --config``) with that cloud's real drivers chosen by config (Ceph site,
FRR router + the route server as observer, QEMU with the guest's NIC in ``hypervisor.extra_args``), a 3-member
etcd, a throwaway PostgreSQL database; the clouds are registered with ``POST /v1/clusters`` and the VM moved with
``POST /v1/vms/<vm>/live-migrate`` (``lab.e2e_agents``). The source agent adopts the QEMU the lab booted. What is
checked comes from the components, not from CNF's record: the guest's serial heartbeat, the probe's replies and the
tap they came through, the image's mirror role at both sites, which FRR originates the /32. Reuses the session's
lab bring-up (conftest.py); no timing is asserted.
"""

from __future__ import annotations

import pytest

from lab.e2e import E2ELab, ping_check, state_of_world
from lab.e2e_agents import migrate_through_agents

pytestmark = [pytest.mark.lab]


@pytest.mark.timeout(300)
def test_live_migration_through_two_agents(e2e_lab: E2ELab) -> None:
    src = e2e_lab.where
    dst = "b" if src == "a" else "a"

    fig = migrate_through_agents(e2e_lab)  # the agents are stopped again when it returns

    assert fig["state"] == "completed", (fig["error"], fig.get("timeline"))
    assert (fig["from"], fig["to"]) == (src, dst)
    assert e2e_lab.where == dst
    assert not fig["guest_kernel_errors"], fig["guest_kernel_errors"]
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
