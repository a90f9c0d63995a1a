"""``cnf-worker``: a Celery worker that drives migrations (``tasks.runner: celery``).

    cnf-worker --config /etc/cnf/cnf.yaml [--concurrency 2] [--pool prefork|solo]

Run it next to the agent (same config file: database, broker, sim world). The agent does
not fork workers itself: workers are stateless and scale or restart independently of the
master (a systemd unit per controller, ``Restart=always``). See ``docs/durable-work.md``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from cnf.config import load_config
from cnf.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cnf-worker", description="CNF Celery worker: one migration step per task.")
    p.add_argument("--config", default=os.environ.get("CNF_CONFIG"), help="path to cnf.yaml (or CNF_CONFIG)")
    p.add_argument("--concurrency", type=int, default=2, help="pool processes (default 2)")
    p.add_argument("--pool", choices=["prefork", "solo"], default="prefork",
                   help="prefork (default; hard time limits) or solo (one process)")
    p.add_argument("--loglevel", default="INFO")
    args = p.parse_args(argv)
    if not args.config:
        print("cnf-worker: --config PATH (or CNF_CONFIG) is required", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"cnf-worker: {e.message}", file=sys.stderr)
        return 2
    os.environ["CNF_CONFIG"] = os.path.abspath(args.config)
    from cnf.tasks.migration_tasks import QUEUE, TaskEpoch, build_worker_directory, configure_app

    try:
        build_worker_directory(cfg, TaskEpoch())  # fail fast, with one line, on a configuration the worker cannot serve
    except ConfigError as e:
        print(f"cnf-worker: {e.message}", file=sys.stderr)
        return 2
    app = configure_app(cfg)
    app.worker_main(["worker", f"--loglevel={args.loglevel}", f"--concurrency={args.concurrency}",
                     f"--pool={args.pool}", "-Q", QUEUE, "--without-gossip", "--without-mingle",
                     "--without-heartbeat", "-n", f"cnf-{os.getpid()}@{socket.gethostname()}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
