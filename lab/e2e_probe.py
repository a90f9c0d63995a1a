"""The e2e lab's instruments: a 10 ms ICMP probe, the serial heartbeat tail, the route server's route, and the rules.

Why: what a user of a migrated VM notices is measured by the lab itself, never taken from CNF's record:

* ``PingProbe``: an ICMP echo prober in the probe namespace (outside both clouds), one request every 10 ms with
  its send time, every reply with its receive time (host wall clock, like QEMU's event timestamps). It is this
  file run as a script (stdlib only) under ``ip netns exec``: a process of its own, so the lab's event loop and
  the probe never delay each other. Network blackout = ``probe_blackout``: the longest time without any reply
  (a run of lost requests, or of requests answered only late by a guest that was paused), less one interval.
* ``SerialTail``: host wall-clock time of every ``HB n`` line of a guest's serial log (guest pause), and of every
  ``DISK n ok|BAD`` line of the guest's own disk writer; ``disk_verdict`` judges those (data integrity).
* ``RouteWatch`` + ``route_blackout_ms``: the route server's kernel route for the /32 and how long it led to no
  running guest (the first slice's approximation, kept as a secondary figure: it needs no packets).

CLI (what ``PingProbe`` runs): ``python3 -I lab/e2e_probe.py ping --target IP --interval-ms 10 --out FILE``;
the file gets ``S <seq> <wall time>`` per request and ``R <seq> <wall time>`` per reply; SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HB_RE = re.compile(rb"^HB (\d+)\s*$")
#: the guest's own disk check (``lab.guest`` ``disk_ms``): ``DISK <n> ok`` or ``DISK <n> BAD <what>``
DISK_RE = re.compile(rb"^DISK (\d+) (.*?)\s*$")
#: what a sick guest kernel prints on its console (oops, BUG, list corruption, panic)
KERNEL_ERROR_RE = re.compile(rb"(BUG[: ]|Oops|corruption|Kernel panic|general protection fault|Call Trace)")
_ECHO_REQUEST, _ECHO_REPLY = 8, 0


# --- the ICMP prober (runs as its own process inside the probe namespace) ------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    """An ICMP echo request whose payload carries the full sequence number (the header's is only 16 bits)."""
    payload = struct.pack("!Q", seq) + b"cnf-e2e-probe".ljust(48, b".")
    header = struct.pack("!BBHHH", _ECHO_REQUEST, 0, 0, ident, seq & 0xFFFF)
    return struct.pack("!BBHHH", _ECHO_REQUEST, 0, _checksum(header + payload), ident, seq & 0xFFFF) + payload


def parse_echo_reply(packet: bytes, ident: int, source: str, target: str) -> int | None:
    """The sequence number of an IPv4 packet that is our echo reply from ``target``, else None."""
    if source != target or len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < 16:
        return None
    typ, _code, _sum, rid, _seq16 = struct.unpack("!BBHHH", icmp[:8])
    if typ != _ECHO_REPLY or rid != ident:
        return None
    return int(struct.unpack("!Q", icmp[8:16])[0])


def run_prober(target: str, interval_s: float, out: Path) -> int:
    """Ping ``target`` every ``interval_s`` until SIGTERM, logging sends and replies to ``out``.

    The schedule is absolute (request n at start + n * interval); a process delayed by the machine sends the
    missed request at once but never a burst (the schedule restarts from now).
    """
    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    ident = os.getpid() & 0xFFFF
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    with out.open("w", buffering=1) as log:
        seq = 0
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_at:
                with contextlib.suppress(OSError):  # no route for a moment (e.g. while the RS has none)
                    sock.sendto(echo_request(ident, seq), (target, 0))
                log.write(f"S {seq} {time.time():.6f}\n")
                seq += 1
                next_at += interval_s
                if now - next_at > interval_s:
                    next_at = now + interval_s
            ready, _, _ = select.select([sock], [], [], max(0.0, next_at - time.monotonic()))
            while ready:
                try:
                    packet, (source, _port) = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                got = parse_echo_reply(packet, ident, source, target)
                if got is not None:
                    log.write(f"R {got} {time.time():.6f}\n")


def read_probe_log(path: Path) -> tuple[dict[int, float], dict[int, float]]:
    """``(sends, replies)``: sequence number -> wall time, from a prober's log (a partial last line is skipped).

    A duplicated reply keeps the first receive time.
    """
    sends: dict[int, float] = {}
    replies: dict[int, float] = {}
    try:
        text = path.read_text()
    except OSError:
        return sends, replies
    lines = text.split("\n")
    for line in lines[:-1]:  # the last element is "" or a line the prober is still writing
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("S", "R"):
            continue
        try:
            seq, ts = int(parts[1]), float(parts[2])
        except ValueError:
            continue
        if parts[0] == "S":
            sends[seq] = ts
        else:
            replies.setdefault(seq, ts)
    return sends, replies


@dataclass(frozen=True)
class ProbeFigures:
    """What the probe saw in a window: its longest silence and the requests around it (times: wall clock)."""

    blackout_ms: float
    silent_from: float  # receive time of the last reply before the longest silence (or the window's start)
    silent_until: float | None  # receive time of the first reply after it (None: silent until the window's end)
    lost: int  # requests sent during the silence that were never answered
    late: int  # requests sent during the silence (> 1 interval before its end) answered only when it ended
    sent: int
    answered: int
    interval_ms: float = 10.0

    @property
    def resumed(self) -> bool:
        """Replies came after the longest silence (a "silence" of about one interval is no silence at all)."""
        return self.silent_until is not None or self.blackout_ms <= self.interval_ms


def probe_blackout(sends: dict[int, float], replies: dict[int, float], start: float, end: float, *,
                   interval_s: float = 0.01) -> ProbeFigures:
    """The longest time in ``[start, end]`` in which no reply arrived, less one probe interval (pure).

    Why silence and not only lost requests: a guest paused for a while (and resumed where it was, e.g. when a
    migration is given up) answers the requests queued on its tap late, in a burst; none is lost, yet the user saw
    nothing for the whole pause. When replies stop because the path leads nowhere, both definitions agree: k lost
    requests at a 10 ms interval read k x 10 ms. Steady replies read ~0 (one interval apart). A silence still open
    at ``end`` lasts to ``end`` (``resumed`` is False). Requests sent too close to ``end`` for their reply to have
    arrived must be left out by the caller (choose ``end`` a few hundred ms before the probe stopped).
    """
    received = sorted(t for s, t in replies.items() if start < t < end and s in sends)
    points = [start, *received, end]
    gap, i = max((b - a, i) for i, (a, b) in enumerate(itertools.pairwise(points)))
    silent_from = points[i]
    silent_until = points[i + 1] if i + 1 < len(points) - 1 else None
    until = silent_until or end
    during = [s for s, t in sends.items() if silent_from <= t < until]
    seqs = [s for s, t in sends.items() if start <= t <= end]
    return ProbeFigures(blackout_ms=round(max(0.0, gap - interval_s) * 1000.0, 1), silent_from=silent_from,
                        silent_until=silent_until, lost=sum(1 for s in during if s not in replies),
                        late=sum(1 for s in during if s in replies and sends[s] < until - interval_s), sent=len(seqs),
                        answered=sum(1 for s in seqs if s in replies), interval_ms=interval_s * 1000.0)


def answered_between(sends: dict[int, float], replies: dict[int, float], start: float, end: float) -> int:
    """How many requests sent in ``[start, end)`` were answered."""
    return sum(1 for s, t in sends.items() if start <= t < end and s in replies)


class PingProbe:
    """The prober process in ``namespace`` (started by ``start``, ended by its PID in ``stop``)."""

    def __init__(self, namespace: str, target: str, out: Path, *, interval_ms: float = 10.0) -> None:
        self.namespace = namespace
        self.target = target
        self.out = out
        self.interval_ms = interval_ms
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.namespace, sys.executable, "-I",
                str(Path(__file__).resolve()), "ping", "--target", self.target, "--interval-ms",
                str(self.interval_ms), "--out", str(self.out)]
        with self.out.with_suffix(".err").open("wb") as err:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def log(self) -> tuple[dict[int, float], dict[int, float]]:
        return read_probe_log(self.out)

    def wait_answered(self, count: int, *, after: float, within_s: float, consecutive: bool = False) -> bool:
        """Wait until ``count`` requests sent after ``after`` were answered (``consecutive``: in a row, ending
        with the newest answered one). False when ``within_s`` passed first or the prober died."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            sends, replies = self.log()
            seqs = sorted(s for s, t in sends.items() if t > after)
            if consecutive:
                answered = [s in replies for s in seqs]
                while answered and not answered[-1]:  # the newest may still be in flight
                    answered.pop()
                streak = 0
                for ok in reversed(answered):
                    if not ok:
                        break
                    streak += 1
                if streak >= count:
                    return True
            elif sum(1 for s in seqs if s in replies) >= count:
                return True
            if self._proc is not None and self._proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None


# --- serial heartbeat --------------------------------------------------------------------------------------


def kernel_errors(serial: Path) -> list[str]:
    """Kernel error lines (``KERNEL_ERROR_RE``) anywhere in a serial log, at most 10."""
    try:
        data = serial.read_bytes()
    except OSError:
        return []
    return [ln.strip().decode(errors="replace")[:200] for ln in data.split(b"\n") if KERNEL_ERROR_RE.search(ln)][:10]


class SerialTail(threading.Thread):
    """Timestamps (host wall clock) every ``HB n`` line appended to a serial log, surviving file re-creation.

    Lines already in the file when the tail starts are skipped (only what happens during the migration counts).
    Kernel error lines (oops, BUG, list corruption) are kept in ``kernel_errors``: a guest whose memory a
    migration corrupted may keep answering pings while its processes die.
    """

    def __init__(self, path: Path, period_s: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.period_s = period_s
        self.beats: list[tuple[float, int]] = []
        self.disk: list[tuple[float, int, str]] = []  # (seen at, record n, "ok" or "BAD ...")
        self.kernel_errors: list[str] = []
        self.first_fragment: tuple[float, bytes] | None = None  # a non-heartbeat line before the first beat
        self._stop_flag = threading.Event()
        try:
            st = path.stat()
            self._ino, self._off = st.st_ino, st.st_size
        except OSError:
            self._ino, self._off = 0, 0
        self._partial = b""

    def run(self) -> None:
        while not self._stop_flag.is_set():
            self._poll()
            time.sleep(self.period_s)
        self._poll()

    def _poll(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        if st.st_ino != self._ino or st.st_size < self._off:  # a new QEMU created the file again
            self._ino, self._off, self._partial, self.first_fragment = st.st_ino, 0, b"", None
        if st.st_size == self._off:
            return
        now = time.time()
        with self.path.open("rb") as f:
            f.seek(self._off)
            data = f.read()
        self._off += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            m = HB_RE.match(line.strip())
            d = DISK_RE.match(line.strip())
            if m:
                self.beats.append((now, int(m.group(1))))
            elif d:
                self.disk.append((now, int(d.group(1)), d.group(2).decode(errors="replace")[:200]))
            elif KERNEL_ERROR_RE.search(line):
                self.kernel_errors.append(line.strip().decode(errors="replace")[:200])
            elif not self.beats and not self.disk and self.first_fragment is None:
                self.first_fragment = (now, line)

    @property
    def partial(self) -> bytes:
        """Text after the last newline: the start of a line the guest was printing when its QEMU stopped."""
        return self._partial

    def joined_beat(self, source: SerialTail) -> tuple[float, int] | None:
        """The heartbeat whose line the switchover split: its start ends ``source``'s log, its end begins this one.

        Why: the guest may be stopped in the middle of printing ``HB n``; the destination then starts with the rest
        (e.g. ``B 1457``). Joined, it is beat n, printed at the destination (timestamp of the fragment here).
        """
        if self.first_fragment is None or not source.partial:
            return None
        t, rest = self.first_fragment
        m = HB_RE.match((source.partial + rest).strip())
        return (t, int(m.group(1))) if m else None

    def joined_disk(self, source: SerialTail) -> tuple[float, int, str] | None:
        """Like ``joined_beat``, for a ``DISK n ...`` line the switchover split."""
        if self.first_fragment is None or not source.partial:
            return None
        t, rest = self.first_fragment
        d = DISK_RE.match((source.partial + rest).strip())
        return (t, int(d.group(1)), d.group(2).decode(errors="replace")[:200]) if d else None

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(5)


def disk_verdict(source: list[tuple[float, int, str]], destination: list[tuple[float, int, str]], *, moved: bool,
                 t_end: float, split_at: float | None = None) -> dict[str, object]:
    """Judge the guest's own disk records (``DISK n ok|BAD``) seen during one migration (pure).

    Each record line says the guest read back record n-1 from its disk intact (all 512 bytes, O_DIRECT) and wrote
    record n. The handover kept every write when the first record after the move continues the last one before
    it (``first_after == last_before + 1``: that read at the destination returned what the source wrote last) and
    no line says BAD; the guest kept writing when at least one record came after the migration ended. ``moved``:
    the records after the move are ``destination``'s; else (the migration was given up) the source's, split at
    ``split_at`` (the failure injection) or, without it, at the longest gap between two source records (the
    pause). ``ok`` is None when the guest wrote no records at all (a guest without ``disk_ms``).
    """
    if not source and not destination:
        return {"ok": None, "why": "the guest wrote no disk records (no disk_ms= on its command line)"}
    bad = [f"{n} {v}" for _, n, v in [*source, *destination] if v != "ok"][:5]
    if moved:
        before, after = source, destination
    else:
        if split_at is None and len(source) >= 2:
            gaps = [(b[0] - a[0], a[0]) for a, b in itertools.pairwise(source)]
            split_at = max(gaps)[1] + 1e-6
        before = [r for r in source if split_at is None or r[0] <= split_at]
        after = [r for r in source if split_at is not None and r[0] > split_at]
    last_before = before[-1][1] if before else None
    first_after = after[0][1] if after else None
    counters = [n for _, n, _ in before] + [n for _, n, _ in after]
    contiguous = all(b == a + 1 for a, b in itertools.pairwise(counters))
    after_end = sum(1 for t, _, _ in after if t > t_end)
    continues = last_before is not None and first_after == last_before + 1
    why = ("; ".join(x for x in (
        f"BAD lines: {bad}" if bad else "",
        "" if continues else f"first record after ({first_after}) does not follow the last before ({last_before})",
        "" if contiguous else "records skipped or repeated",
        "" if after_end >= 1 else "no record after the migration ended") if x))
    return {"ok": not why, "why": why, "last_before": last_before, "first_after": first_after,
            "continues": continues, "contiguous": contiguous, "last_record": counters[-1] if counters else None,
            "bad": bad, "records_before": len(before),
            "records_after": len(after), "records_after_end": after_end}


# --- the route server's route (secondary figure) ---------------------------------------------------------------


class RouteWatch(threading.Thread):
    """The route server's forwarding route for the /32, as the kernel in its namespace has it, with change times.

    Why the kernel FIB and not ``vtysh``: it is what forwards the probe's packets, and ``ip monitor route`` reports
    every change as it happens. The first state is read once with ``ip route show``; ``changes`` holds
    ``(wall time, next-hop or None)``.
    """

    VIA_RE = re.compile(r"\bvia (\S+)")

    def __init__(self, namespace: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.namespace = namespace
        self.address = prefix.split("/")[0]
        self.changes: list[tuple[float, str | None]] = []
        self._proc: subprocess.Popen[str] | None = None

    def current(self) -> str | None:
        p = subprocess.run(["ip", "-n", self.namespace, "route", "show", f"{self.address}/32"], capture_output=True,
                           text=True, timeout=10, check=False)
        m = self.VIA_RE.search(p.stdout)
        return m.group(1) if m else None

    def start(self) -> None:
        self._proc = subprocess.Popen(["ip", "-n", self.namespace, "monitor", "route"], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.changes.append((time.time(), self.current()))
        super().start()

    def run(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            now = time.time()
            words = line.split()
            if not words:
                continue
            deleted = words[0] == "Deleted"
            dest = words[1] if deleted and len(words) > 1 else words[0]
            if dest not in (self.address, f"{self.address}/32"):
                continue
            m = self.VIA_RE.search(line)
            nh = None if deleted or not m else m.group(1)
            if deleted and self.changes and m and self.changes[-1][1] != m.group(1):
                continue  # the old path of a replaced route going away: the new one is already recorded
            if not self.changes or self.changes[-1][1] != nh:
                self.changes.append((now, nh))

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        self.join(5)


def route_blackout_ms(changes: list[tuple[float, str | None]], start: float, end: float, src_nh: str, dst_nh: str,
                      stop_at: float | None, resume_at: float | None) -> float:
    """Longest interval in [start, end] in which the RS's best path does not lead to a running guest (pure).

    The guest runs at the source before ``stop_at`` (source STOP) and at the destination from ``resume_at``
    (destination RESUME); in between it runs nowhere. A lower bound of what the probe sees (no neighbour
    resolution, no forwarding).
    """
    stop_at = stop_at if stop_at is not None else end
    resume_at = resume_at if resume_at is not None else end
    marks = sorted({start, end, stop_at, resume_at, *(t for t, _ in changes if start < t < end)})

    def nh_at(t: float) -> str | None:
        cur: str | None = None
        for ct, nh in changes:
            if ct <= t:
                cur = nh
        return cur

    def served(t: float) -> bool:
        nh = nh_at(t)
        return (t < stop_at and nh == src_nh) or (t >= resume_at and nh == dst_nh)

    longest, run_start = 0.0, None
    for i in range(len(marks) - 1):
        mid = (marks[i] + marks[i + 1]) / 2
        if not served(mid):
            run_start = marks[i] if run_start is None else run_start
            longest = max(longest, marks[i + 1] - run_start)
        else:
            run_start = None
    return round(longest * 1000.0, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab/e2e_probe.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ping", help="ICMP echo every --interval-ms until SIGTERM, log sends/replies to --out")
    p.add_argument("--target", required=True)
    p.add_argument("--interval-ms", type=float, default=10.0)
    p.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    return run_prober(args.target, args.interval_ms / 1000.0, Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
