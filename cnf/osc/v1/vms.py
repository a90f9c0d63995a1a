"""``openstack cnf vm list|status|migrate|live-migrate``.

``migrate``/``live-migrate`` return at once with the new migration (202); ``--wait`` follows it to the
end (live progress line on a terminal, one line per phase otherwise) and exits 1 with the reason if it
does not complete; ``--dry-run`` runs PREFLIGHT only and prints every check (exit 1 if one fails).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from osc_lib import exceptions as osc_exc
from osc_lib.command import command

from cnf.osc.v1.common import (
    cluster_names,
    cnf_client,
    failure_reason,
    migration_show,
    rows,
    show_one,
    wait_for_migration,
)

LIST_COLUMNS = (("id", "ID"), ("name", "Name"), ("cluster", "Cluster"), ("host", "Host"), ("status", "Status"),
                ("ip", "IP"), ("flavor", "Flavor"), ("migration_id", "Migration"))
LONG_COLUMNS = (("vcpus", "vCPUs"), ("ram_mb", "RAM MiB"), ("cpu_pct", "CPU %"), ("project_id", "Project"),
                ("tags", "Tags"))
NON_CONVERGENCE = ("auto_converge_then_abort", "auto_converge_then_post_copy", "post_copy", "abort")


class ListVm(command.Lister):
    """List the VMs of every cloud (CNF's inventory)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--cluster", metavar="<cluster>", help="only this cluster (name or ID)")
        parser.add_argument("--status", metavar="<status>", help="only this status (ACTIVE, SHUTOFF, ...)")
        parser.add_argument("--long", action="store_true", help="also vCPUs, RAM, CPU load, project, tags")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        client = cnf_client(self)
        vms = client.list_vms(cluster=parsed_args.cluster, status=parsed_args.status)
        names = cluster_names(client)
        cols = list(LIST_COLUMNS) + (list(LONG_COLUMNS) if parsed_args.long else [])
        data = rows(vms, [k for k, _ in cols],
                    derive={"cluster": lambda v: names.get(v["cluster_id"], v["cluster_id"])})
        return tuple(h for _, h in cols), data


class ShowVmStatus(command.ShowOne):
    """Show a VM: where it runs, its state, and the migration moving it (if any)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("vm", metavar="<vm>", help="VM name or ID")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        client = cnf_client(self)
        data = client.show_vm(parsed_args.vm)
        data["cluster"] = cluster_names(client).get(data.get("cluster_id", ""), "")
        return show_one(data, ("id", "name", "status", "cluster", "cluster_id", "host", "ip", "migration_id"))


class _Migrate(command.ShowOne):
    live = False
    _exit_error: str | None = None
    _checks: list[dict[str, Any]] | None = None

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("vm", metavar="<vm>", help="VM name or ID")
        parser.add_argument("--to", required=True, metavar="<cluster>", help="destination cluster (name or ID)")
        parser.add_argument("--dest-host", default="", metavar="<host>",
                            help="destination compute host (default: the destination cloud chooses)")
        parser.add_argument("--dest-next-hop", default="", metavar="<ipv4>",
                            help="BGP next hop for the VM's /32 at the destination")
        parser.add_argument("--dry-run", action="store_true",
                            help="run the preflight checks only and print each one (exit 1 if one fails)")
        parser.add_argument("--wait", action="store_true", help="follow the migration until it ends")
        parser.add_argument("--wait-timeout", type=float, default=3600.0, metavar="<seconds>",
                            help="give up waiting after this long (the migration keeps running); default 3600")
        parser.add_argument("--max-bandwidth", type=int, metavar="<mbit/s>", help="copy bandwidth cap, Mbit/s")
        parser.add_argument("--mirror-lag-limit", type=float, metavar="<seconds>",
                            help="largest RBD mirror lag accepted at cutover")
        if self.live:
            parser.add_argument("--downtime-limit", type=int, metavar="<ms>",
                                help="max guest pause QEMU may plan for (default 300 ms)")
            parser.add_argument("--non-convergence", choices=NON_CONVERGENCE,
                                help="what to do if the memory copy does not converge")
        return parser

    def _options(self, parsed_args: argparse.Namespace) -> dict[str, Any]:
        mapping = {"max_bandwidth": "max_bandwidth_mbps", "mirror_lag_limit": "mirror_lag_limit_s",
                   "downtime_limit": "downtime_limit_ms", "non_convergence": "non_convergence"}
        return {api: getattr(parsed_args, arg) for arg, api in mapping.items()
                if getattr(parsed_args, arg, None) is not None}

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
        if parsed_args.dry_run and parsed_args.wait:
            raise osc_exc.CommandError("--dry-run and --wait cannot be combined (a dry run starts nothing)")
        client = cnf_client(self)
        body: dict[str, Any] = {"dest_cluster_id": parsed_args.to, "dest_host": parsed_args.dest_host,
                                "dest_next_hop": parsed_args.dest_next_hop, "dry_run": parsed_args.dry_run}
        options = self._options(parsed_args)
        if options:
            body["options"] = options
        result = client.migrate_vm(parsed_args.vm, body, live=self.live)
        if parsed_args.dry_run:
            return self._preflight(result)
        names = cluster_names(client)
        if parsed_args.wait:
            result = wait_for_migration(client, result["id"], timeout_s=parsed_args.wait_timeout)
            if result["state"] != "completed":
                self._exit_error = failure_reason(result)
        return migration_show(result, names)

    def _preflight(self, report: dict[str, Any]) -> tuple[tuple[str, ...], Any]:
        """The preflight report as rows (a ``ShowOne`` cannot hold a table, so this switches formatter)."""
        checks = report.get("checks", [])
        failed = [c for c in checks if not c["passed"] and c.get("severity", "error") == "error"]
        if failed:
            self._exit_error = "preflight failed: " + "; ".join(f"{c['name']}: {c['reason']}" for c in failed)
        self._checks = checks
        return ("Check", "Result", "Severity", "Why"), None

    def produce_output(self, parsed_args: argparse.Namespace, column_names: Any, data: Any) -> int:
        if data is None and self._checks is not None:
            # dry run: render as a list with the formatter the user chose (table/json/yaml/value)
            values = [(c["name"], "pass" if c["passed"] else "FAIL", c.get("severity", ""), c.get("reason", ""))
                      for c in self._checks]
            fmt = self._formatter_plugins[parsed_args.formatter].obj
            cols_to_include, selector = self._generate_columns_and_selector(parsed_args, column_names)
            if selector:
                values = [tuple(v for v, keep in zip(row, selector, strict=True) if keep) for row in values]
            lister_fmt = _lister_formatter(parsed_args.formatter, fmt)
            lister_fmt.emit_list(cols_to_include, values, self.app.stdout, parsed_args)
            return 0
        return int(super().produce_output(parsed_args, column_names, data) or 0)

    def run(self, parsed_args: argparse.Namespace) -> int:
        self._exit_error = None
        self._checks = None
        rc = super().run(parsed_args)
        if self._exit_error:
            sys.stderr.write(self._exit_error + "\n")
            return 1
        return int(rc or 0)


def _lister_formatter(name: str, single_formatter: Any) -> Any:
    """The same formatter's list form (table/json/yaml/value implement both ``emit_one`` and ``emit_list``)."""
    if hasattr(single_formatter, "emit_list"):
        return single_formatter
    raise osc_exc.CommandError(f"-f {name} cannot show a preflight report; use table, json, yaml or value")


class MigrateVm(_Migrate):
    """Cold-migrate a VM to another cloud (PREFLIGHT, DISK, CUTOVER, BGP, CLEANUP)."""

    live = False


class LiveMigrateVm(_Migrate):
    """Live-migrate a VM to another cloud, keeping its disk and IP (PREFLIGHT, DISK, MEMORY, CUTOVER, BGP, CLEANUP)."""

    live = True
