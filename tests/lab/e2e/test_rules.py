"""The e2e lab's measuring rules (pure): probe blackout, route blackout, which host answered, the ICMP codec."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from lab.e2e_probe import (
    SerialTail,
    disk_verdict,
    echo_request,
    kernel_errors,
    parse_echo_reply,
    probe_blackout,
    read_probe_log,
    route_blackout_ms,
)
from lab.e2e_report import replies_from
from lab.guest import disk_record, parse_disk_record

A, B = "10.255.0.21", "10.255.0.22"


def _probe(answered: list[bool], *, t0: float = 100.0, step: float = 0.01) -> tuple[dict[int, float], dict[int, float]]:
    sends = {i: t0 + i * step for i in range(len(answered))}
    replies = {i: sends[i] + 0.002 for i, ok in enumerate(answered) if ok}
    return sends, replies


# --- the probe's blackout ---------------------------------------------------------------------------------------


def test_steady_replies_no_blackout() -> None:
    sends, replies = _probe([True] * 50)
    f = probe_blackout(sends, replies, 100.0, 100.5)
    assert (f.blackout_ms, f.lost, f.late, f.resumed) == (0.0, 0, 0, True)
    assert (f.sent, f.answered) == (50, 50)


def test_lost_run_reads_lost_requests_times_the_interval() -> None:
    sends, replies = _probe([True] * 10 + [False] * 3 + [True] * 5 + [False] * 30 + [True] * 10)
    f = probe_blackout(sends, replies, 100.0, 100.58)
    assert f.blackout_ms == 300.0
    assert (f.lost, f.late) == (30, 0)
    assert f.silent_from == replies[17] and f.silent_until == replies[48]
    assert f.resumed


def test_silence_open_at_the_end_lasts_to_the_end_and_is_not_resumed() -> None:
    sends, replies = _probe([True] * 10 + [False] * 40)
    f = probe_blackout(sends, replies, 100.0, 101.0)
    assert f.blackout_ms == 898.0  # last reply at 100.092, window ends at 101.0, less one interval
    assert f.lost == 40 and not f.resumed and f.silent_until is None


def test_requests_answered_late_in_a_burst_count_as_silence() -> None:
    # a paused guest that resumes where it was answers the queued requests all at once: nothing is lost
    sends, replies = _probe([True] * 50)
    for s in range(10, 30):
        replies[s] = 100.3  # before request 30's own reply (sent at 100.30, answered at 100.302)
    f = probe_blackout(sends, replies, 100.0, 100.5)
    assert f.blackout_ms == 198.0  # from the reply at 100.092 to the burst at 100.30, less one interval
    assert (f.lost, f.late) == (0, 19)  # request 29, sent one interval before the burst, is not "late"


def test_steady_replies_ending_just_before_the_window_end_count_as_resumed() -> None:
    sends, replies = _probe([True] * 50)
    f = probe_blackout(sends, replies, 100.0, 100.507)  # the last gap (15 ms) is the longest: still no silence
    assert f.silent_until is None and f.blackout_ms == 5.0
    assert f.resumed


def test_replies_outside_the_window_do_not_count() -> None:
    sends, replies = _probe([False] * 20 + [True] * 30)
    f = probe_blackout(sends, replies, 100.2, 100.5)
    assert f.blackout_ms == 0.0 and f.sent == 30


def test_log_parser_skips_partial_lines_and_keeps_first_duplicate(tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    log.write_text("S 0 100.000000\nS 1 100.010000\nR 0 100.002000\nR 0 100.003000\nbad line\nS 2 100.02\nR 1 10")
    sends, replies = read_probe_log(log)
    assert sends == {0: 100.0, 1: 100.01, 2: 100.02}
    assert replies == {0: 100.002}  # "R 1 10" is still being written
    assert read_probe_log(tmp_path / "missing.log") == ({}, {})


# --- the ICMP codec ---------------------------------------------------------------------------------------------


def _reply_packet(ident: int, seq: int, *, typ: int = 0) -> bytes:
    icmp = bytearray(echo_request(ident, seq))
    icmp[0] = typ
    ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                            socket.inet_aton("10.99.0.5"), socket.inet_aton("10.98.0.2"))
    return ip_header + bytes(icmp)


def test_echo_request_checksum_verifies() -> None:
    pkt = echo_request(0x1234, 70000)
    total = sum(struct.unpack(f"!{len(pkt) // 2}H", pkt))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF
    assert struct.unpack("!H", pkt[6:8])[0] == 70000 & 0xFFFF


def test_reply_parser_takes_the_full_sequence_from_the_payload() -> None:
    assert parse_echo_reply(_reply_packet(7, 70000), 7, "10.99.0.5", "10.99.0.5") == 70000


def test_reply_parser_ignores_other_ids_types_and_sources() -> None:
    assert parse_echo_reply(_reply_packet(8, 1), 7, "10.99.0.5", "10.99.0.5") is None
    assert parse_echo_reply(_reply_packet(7, 1, typ=8), 7, "10.99.0.5", "10.99.0.5") is None
    assert parse_echo_reply(_reply_packet(7, 1), 7, "10.99.0.6", "10.99.0.5") is None
    assert parse_echo_reply(b"\x45" + b"\0" * 10, 7, "10.99.0.5", "10.99.0.5") is None


# --- which host answered ----------------------------------------------------------------------------------------


def test_replies_come_from_the_tap_whose_from_guest_counter_rose() -> None:
    before = {"a": {"to_guest": 10, "from_guest": 10}, "b": {"to_guest": 0, "from_guest": 0}}
    after = {"a": None, "b": {"to_guest": 40, "from_guest": 41}}
    assert replies_from(before, after) == ["b"]


def test_a_tap_created_between_the_samples_counts_from_zero() -> None:
    assert replies_from({"a": None, "b": None}, {"a": None, "b": {"to_guest": 3, "from_guest": 3}}) == ["b"]
    assert replies_from({"a": {"to_guest": 5, "from_guest": 5}}, {"a": {"to_guest": 9, "from_guest": 5}}) == []


# --- the route server's route (secondary figure) ----------------------------------------------------------------


def test_route_switches_after_resume_blackout_runs_from_stop_to_switch() -> None:
    changes: list[tuple[float, str | None]] = [(0.0, A), (5.0, B)]
    assert route_blackout_ms(changes, 0.0, 10.0, A, B, stop_at=2.0, resume_at=3.0) == 3000.0


def test_route_switched_before_resume_blackout_is_the_pause() -> None:
    changes: list[tuple[float, str | None]] = [(0.0, A), (2.5, B)]
    assert route_blackout_ms(changes, 0.0, 10.0, A, B, stop_at=2.0, resume_at=3.0) == 1000.0


def test_route_switched_before_stop_counts_from_the_switch() -> None:
    changes: list[tuple[float, str | None]] = [(0.0, A), (1.0, B)]
    assert route_blackout_ms(changes, 0.0, 10.0, A, B, stop_at=2.0, resume_at=3.0) == 2000.0


def test_route_missing_for_a_while_after_resume_is_the_longest_gap() -> None:
    changes: list[tuple[float, str | None]] = [(0.0, A), (3.5, B), (6.0, None), (8.0, B)]
    assert route_blackout_ms(changes, 0.0, 10.0, A, B, stop_at=2.0, resume_at=2.2) == 2000.0


def test_guest_never_resumed_blackout_lasts_to_the_end() -> None:
    assert route_blackout_ms([(0.0, A)], 0.0, 10.0, A, B, stop_at=4.0, resume_at=None) == 6000.0


# --- the serial heartbeat ---------------------------------------------------------------------------------------


def _tailed(path: Path, content: bytes) -> SerialTail:
    tail = SerialTail(path)  # created before the file: everything written later counts
    path.write_bytes(content)
    tail.start()
    tail.stop()  # stop() polls once more after the thread ends: the file is read completely
    return tail


def test_heartbeat_split_by_the_switchover_is_joined(tmp_path: Path) -> None:
    src = _tailed(tmp_path / "src.log", b"HB 1455\nHB 1456\nH")
    dst = _tailed(tmp_path / "dst.log", b"B 1457\nHB 1458\n")
    assert [n for _, n in src.beats] == [1455, 1456] and src.partial == b"H"
    assert [n for _, n in dst.beats] == [1458]
    joined = dst.joined_beat(src)
    assert joined is not None and joined[1] == 1457


def test_no_split_nothing_joined_and_kernel_errors_are_kept(tmp_path: Path) -> None:
    src = _tailed(tmp_path / "src.log", b"HB 1\nHB 2\n")
    dst = _tailed(tmp_path / "dst.log", b"HB 3\n[ 441.8] list_del corruption. prev->next should be ...\nHB 4\n")
    assert dst.joined_beat(src) is None
    assert [n for _, n in dst.beats] == [3, 4]
    assert dst.kernel_errors and "list_del corruption" in dst.kernel_errors[0]
    assert kernel_errors(tmp_path / "dst.log") == dst.kernel_errors


# --- the guest's own disk records ------------------------------------------------------------------------------


def _records(first: int, count: int, t0: float, *, step: float = 0.2,
             bad: int | None = None) -> list[tuple[float, int, str]]:
    return [(t0 + i * step, first + i, "BAD read CNFDISK 3" if first + i == bad else "ok") for i in range(count)]


def test_disk_records_continuing_on_the_destination_are_ok() -> None:
    v = disk_verdict(_records(10, 5, 100.0), _records(15, 4, 101.5), moved=True, t_end=101.8)
    assert (v["ok"], v["last_before"], v["first_after"], v["records_after_end"]) == (True, 14, 15, 2), v


def test_destination_reading_an_older_record_is_bad() -> None:
    # the destination's first read-back did not return the source's last write: the guest says BAD
    v = disk_verdict(_records(10, 5, 100.0), _records(15, 4, 101.5, bad=15), moved=True, t_end=101.0)
    assert v["ok"] is False and v["bad"] == ["15 BAD read CNFDISK 3"], v


def test_lost_or_missing_records_after_the_move_fail() -> None:
    skipped = disk_verdict(_records(10, 5, 100.0), _records(16, 4, 101.5), moved=True, t_end=101.0)
    assert skipped["ok"] is False and not skipped["continues"], skipped
    stopped = disk_verdict(_records(10, 5, 100.0), _records(15, 2, 101.5), moved=True, t_end=102.0)
    assert stopped["ok"] is False and stopped["records_after_end"] == 0, stopped  # the guest stopped writing


def test_given_up_migration_splits_the_source_records_at_the_pause() -> None:
    source = _records(10, 5, 100.0) + _records(15, 5, 102.0)  # paused 1.2 s between record 14 and 15
    v = disk_verdict(source, [], moved=False, t_end=102.5)
    assert (v["ok"], v["last_before"], v["first_after"], v["records_after_end"]) == (True, 14, 15, 2), v
    at = disk_verdict(source, [], moved=False, t_end=102.5, split_at=100.5)
    assert (at["last_before"], at["first_after"]) == (12, 13), at


def test_a_guest_without_disk_records_is_not_judged() -> None:
    assert disk_verdict([], [], moved=True, t_end=1.0)["ok"] is None


def test_disk_record_round_trip_and_split_line(tmp_path: Path) -> None:
    assert parse_disk_record(disk_record(41)) == 41
    assert parse_disk_record(disk_record(41).replace(b"CNFDISK 41", b"CNFDISK 42")) is None  # checksum
    assert parse_disk_record(disk_record(41)[:-1] + b"x") is None and parse_disk_record(b"\0" * 512) is None
    src = _tailed(tmp_path / "src.log", b"DISK 7 ok\nHB 3\nDISK 8 o")
    dst = _tailed(tmp_path / "dst.log", b"k\nHB 4\nDISK 9 BAD read xyz \n")
    assert [(n, v) for _, n, v in src.disk] == [(7, "ok")]
    assert [(n, v) for _, n, v in dst.disk] == [(9, "BAD read xyz")]
    joined = dst.joined_disk(src)
    assert joined is not None and joined[1:] == (8, "ok")


# --- the route rule's pause bounds without QEMU's events (through the agents) ------------------------------------


def _observation(tmp_path: Path, route: list[tuple[float, str | None]]) -> object:
    from types import SimpleNamespace

    from lab.e2e_report import Observation

    # heartbeats every 100 ms at the source until t=101.0 (HB 10), at the destination from t=101.4 (HB 11)
    src = SimpleNamespace(beats=[(100.0 + i / 10, i) for i in range(11)], disk=[], kernel_errors=[], partial=b"")
    dst = SimpleNamespace(beats=[(101.4 + i / 10, 11 + i) for i in range(10)], disk=[], kernel_errors=[],
                          joined_beat=lambda _src: None, joined_disk=lambda _src: None)
    sends, replies = _probe([True] * 400, t0=99.5)
    return Observation(src=A, dst=B, t0=99.9, t_end=102.5, t_probe_start=99.5, t_probe_stop=104.0, sends=sends,
                       replies=replies, src_tail=src, dst_tail=dst,  # type: ignore[arg-type]
                       route=SimpleNamespace(changes=route),  # type: ignore[arg-type]
                       src_next_hop=A, dst_next_hop=B, taps_at_end={}, taps_after={}, hb_ms=100)


def _record(context: dict[str, object]) -> object:
    from types import SimpleNamespace

    return SimpleNamespace(context=context, state="completed", error=None, steps=[])


def test_route_rule_takes_the_pause_from_the_heartbeat_gap_without_qemu_events(tmp_path: Path) -> None:
    from lab.e2e_report import figures

    # the route server flips to the destination at t=101.2, inside the pause (last beat 101.0, next 101.4): the
    # route led to no running guest for the pause only (without bounds: from the flip to the window's end, 2.3 s)
    ob = _observation(tmp_path, [(99.0, A), (101.2, B)])
    fig = figures(_record({}), [], ob)  # type: ignore[arg-type]
    assert fig["route_pause_marks"] == "heartbeat_gap"
    assert fig["guest_pause_ms_heartbeat"] == 300.0
    assert fig["route_blackout_ms"] == 400.0
    # flipped 0.5 s after the guest resumed: from the last source beat (101.0) until the flip (101.9)
    late = figures(_record({}), [], _observation(tmp_path, [(99.0, A), (101.9, B)]))  # type: ignore[arg-type]
    assert late["route_blackout_ms"] == 900.0
    # with QEMU's events their STOP/RESUME win
    qmp = figures(_record({"e2e_src_stopped_at": 101.05, "e2e_dst_resumed_at": 101.35}), [],  # type: ignore[arg-type]
                  _observation(tmp_path, [(99.0, A), (101.2, B)]))
    assert (qmp["route_pause_marks"], qmp["route_blackout_ms"]) == ("qemu_events", 300.0)
