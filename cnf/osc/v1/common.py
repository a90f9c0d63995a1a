"""What every ``openstack cnf`` command shares: column formatting and following a migration (``--wait``).

Formatting contract: table output is for people (timestamps as ISO 8601 UTC, nested values rendered by
osc-lib's columns, cluster names next to ids); ``-f json|yaml`` keeps the machine form (epoch floats,
real lists and dicts) so scripts get what the REST API returned.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

from cliff import columns as cliff_columns
from osc_lib import exceptions as osc_exc
from osc_lib.cli import format_columns

from cnf.osc.client import ApiUnreachable, CnfClient, ServerError

MAX_POLL_FAILURES = 10
TERMINAL_STATES = ("completed", "failed", "aborted", "needs_operator")


class TimestampColumn(cliff_columns.FormattableColumn[Any]):
    """Epoch seconds: ISO 8601 UTC in tables, the number itself in json/yaml."""

    def human_readable(self) -> str:
        if self._value in (None, ""):
            return ""
        try:
            return dt.datetime.fromtimestamp(float(self._value), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (TypeError, ValueError, OverflowError):
            return str(self._value)

    def machine_readable(self) -> Any:
        return self._value


class RenderedColumn(cliff_columns.FormattableColumn[Any]):
    """A nested value shown as short lines in a table (``render``), unchanged in json/yaml."""

    render: Callable[[Any], str] = staticmethod(str)

    def human_readable(self) -> str:
        if self._value in (None, [], {}):
            return ""
        return self.render(self._value)

    def machine_readable(self) -> Any:
        return self._value


def _fmt_ms(v: Any) -> str:
    return "-" if v is None else f"{float(v) / 1000:.2f} s"


def _phases(v: list[dict[str, Any]]) -> str:
    return "\n".join(f"{p.get('phase', '?'):<10} {p.get('status', ''):<8} {_fmt_ms(p.get('duration_ms'))}" for p in v)


def _progress(p: dict[str, Any]) -> str:
    parts = []
    if p.get("percent") is not None:
        total = int(p.get("total_bytes") or 0) // 2**20
        parts.append(f"{float(p['percent']):.1f}% of {total} MiB copied")
    if p.get("passes") is not None:
        parts.append(f"{p['passes']} passes")
    if p.get("eta_s") is not None:
        parts.append(f"ETA {float(p['eta_s']):.1f} s")
    if p.get("status"):
        parts.append(str(p["status"]))
    return ", ".join(parts)


def _downtime(d: dict[str, Any]) -> str:
    names = {"guest_pause_ms": "guest paused", "qemu_downtime_ms": "QEMU downtime",
             "network_blackout_ms": "network blackout"}
    return "\n".join(f"{label} {float(d[k]):.0f} ms" for k, label in names.items() if d.get(k) is not None)


def _hosts(v: list[dict[str, Any]]) -> str:
    return "\n".join(f"{h.get('name')}: vCPU {h.get('vcpus_used')}/{h.get('vcpus')}, RAM {h.get('ram_mb_used')}/"
                     f"{h.get('ram_mb')} MiB, CPU {h.get('cpu_pct')}%" for h in v)


def _peers(v: list[dict[str, Any]]) -> str:
    return "\n".join(f"{p.get('address')} AS{p.get('remote_as')} "
                     f"{'established' if p.get('established') else 'DOWN'}, {p.get('prefixes_received')} prefixes"
                     for p in v)


def _error(e: dict[str, Any]) -> str:
    return " ".join(str(x) for x in (e.get("code"), e.get("step"), "-", e.get("message")) if x)


def _moves(v: list[dict[str, Any]]) -> str:
    return "\n".join(f"{str(m.get('mode', '')).upper()} {m.get('action')} {m.get('vm_id')}: {m.get('source_cluster')}"
                     f" -> {m.get('target_cluster')}" for m in v)


def _rendered(fn: Callable[[Any], str]) -> type[RenderedColumn]:
    return type(f"Rendered_{fn.__name__.strip('_')}", (RenderedColumn,), {"render": staticmethod(fn)})


RENDERERS: dict[str, type[RenderedColumn]] = {
    "phases": _rendered(_phases), "progress": _rendered(_progress), "downtime": _rendered(_downtime),
    "hosts": _rendered(_hosts), "bgp_peers": _rendered(_peers), "error": _rendered(_error),
    "moves": _rendered(_moves),
}


TIMESTAMP_KEYS = frozenset({"created_at", "updated_at", "finished_at", "since", "at", "started_at", "ts"})


def format_value(key: str, value: Any) -> Any:
    """Wrap a value in the osc-lib column that renders it well in a table and raw in json."""
    if key in TIMESTAMP_KEYS and isinstance(value, int | float):
        return TimestampColumn(value)
    if key in RENDERERS and isinstance(value, dict | list):
        return RENDERERS[key](value)
    if isinstance(value, dict):
        return format_columns.DictColumn(value)
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return format_columns.ListDictColumn(value)
        return format_columns.ListColumn(value)
    return value


def show_one(data: dict[str, Any], order: Sequence[str] = ()) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """``ShowOne`` output: the keys in ``order`` first, then the rest alphabetically; every key shown."""
    keys = [k for k in order if k in data] + sorted(k for k in data if k not in order)
    return tuple(keys), tuple(format_value(k, data[k]) for k in keys)


def rows(items: Iterable[dict[str, Any]], keys: Sequence[str],
         derive: Mapping[str, Callable[..., Any]] | None = None) -> list[tuple[Any, ...]]:
    """``Lister`` rows: one value per key; ``derive`` computes a column that is not a plain field."""
    derive = derive or {}
    out = []
    for item in items:
        out.append(tuple(format_value(k, derive[k](item) if k in derive else item.get(k)) for k in keys))
    return out


def cnf_client(cmd: Any) -> CnfClient:
    """The ``CnfClient`` OSC built with ``cnf.osc.plugin.make_client`` (created on first use)."""
    client: CnfClient = getattr(cmd.app.client_manager, "cnf")  # noqa: B009 - attribute added by the plugin
    return client


def cluster_names(client: CnfClient) -> dict[str, str]:
    """id -> name, to print ``openstack-2`` instead of a UUID. Best effort: an error gives ids only."""
    try:
        return {c["id"]: c["name"] for c in client.list_clusters()}
    except osc_exc.CommandError:
        return {}


# --- following a migration ---------------------------------------------------------------------------


def _eta(progress: dict[str, Any] | None) -> str:
    if not progress or progress.get("eta_s") is None:
        return ""
    eta = float(progress["eta_s"])
    return f"ETA {eta:.0f} s" if eta >= 1 else "ETA <1 s"


def progress_line(m: dict[str, Any]) -> str:
    """The live line: ``phase  step  memory NN%  ETA n s`` (memory only once the copy has started)."""
    parts = [f"{m.get('state', '?'):<9}", f"{m.get('phase') or '-':<10}", f"{m.get('step') or '-':<28}"]
    prog = m.get("progress")
    if m.get("phase") == "MEMORY" and prog and prog.get("percent") is not None:
        parts.append(f"memory {float(prog['percent']):5.1f}% copied")
        eta = _eta(prog)
        if eta:
            parts.append(eta)
    return "  ".join(parts).rstrip()


def phase_line(phase: dict[str, Any], m: dict[str, Any]) -> str:
    """A finished phase, one plain line (non-tty output): name, status, duration and what it moved."""
    dur = f"{phase['duration_ms'] / 1000:.2f} s" if phase.get("duration_ms") is not None else "-"
    extra = ""
    prog = m.get("progress")
    if phase["phase"] == "MEMORY" and prog:
        mib = int(prog.get("transferred_bytes") or 0) // 2**20
        extra = f"  memory {float(prog.get('percent') or 0):.1f}% copied, {mib} MiB, {prog.get('passes', 0)} passes"
    if phase["phase"] == "CUTOVER" and (m.get("downtime") or {}).get("guest_pause_ms") is not None:
        extra = f"  guest paused {m['downtime']['guest_pause_ms']:.0f} ms"
    return f"{phase['phase']:<10} {phase['status']:<7} {dur:>9}{extra}"


def failure_reason(m: dict[str, Any]) -> str:
    err = m.get("error") or {}
    where = " ".join(x for x in (m.get("phase") or "", err.get("step") or m.get("step") or "") if x)
    msg = err.get("message") or err.get("detail") or err.get("code") or "no reason recorded"
    return f"migration {m['id']} {m['state']}" + (f" in {where}" if where else "") + f": {msg}"


def wait_for_migration(client: CnfClient, migration_id: str, *, stream: TextIO | None = None,
                       interval_s: float = 0.5, timeout_s: float = 3600.0,
                       sleep: Callable[[float], None] = time.sleep,
                       monotonic: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Poll until the migration is terminal, reporting progress on ``stream`` (stderr by default).

    On a terminal the line is redrawn in place (``\\r``); otherwise one plain line per finished phase
    (logs and CI stay readable). Returns the final migration; raises ``CommandError`` on timeout.
    Up to ``MAX_POLL_FAILURES`` consecutive transport/5xx errors are ridden out (master hand-over).
    """
    out = stream if stream is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    printed: set[str] = set()
    last_len = 0
    deadline = monotonic() + timeout_s
    failures = 0
    while True:
        try:
            m = client.show_migration(migration_id)
            failures = 0
        except (ApiUnreachable, ServerError):
            # the master may be handing over or restarting: keep following, give up after a few tries
            failures += 1
            if failures > MAX_POLL_FAILURES or monotonic() > deadline:
                raise
            sleep(interval_s * failures)
            continue
        done = m.get("state") in TERMINAL_STATES
        if tty:
            line = progress_line(m)
            out.write("\r" + line.ljust(last_len))
            last_len = len(line)
            if done:
                out.write("\n")
        else:
            for ph in m.get("phases") or []:
                if ph["phase"] not in printed and ph.get("status") in ("done", "failed", "undone", "partial"):
                    printed.add(ph["phase"])
                    out.write(phase_line(ph, m) + "\n")
        out.flush()
        if done:
            if not tty:
                out.write(f"migration {migration_id} {m['state']} after {m.get('duration_s', 0):.1f} s\n")
                out.flush()
            return m
        if monotonic() > deadline:
            raise osc_exc.CommandError(f"migration {migration_id} still {m.get('state')} in {m.get('phase')} after "
                                       f"{timeout_s:.0f} s (it keeps running; follow it with 'openstack cnf "
                                       f"migration show {migration_id}')")
        sleep(interval_s)


def migration_show(m: dict[str, Any], names: dict[str, str], *, long: bool = False
                   ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """A migration for ``ShowOne``: cluster names added; ``steps``/``events``/``options`` only with ``long``."""
    data = dict(m)
    data["source_cluster"] = names.get(m.get("source_cluster_id", ""), "")
    data["dest_cluster"] = names.get(m.get("dest_cluster_id", ""), "")
    if not long:
        for k in ("steps", "events", "options", "preflight", "convergence_actions", "epoch"):
            data.pop(k, None)
    order = ("id", "kind", "vm_id", "vm_name", "state", "phase", "step", "source_cluster", "dest_cluster")
    return show_one(data, order)
