"""``openstack cnf master show|elect``."""

from __future__ import annotations

import argparse
from typing import Any

from osc_lib.command import command

from cnf.osc.v1.common import cnf_client, show_one


class ShowMaster(command.ShowOne):
    """Show which agent is the federation's master (cluster, address, epoch, since when)."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        data = cnf_client(self).show_master()
        return show_one(data, ("cluster_id", "name", "address", "epoch", "since", "lease_ttl_s", "is_this_agent"))


class ElectMaster(command.ShowOne):
    """Ask the current master to hand over to another cluster's agent (graceful; 202 = requested)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("cluster", metavar="<cluster>", help="cluster (name or ID) whose agent should lead")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        data = cnf_client(self).elect_master(parsed_args.cluster)
        return show_one(data, ("requested", "at"))
