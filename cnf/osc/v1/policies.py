"""``openstack cnf policy list|show|set|delete|evaluate``.

``policy set --rule`` is validated here, before anything is sent, with the same parser the agent uses
(``cnf.scheduler.rules.parse_rule``): a typo gives one line naming the part of the rule that is wrong
(``--rule: rule.action: ...``). Cluster names in ``target``/``scope`` are checked by the agent, which
knows the federation.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from osc_lib import exceptions as osc_exc
from osc_lib.command import command

from cnf.errors import InvalidInput
from cnf.osc.v1.common import cnf_client, rows, show_one
from cnf.scheduler.rules import parse_rule

LIST_COLUMNS = (("name", "Name"), ("enabled", "Enabled"), ("trigger", "Trigger"), ("action", "Action"),
                ("target", "Target"), ("mode", "Mode"), ("updated_at", "Updated"))


def parse_rule_argument(name: str, text: str) -> dict[str, Any]:
    """``--rule`` text -> the rule dict, or ``CommandError`` with one line naming the problem."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise osc_exc.CommandError(f"--rule is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
    if not isinstance(data, dict):
        raise osc_exc.CommandError(f"--rule must be a JSON object like '{{\"trigger\":\"cpu_pct>80\",...}}', "
                                   f"got a {type(data).__name__}")
    try:
        parse_rule(name, data)
    except InvalidInput as e:
        where = e.details.get("field") or "rule"
        raise osc_exc.CommandError(f"--rule: {where}: {e.message}") from None
    return data


class ListPolicy(command.Lister):
    """List the scheduler's policies."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        items = cnf_client(self).list_policies()
        derive = {k: (lambda p, k=k: (p.get("rule") or {}).get(k)) for k in ("trigger", "action", "target", "mode")}
        return tuple(h for _, h in LIST_COLUMNS), rows(items, [k for k, _ in LIST_COLUMNS], derive=derive)


class ShowPolicy(command.ShowOne):
    """Show a policy with its complete rule (defaults filled in)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="<name>", help="policy name")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        return show_one(cnf_client(self).show_policy(parsed_args.name), ("name", "enabled", "rule"))


class SetPolicy(command.ShowOne):
    """Create or replace a policy."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="<name>", help="policy name")
        parser.add_argument("--rule", required=True, metavar="<json>",
                            help='the rule, e.g. \'{"trigger":"cpu_pct>80","action":"live_migrate",'
                                 '"target":"least_loaded"}\'')
        enabled = parser.add_mutually_exclusive_group()
        enabled.add_argument("--enable", dest="enabled", action="store_true", default=True,
                             help="the scheduler applies it (default)")
        enabled.add_argument("--disable", dest="enabled", action="store_false", help="keep it but do not apply it")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        rule = parse_rule_argument(parsed_args.name, parsed_args.rule)
        data = cnf_client(self).set_policy(parsed_args.name, rule, enabled=parsed_args.enabled)
        return show_one(data, ("name", "enabled", "rule"))


class DeletePolicy(command.Command):
    """Delete one or more policies."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("names", metavar="<name>", nargs="+", help="policy name(s)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        client = cnf_client(self)
        failures = []
        for name in parsed_args.names:
            try:
                client.delete_policy(name)
            except osc_exc.CommandError as e:
                failures.append(f"{name}: {e}")
        if failures:
            raise osc_exc.CommandError(f"{len(failures)} of {len(parsed_args.names)} policies not deleted: "
                                       + "; ".join(failures))


class EvaluatePolicy(command.ShowOne):
    """Show what a policy would do now: moves with why, notifications, skips (a dry run; changes nothing)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="<name>", help="policy name")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        data = cnf_client(self).evaluate_policy(parsed_args.name)
        if not isinstance(data, dict):
            data = {"result": data}
        if "text" in data:  # the agent's own plain-text rendering of the plan
            data["plan"] = data.pop("text")
        return show_one(data, ("policy", "evaluated_at", "plan", "moves", "notifications", "pending",
                               "skipped_counts", "truncated"))


APPROVE_COLUMNS = (("migration_id", "Migration"), ("vm_id", "VM"), ("action", "Action"),
                   ("source_cluster", "Source"), ("target_cluster", "Destination"), ("why", "Why"))


class ApprovePolicy(command.Lister):
    """Start the moves of a plan-mode policy's last evaluated plan (all of them, or only some VMs')."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="<name>", help="policy name")
        parser.add_argument("--vm", dest="vm_ids", action="append", metavar="<vm-id>",
                            help="approve only this VM's move (repeat for more)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        started = cnf_client(self).approve_policy(parsed_args.name, parsed_args.vm_ids)
        return tuple(h for _, h in APPROVE_COLUMNS), rows(started, [k for k, _ in APPROVE_COLUMNS])
