"""A stand-alone peer server over one sim cloud, as a separate process (used by test_processes.py).

    python sim_peer_agent.py --cluster-id ID --tls-dir D --known A,B --epoch-file F

Prints ``PORT <n>`` once serving on 127.0.0.1 (free port), serves until stdin closes.
Each process has its own sim world: good for transport, identity and fencing across processes, not for
cross-cloud physics (those tests share one world in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from cnf.grpc.epoch import FileEpochStore
from cnf.grpc.server import PeerServer
from cnf.grpc.tls import TlsFiles
from cnf.sim.demo import demo_fabric, sim_drivers


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cluster-id", required=True)
    p.add_argument("--tls-dir", required=True)
    p.add_argument("--known", required=True)
    p.add_argument("--epoch-file", required=True)
    args = p.parse_args()
    server = PeerServer(sim_drivers(demo_fabric(), args.cluster_id), tls=TlsFiles.in_dir(args.tls_dir, args.cluster_id),
                        known_peers=set(args.known.split(",")), epoch_store=FileEpochStore(args.epoch_file))
    port = await server.start()
    print(f"PORT {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0.5)


if __name__ == "__main__":
    asyncio.run(main())
