"""``openstack cnf migration list|show|abort``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from osc_lib.command import command

from cnf.osc.v1.common import cluster_names, cnf_client, failure_reason, migration_show, rows, wait_for_migration

LIST_COLUMNS = (("id", "ID"), ("vm_name", "VM"), ("kind", "Kind"), ("state", "State"), ("phase", "Phase"),
                ("step", "Step"), ("source", "Source"), ("dest", "Destination"), ("created_at", "Created"),
                ("duration_s", "Duration (s)"))
STATES = ("pending", "running", "compensating", "completed", "failed", "aborted", "needs_operator")


class ListMigration(command.Lister):
    """List migrations, newest first as the API returns them."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--vm", metavar="<vm-id>", help="only migrations of this VM (ID)")
        parser.add_argument("--state", choices=STATES, help="only migrations in this state")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        client = cnf_client(self)
        items = client.list_migrations(vm=parsed_args.vm, state=parsed_args.state)
        names = cluster_names(client)
        data = rows(items, [k for k, _ in LIST_COLUMNS], derive={
            "source": lambda m: names.get(m["source_cluster_id"], m["source_cluster_id"]),
            "dest": lambda m: names.get(m["dest_cluster_id"], m["dest_cluster_id"])})
        return tuple(h for _, h in LIST_COLUMNS), data


class ShowMigration(command.ShowOne):
    """Show a migration: state, phases with durations, downtime, progress, error (``--long``: steps, events)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("migration", metavar="<migration-id>", help="migration ID")
        parser.add_argument("--long", action="store_true", help="also every step, event and option")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        client = cnf_client(self)
        return migration_show(client.show_migration(parsed_args.migration), cluster_names(client),
                              long=parsed_args.long)


class AbortMigration(command.ShowOne):
    """Abort a migration before its point of no return (it rolls back; the VM stays in the source)."""

    _exit_error: str | None = None

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("migration", metavar="<migration-id>", help="migration ID")
        parser.add_argument("--wait", action="store_true", help="wait until the rollback has finished")
        parser.add_argument("--wait-timeout", type=float, default=3600.0, metavar="<seconds>",
                            help="give up waiting after this long; default 3600")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        client = cnf_client(self)
        m = client.abort_migration(parsed_args.migration)
        self._exit_error = None
        if parsed_args.wait:
            m = wait_for_migration(client, m["id"], timeout_s=parsed_args.wait_timeout)
            if m["state"] != "aborted":
                self._exit_error = (f"migration {m['id']} ended {m['state']}, not aborted"
                                    + (f": {failure_reason(m)}" if m["state"] != "completed" else
                                       " (it had passed the point of no return)"))
        return migration_show(m, cluster_names(client))

    def run(self, parsed_args: argparse.Namespace) -> int:
        self._exit_error = None
        rc = super().run(parsed_args)
        if self._exit_error:
            sys.stderr.write(self._exit_error + "\n")
            return 1
        return int(rc or 0)
