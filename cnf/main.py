"""``cnf-agent``: run one CNF agent in the foreground.

    cnf-agent                       # embedded default: three sim clouds on :8080
    cnf-agent --config /etc/cnf/cnf.yaml
    cnf-agent --port 8081           # or CNF_API_PORT=8081

Exit codes: 0 clean stop, 2 bad configuration (one line naming the key), 1 a
failure while starting (one line saying what).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog

from cnf import __version__
from cnf.config import CNFConfig, load_config
from cnf.errors import CNFError, ConfigError

log = structlog.get_logger("cnf.agent")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cnf-agent", description="Cluster Nova Federation agent (one per cloud).")
    p.add_argument("--config", help="path to cnf.yaml (default /etc/cnf/cnf.yaml; embedded default if absent)")
    p.add_argument("--port", type=int, help="REST API port (default 8080; env CNF_API_PORT)")
    p.add_argument("--host", help="REST API bind address (default 0.0.0.0)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--console-logs", action="store_true", help="key=value logs instead of JSON")
    p.add_argument("--version", action="version", version=f"cnf-agent {__version__}")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> CNFConfig:
    cfg = load_config(args.config)
    api = cfg.api.model_copy()
    if args.port is not None:
        if not 0 < args.port < 65536:
            raise ConfigError(f"--port {args.port} is not a TCP port", key="api.port")
        api.port = args.port
    if args.host:
        api.host = args.host
    cfg.api = api
    if args.log_level:
        cfg.log_level = args.log_level
    return cfg


async def serve(cfg: CNFConfig) -> None:
    import uvicorn

    from cnf.agent.agent import Agent
    from cnf.api.app import create_app

    agent = Agent(cfg, install_global_tracing=True)
    await agent.start()
    middlewares = []
    if cfg.raft.etcd_endpoints:
        from cnf.api.proxy import master_proxy

        middlewares.append(master_proxy(agent.service))
    if cfg.api.auth_strategy == "keystone":
        from cnf.api.auth import keystone_auth_middleware

        middlewares.append(keystone_auth_middleware(cfg.api.keystone))  # added last = runs first
    app = create_app(agent.service, middlewares=middlewares)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.api.host, port=cfg.api.port, log_config=None,
                                           access_log=False, lifespan="off"))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    log.info("agent_started", cluster_id=cfg.cluster_id, cluster_name=cfg.cluster_name, port=cfg.api.port,
             embedded=cfg.embedded, master=agent.election.is_master())
    try:
        await server.serve()
        if not server.started:
            raise CNFError(f"could not listen on {cfg.api.host}:{cfg.api.port}")
    finally:
        await agent.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = build_config(args)
    except ConfigError as e:
        print(f"cnf-agent: configuration error: {e.message}", file=sys.stderr)
        return 2
    from cnf.observability.logs import configure_logging

    configure_logging(cfg.log_level, json=not args.console_logs, cluster_id=cfg.cluster_id)
    try:
        asyncio.run(serve(cfg))
    except ConfigError as e:
        print(f"cnf-agent: configuration error: {e.message}", file=sys.stderr)
        return 2
    except CNFError as e:
        print(f"cnf-agent: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
