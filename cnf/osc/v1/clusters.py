"""``openstack cnf cluster list|show|metrics|register``."""

from __future__ import annotations

import argparse
from typing import Any

from osc_lib import exceptions as osc_exc
from osc_lib.command import command

from cnf.osc.v1.common import cnf_client, rows, show_one

LIST_COLUMNS = (("id", "ID"), ("name", "Name"), ("region", "Region"), ("status", "Status"), ("bgp_as", "BGP AS"),
                ("grpc_addr", "gRPC Address"), ("vm_count", "VMs"))


class ListCluster(command.Lister):
    """List the clouds of the federation."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--long", action="store_true", help="also show the Keystone auth URL")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        cols = list(LIST_COLUMNS) + ([("auth_url", "Auth URL")] if parsed_args.long else [])
        clusters = cnf_client(self).list_clusters()
        return tuple(h for _, h in cols), rows(clusters, [k for k, _ in cols])


class ShowCluster(command.ShowOne):
    """Show one cloud: identity, VM count, BGP sessions, whether it is the master."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("cluster", metavar="<cluster>", help="cluster name or ID")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        data = cnf_client(self).show_cluster(parsed_args.cluster)
        return show_one(data, ("id", "name", "region", "status", "is_master"))


class ShowClusterMetrics(command.ShowOne):
    """Show a cloud's capacity and load (what the scheduler's rules see), per host too."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("cluster", metavar="<cluster>", help="cluster name or ID")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        data = cnf_client(self).cluster_metrics(parsed_args.cluster)
        return show_one(data, ("cluster_id", "name", "vm_count", "cpu_pct", "mem_pct", "vcpus", "vcpus_used",
                               "free_vcpus", "ram_mb", "ram_mb_used", "free_ram_mb", "hosts"))


class RegisterCluster(command.ShowOne):
    """Register a cloud with the federation (the agent checks its Keystone credentials first)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("name", metavar="<name>", help="cluster name, e.g. openstack-4")
        parser.add_argument("--auth-url", required=True, metavar="<url>",
                            help="Keystone v3 URL of the cloud (sim://NAME for a simulated cloud)")
        parser.add_argument("--grpc-addr", required=True, metavar="<host:port>",
                            help="address of the cloud's CNF agent (gRPC)")
        parser.add_argument("--bgp-as", required=True, type=int, metavar="<asn>", help="the cloud's BGP AS number")
        parser.add_argument("--region", default="RegionOne", metavar="<region>", help="default: RegionOne")
        parser.add_argument("--api-url", default="", metavar="<url>", help="the agent's REST URL (for proxying)")
        parser.add_argument("--id", dest="cluster_id", metavar="<uuid>", help="cluster ID (generated if absent)")
        creds = parser.add_argument_group("credentials CNF uses in that cloud (never shown back)")
        creds.add_argument("--username", metavar="<name>")
        creds.add_argument("--password", metavar="<password>")
        creds.add_argument("--project-name", metavar="<name>")
        creds.add_argument("--user-domain-name", metavar="<name>")
        creds.add_argument("--project-domain-name", metavar="<name>")
        creds.add_argument("--application-credential-id", metavar="<id>")
        creds.add_argument("--application-credential-secret", metavar="<secret>")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        credentials = {k: getattr(parsed_args, k) for k in (
            "username", "password", "project_name", "user_domain_name", "project_domain_name",
            "application_credential_id", "application_credential_secret") if getattr(parsed_args, k)}
        if credentials and "application_credential_id" not in credentials and not (
                credentials.get("username") and credentials.get("password")):
            raise osc_exc.CommandError("--username and --password go together (or use --application-credential-id "
                                       "and --application-credential-secret)")
        body: dict[str, Any] = {"name": parsed_args.name, "auth_url": parsed_args.auth_url,
                                "grpc_addr": parsed_args.grpc_addr, "bgp_as": parsed_args.bgp_as,
                                "region": parsed_args.region}
        if parsed_args.api_url:
            body["api_url"] = parsed_args.api_url
        if parsed_args.cluster_id:
            body["id"] = parsed_args.cluster_id
        if credentials:
            body["credentials"] = credentials
        data = cnf_client(self).register_cluster(body)
        return show_one(data, ("id", "name", "region", "status"))
