"""Round-trip latency and throughput of a no-op CNFPeer call (``Ping``): mTLS vs plaintext, same run.

The server runs in a child process (as a peer agent would), serving the same ``PeerServer`` twice: once
with the federation's mTLS (fresh CA and certificates in a temp dir) and once plaintext. The client
goes through the real ``PeerConnection`` (identity metadata, deadline, retry wrapper), so the figure is
what the engine pays per cloud-local step on top of the driver's own work.

    .venv/bin/python benchmarks/peer_rpc.py [--calls 1000] [--concurrency 16] [--seconds 2] [--rounds 3]

Last line: ``BENCH peer_rpc p50_ms=… p99_ms=… calls_per_s=… tls_overhead_ratio=…`` where the headline
figures are for mTLS and ``tls_overhead_ratio`` = mTLS p50 / plaintext p50.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cnf.grpc.peer_client import PeerConnection  # noqa: E402
from cnf.grpc.server import PeerServer  # noqa: E402
from cnf.grpc.tls import TlsFiles, init_ca, issue_cert  # noqa: E402
from cnf.sim.demo import DEMO_CLUSTERS, demo_fabric, sim_drivers  # noqa: E402

SERVER_ID = DEMO_CLUSTERS[0][0]
CLIENT_ID = "bench-master"


def _quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


async def serve(pki: Path) -> None:
    """Child: one TLS and one plaintext server over the same sim drivers; print ports, run until stdin closes."""
    _quiet()
    drivers = sim_drivers(demo_fabric(), SERVER_ID)
    tls = PeerServer(drivers, tls=TlsFiles.in_dir(pki, SERVER_ID), known_peers={CLIENT_ID})
    plain = PeerServer(drivers, allow_plaintext=True)
    print("PORTS", await tls.start(), await plain.start(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await tls.stop(0)
    await plain.stop(0)


def _pct(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def measure(conn: PeerConnection, calls: int, concurrency: int, seconds: float) -> dict[str, float]:
    for _ in range(100):  # warm-up: connection, handshake, code paths
        await conn.ping()
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await conn.ping()
        lat.append((time.perf_counter() - t0) * 1000.0)
    lat.sort()
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await conn.ping()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {"p50_ms": statistics.median(lat), "p99_ms": _pct(lat, 0.99), "mean_ms": statistics.fmean(lat),
            "calls_per_s": done / elapsed}


async def run(args: argparse.Namespace, pki: Path, tls_port: int, plain_port: int) -> None:
    tls_conn = PeerConnection(f"127.0.0.1:{tls_port}", peer_cluster_id=SERVER_ID, local_cluster_id=CLIENT_ID,
                              tls=TlsFiles.in_dir(pki, CLIENT_ID), epoch_provider=lambda: 1)
    plain_conn = PeerConnection(f"127.0.0.1:{plain_port}", peer_cluster_id=SERVER_ID, local_cluster_id=CLIENT_ID,
                                tls=None, allow_plaintext=True, epoch_provider=lambda: 1)
    # alternate rounds so background load on a shared machine hits both transports alike
    rounds: dict[str, list[dict[str, float]]] = {"plain": [], "tls": []}
    for _ in range(args.rounds):
        rounds["plain"].append(await measure(plain_conn, args.calls, args.concurrency, args.seconds))
        rounds["tls"].append(await measure(tls_conn, args.calls, args.concurrency, args.seconds))
    plain = {k: statistics.median(r[k] for r in rounds["plain"]) for k in rounds["plain"][0]}
    tls = {k: statistics.median(r[k] for r in rounds["tls"]) for k in rounds["tls"][0]}
    await tls_conn.close()
    await plain_conn.close()
    for name, r in (("plaintext", plain), ("mtls", tls)):
        print(f"{name:9s} p50={r['p50_ms']:.3f} ms  p99={r['p99_ms']:.3f} ms  mean={r['mean_ms']:.3f} ms  "
              f"throughput={r['calls_per_s']:.0f} calls/s (concurrency {args.concurrency})")
    ratio = tls["p50_ms"] / plain["p50_ms"]
    tput_ratio = plain["calls_per_s"] / tls["calls_per_s"]
    print(f"mTLS/plaintext: latency x{ratio:.2f}, throughput cost x{tput_ratio:.2f} "
          f"(median of {args.rounds} alternating rounds: {args.calls} sequential calls, then "
          f"{args.seconds:.0f} s at concurrency {args.concurrency})")
    print(f"BENCH peer_rpc p50_ms={tls['p50_ms']:.3f} p99_ms={tls['p99_ms']:.3f} "
          f"calls_per_s={tls['calls_per_s']:.0f} tls_overhead_ratio={ratio:.2f}")


def bench(args: argparse.Namespace) -> None:
    _quiet()
    with tempfile.TemporaryDirectory(prefix="cnf-bench-pki-") as tmp:
        pki = Path(tmp)
        init_ca(pki)
        issue_cert(pki, SERVER_ID)
        issue_cert(pki, CLIENT_ID)
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(pki)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            while line and not line.startswith("PORTS"):
                line = child.stdout.readline()
            if not line:
                raise SystemExit("benchmark server did not start")
            _, tls_port, plain_port = line.split()
            asyncio.run(run(args, pki, int(tls_port), int(plain_port)))
        finally:
            if child.stdin:
                child.stdin.close()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating plaintext/mTLS rounds (median)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(Path(args.serve)))
    else:
        bench(args)


if __name__ == "__main__":
    main()
