"""structlog configuration: one JSON object per line, everywhere, with the ids bound once.

Why through the standard library: uvicorn, Celery, grpc and openstacksdk log through ``logging``; routing
structlog *and* those loggers into one ``ProcessorFormatter`` gives one format and one place where the bound
ids (``structlog.contextvars``) and the current trace/span ids are added to every line.

Why contextvars: ``bind_ids(migration_id=..., vm_id=..., cluster_id=...)`` binds for the current task/thread
(asyncio tasks copy the context, so a step's task carries its migration's ids) and every line logged under it,
by CNF or a library, carries them. Bind the agent's ``cluster_id`` once at start (``configure_logging``), and the
migration ids for the duration of one step (``with bound_ids(...)``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import IO, Any

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, merge_contextvars, unbind_contextvars
from structlog.types import EventDict, Processor

#: the ids operators grep for; ``bound_ids`` refuses others so the log schema stays stable
ID_KEYS = ("cluster_id", "migration_id", "vm_id", "epoch")
_HANDLER_NAME = "cnf-structlog"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}


def add_trace_ids(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Add ``trace_id``/``span_id`` of the current OpenTelemetry span (log ↔ trace correlation)."""
    from cnf.observability.tracing import current_trace_ids

    ids = current_trace_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        from cnf.errors import ConfigError

        raise ConfigError(f"log level {level!r} is not one of {', '.join(LEVELS)}", key="log_level") from None


def configure_logging(level: str | int = "info", json: bool = True, *, stream: IO[str] | None = None,
                      cluster_id: str = "") -> None:
    """Configure structlog and the standard library's root logger (idempotent: safe to call again).

    ``json=False`` gives coloured key=value lines for a developer's terminal. ``stream`` defaults to stderr
    (tests pass a ``StringIO``). ``cluster_id`` is bound for the whole process. A bad ``level`` raises
    ``ConfigError(key="log_level")`` before anything is changed.
    """
    level_no = _level_number(level)
    shared: list[Processor] = [
        merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
    ]
    renderer: Processor = (structlog.processors.JSONRenderer(sort_keys=False) if json
                           else structlog.dev.ConsoleRenderer(colors=False))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.StackInfoRenderer(),
                    structlog.processors.format_exc_info,
                    structlog.processors.UnicodeDecoder(),
                    renderer],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.PositionalArgumentsFormatter(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    if cluster_id:
        bind_contextvars(cluster_id=cluster_id)


def reset_logging() -> None:
    """Undo ``configure_logging`` (tests): structlog defaults, our handler removed, ids unbound."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def _check_keys(ids: MutableMapping[str, Any]) -> dict[str, Any]:
    unknown = set(ids) - set(ID_KEYS)
    if unknown:
        raise ValueError(f"unknown log id(s) {sorted(unknown)}; bind only {', '.join(ID_KEYS)}")
    return {k: v for k, v in ids.items() if v not in (None, "")}


def bind_ids(**ids: Any) -> None:
    """Bind ids for the rest of the current context (e.g. ``cluster_id`` at agent start)."""
    bind_contextvars(**_check_keys(ids))


def unbind_ids(*keys: str) -> None:
    unbind_contextvars(*keys)


@contextmanager
def bound_ids(**ids: Any) -> Iterator[None]:
    """Bind ids for a block (one step of one migration), restoring the previous values afterwards."""
    with bound_contextvars(**_check_keys(ids)):
        yield


@contextmanager
def migration_log_context(record: Any) -> Iterator[None]:
    """Bind ``migration_id``, ``vm_id`` and ``epoch`` of a (duck-typed) ``MigrationRecord`` for a block."""
    with bound_ids(migration_id=str(record.id), vm_id=str(getattr(getattr(record, "vm", None), "id", "")),
                   epoch=getattr(record, "epoch", None) or None):
        yield


def log_decision(logger: Any, decision: str, reason: str, **fields: Any) -> None:
    """One event per engine/election/scheduler decision, always with its reason (the issue's log contract)."""
    logger.info("decision", decision=decision, reason=reason, **fields)
