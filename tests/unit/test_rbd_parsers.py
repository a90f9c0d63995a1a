"""Parsers and promote/sync decisions of ``cnf.storage.rbd_json`` on outputs captured from real Ceph 16.2.15.

Fixtures: ``tests/data/ceph`` (CLI captures of the lab report ``lab/ceph``, ``FILE`` + ``FILE.stderr`` +
``FILE.rc``; ``worker-*.json`` are views captured from ``rbd_worker.py`` against the lab of ``lab.ceph``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnf.storage.rbd_json import (
    MISSING,
    ImageView,
    MirrorSnap,
    PromoteDecision,
    RbdFailure,
    classify,
    cli_outcome,
    last_snapshot_id,
    parse_cli_timestamp,
    parse_image_status,
    parse_info,
    parse_pool_status,
    parse_snap_ls,
    promote_decision,
    sync_state,
    view_from_worker,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "ceph"


def text(name: str) -> str:
    return (DATA / name).read_text()


def view(info: str, snaps: str | None = None) -> ImageView:
    return parse_info(text(info), parse_snap_ls(text(snaps)) if snaps else ())


def worker(name: str) -> ImageView:
    return view_from_worker(json.loads(text(f"worker-{name}.json")))


A_PRIMARY = ("rbd-info-disk1-site-a-primary.json", "snap-ls-all-site-a-primary.json")
A_DEMOTED = ("rbd-info-disk1-site-a-demoted.json", "snap-ls-all-site-a-demoted.json")
B_NONPRIMARY = ("rbd-info-disk1-site-b-nonprimary.json", "snap-ls-all-site-b-nonprimary.json")
B_ARRIVED = ("rbd-info-disk1-site-b-nonprimary.json", "snap-ls-all-site-b-after-demotion-arrived.json")
B_PROMOTED = ("rbd-info-disk1-site-b-promoted.json", None)


# --- CLI JSON ----------------------------------------------------------------------------------------------------

def test_info_roles() -> None:
    a = view(*A_PRIMARY)
    assert a.exists and a.mirroring and a.mode == "snapshot" and a.primary
    assert a.global_id == "abe9efe6-d0ab-4566-893e-c42db60115aa" and a.size == 1 << 30
    assert not view(*B_NONPRIMARY).primary
    assert not view(*A_DEMOTED).primary
    assert view(*B_PROMOTED).primary
    before = view("rbd-info-disk1-site-a-before-mirror.json")
    assert not before.mirroring and before.mode is None and before.primary  # unmirrored = writable


def test_snap_ls_primary_and_copy() -> None:
    (p,) = parse_snap_ls(text("snap-ls-all-site-a-primary.json"))
    assert p == MirrorSnap(id=4, state="primary", complete=True, primary_snap_id=None,
                           timestamp=parse_cli_timestamp("Wed Nov 25 14:17:24 2026"))
    (c,) = parse_snap_ls(text("snap-ls-all-site-b-nonprimary.json"))
    assert c.state == "non-primary" and c.primary_snap_id == 4 and c.complete and not c.own


def test_snap_ls_demoted_and_trash_ignored() -> None:
    snaps = parse_snap_ls(text("snap-ls-all-site-a-demoted.json"))
    assert [(s.id, s.state, s.own) for s in snaps] == [(5, "primary", True), (6, "primary-demoted", True)]
    arrived = parse_snap_ls(text("snap-ls-all-site-b-after-demotion-arrived.json"))
    assert [(s.id, s.state, s.primary_snap_id, s.complete) for s in arrived] == [(7, "non-primary-demoted", 6, True)]


def test_snap_ls_rejects_non_list() -> None:
    with pytest.raises(ValueError):
        parse_snap_ls('{"id": 1}')


def test_cli_timestamp() -> None:
    assert parse_cli_timestamp("Wed Nov 25 14:17:24 2026") == 1795616244.0  # = local_snapshot_timestamp in status
    assert parse_cli_timestamp("garbage") == 0.0


def test_image_status_split_brain_and_stale() -> None:
    sb = parse_image_status(text("split-brain/image-status-site-a-split-brain.json"))
    assert sb == "split-brain"
    assert ImageView(exists=True, description=sb).reports_split_brain
    # P6: right after the cutover the demoted site still claims to be primary: status is never used for the role
    assert parse_image_status(text("image-status-site-a-demoted.json")) == "local image is primary"


def test_pool_status() -> None:
    ok = parse_pool_status(text("pool-status-site-a-synced.json"))
    assert ok.ok and ok.daemon_health == "OK" and ok.daemons == 1
    bad = parse_pool_status(text("split-brain/pool-status-site-a-split-brain.json"))
    assert bad.image_health == "ERROR" and not bad.ok
    initial = parse_pool_status(text("pool-status-site-b-initial-sync.json"))
    assert initial.daemon_health in ("OK", "UNKNOWN", "WARNING", "ERROR")


# --- errors ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("capture", "expected"), [
    ("err-demote-site-a-nonprimary.txt", RbdFailure.NOT_PRIMARY),
    ("err-demote-site-b-nonprimary.txt", RbdFailure.NOT_PRIMARY),
    ("err-promote-site-a-nonprimary-while-b-primary.txt", RbdFailure.PEER_PRIMARY_OR_NOT_PROPAGATED),
    ("err-promote-site-b-while-a-primary.txt", RbdFailure.PEER_PRIMARY_OR_NOT_PROPAGATED),
    ("err-promote-site-b-already-primary.txt", RbdFailure.ALREADY_PRIMARY),
    ("err-snapshot-site-b-nonprimary.txt", RbdFailure.NOT_PRIMARY),
    ("err-write-site-a-demoted.txt", RbdFailure.READ_ONLY),
    ("err-write-site-b-nonprimary.txt", RbdFailure.READ_ONLY),
])
def test_cli_errors(capture: str, expected: RbdFailure) -> None:
    rc = int(text(capture + ".rc"))
    assert cli_outcome(rc, text(capture + ".stderr")) is expected


def test_promote_before_demotion_synced_is_read_only() -> None:
    assert classify(30, text("err-promote-site-b-before-demotion-synced.txt")) is RbdFailure.READ_ONLY


def test_image_missing_is_not_found() -> None:
    rc = int(text("image-status-site-b-initial-sync.json.rc"))
    assert cli_outcome(rc, text("image-status-site-b-initial-sync.json.stderr")) is RbdFailure.NOT_FOUND


def test_stderr_noise_with_rc_0_is_success() -> None:
    """P4: ``update notification timed-out`` on stderr of a command that worked."""
    base = "split-brain/promote-site-a-right-after-cutover-SUCCEEDED.txt"
    stderr = text(base + ".stderr")
    assert "timed-out" in stderr
    assert cli_outcome(int(text(base + ".rc")), stderr) is None


def test_unavailable() -> None:
    assert classify(110, "") is RbdFailure.UNAVAILABLE
    assert classify(None, "connection timed out") is RbdFailure.UNAVAILABLE
    assert classify(5, "weird") is RbdFailure.OTHER


# --- decisions ---------------------------------------------------------------------------------------------------

def test_last_snapshot_id_is_in_the_primary_id_space() -> None:
    assert last_snapshot_id(view(*A_PRIMARY)) == 4
    assert last_snapshot_id(view(*B_NONPRIMARY)) == 4  # local id 4, copy of primary's 4
    assert last_snapshot_id(view(*B_ARRIVED)) == 6  # local id 7 = copy of primary's 6
    assert last_snapshot_id(view(*A_DEMOTED)) == 6
    assert last_snapshot_id(MISSING) == 0


def test_sync_state() -> None:
    a, b = view(*A_PRIMARY), view(*B_NONPRIMARY)
    assert sync_state(b, a, now_wall=2e9) .in_sync
    demoted = view(*A_DEMOTED)
    st = sync_state(b, demoted, now_wall=demoted.snaps[0].timestamp + 12)
    assert not st.in_sync and st.pending == (5, 6) and st.lag_s == 12
    assert sync_state(view(*B_ARRIVED), demoted, now_wall=2e9).in_sync
    assert sync_state(a, b, now_wall=2e9).in_sync  # a primary is in sync by definition
    assert sync_state(b, None, now_wall=2e9).lag_s == float("inf")


def test_promote_refused_while_peer_primary() -> None:
    assert promote_decision(view(*B_NONPRIMARY), view(*A_PRIMARY)) is PromoteDecision.PEER_PRIMARY


def test_promote_waits_until_the_demotion_arrived() -> None:
    assert promote_decision(view(*B_NONPRIMARY), view(*A_DEMOTED)) is PromoteDecision.WAIT_FOR_DEMOTION
    assert promote_decision(view(*B_ARRIVED), view(*A_DEMOTED)) is PromoteDecision.PROMOTE


def test_p1_old_source_after_cutover() -> None:
    """lab/ceph P1: librbd would promote the old source (its newest snapshot is its own demotion)."""
    assert promote_decision(view(*A_DEMOTED), view(*B_PROMOTED)) is PromoteDecision.PEER_PRIMARY
    # the new primary has demoted again (failback) but its snapshots have not reached us: wait, don't roll back
    b_demoted = ImageView(exists=True, mirroring=True, mode="snapshot", primary=False,
                          snaps=(MirrorSnap(9, "primary", True), MirrorSnap(10, "primary-demoted", True)))
    assert promote_decision(view(*A_DEMOTED), b_demoted) is PromoteDecision.WAIT_FOR_DEMOTION
    a_has_it = ImageView(exists=True, mirroring=True, mode="snapshot", primary=False,
                         snaps=(*view(*A_DEMOTED).snaps, MirrorSnap(11, "non-primary-demoted", True, 10)))
    assert promote_decision(a_has_it, b_demoted) is PromoteDecision.PROMOTE
    incomplete = ImageView(exists=True, mirroring=True, mode="snapshot", primary=False,
                           snaps=(*view(*A_DEMOTED).snaps, MirrorSnap(11, "non-primary-demoted", False, 10)))
    assert promote_decision(incomplete, b_demoted) is PromoteDecision.WAIT_FOR_DEMOTION


def test_rollback_when_the_peer_never_became_primary() -> None:
    """Both non-primary after our demote, the peer only holds copies of our snapshots: taking it back is safe."""
    assert promote_decision(view(*A_DEMOTED), view(*B_NONPRIMARY)) is PromoteDecision.ROLLBACK
    assert promote_decision(view(*A_DEMOTED), view(*B_ARRIVED)) is PromoteDecision.ROLLBACK


def test_idempotent_and_split_brain() -> None:
    assert promote_decision(view(*A_PRIMARY), view(*B_NONPRIMARY)) is PromoteDecision.ALREADY_PRIMARY
    assert promote_decision(view(*A_PRIMARY), view(*B_PROMOTED)) is PromoteDecision.SPLIT_BRAIN
    assert promote_decision(view("rbd-info-disk1-site-a-before-mirror.json"), view(*B_NONPRIMARY)) \
        is PromoteDecision.NOT_MIRRORED
    assert promote_decision(MISSING, view(*A_PRIMARY)) is PromoteDecision.NOT_MIRRORED


# --- worker views (captured from rbd_worker.py on the lab.ceph clusters) ------------------------------------------

def test_worker_views() -> None:
    a, b = worker("a-primary"), worker("b-nonprimary-synced")
    assert a.primary and a.mirroring and a.mode == "snapshot" and all(s.own for s in a.snaps)
    assert not b.primary and b.newest is not None and b.newest.primary_snap_id == a.newest_own.id  # type: ignore[union-attr]
    assert sync_state(b, a, now_wall=2e9).in_sync
    assert last_snapshot_id(b) == last_snapshot_id(a)
    assert worker("missing") == MISSING


def test_worker_handover_sequence() -> None:
    a_demoted, arrived = worker("a-demoted"), worker("b-demotion-arrived")
    assert a_demoted.newest is not None and a_demoted.newest.state == "primary-demoted"
    assert promote_decision(worker("b-nonprimary-synced"), a_demoted) is PromoteDecision.WAIT_FOR_DEMOTION
    assert promote_decision(arrived, a_demoted) is PromoteDecision.PROMOTE
    promoted = worker("b-promoted")
    assert promoted.primary
    assert promote_decision(worker("a-after-cutover-peer-view-from-b"), promoted) is PromoteDecision.PEER_PRIMARY
