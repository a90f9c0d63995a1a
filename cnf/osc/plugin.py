"""python-openstackclient plugin hooks for ``openstack cnf …`` (entry point ``openstack.cli.extension``).

OSC loads this module, adds ``--os-cnf-api-version`` through :func:`build_option_parser`, loads the
commands of the ``openstack.cnf.v1`` entry-point group, and calls :func:`make_client` lazily the first
time a command touches ``self.app.client_manager.cnf``.

Endpoint resolution (first match wins), the same rules every OSC plugin follows:
1. ``cnf_endpoint_override`` in ``clouds.yaml`` (or ``OS_CNF_ENDPOINT_OVERRIDE``);
2. the Keystone catalog: service type ``cnf``, the ``--os-interface`` and ``--os-region-name`` asked for;
3. with ``--os-auth-type none``: ``--os-endpoint`` (the Ironic-standalone convention; the embedded
   default agent runs ``noauth``).
"""

from __future__ import annotations

import argparse
from typing import Any

from osc_lib import exceptions as osc_exc
from osc_lib import utils

from cnf.osc.client import CnfClient

API_NAME = "cnf"
SERVICE_TYPE = "cnf"
API_VERSION_OPTION = "os_cnf_api_version"
DEFAULT_API_VERSION = "1"
API_VERSIONS = ("1",)


def check_api_version(version: str) -> bool:
    """Refuse an API version this client cannot speak (only ``1`` exists); True skips OSC's own check."""
    if str(version).split(".")[0] not in API_VERSIONS:
        raise osc_exc.CommandError(f"CNF API version {version!r} is not supported (supported: 1)")
    return True


def _endpoint(instance: Any) -> str:
    endpoint: str | None = None
    override_for = getattr(instance, "_override_for", None)
    if override_for is not None:
        endpoint = override_for(SERVICE_TYPE)
    if not endpoint:
        endpoint = instance.get_endpoint_for_service_type(SERVICE_TYPE, region_name=instance.region_name,
                                                          interface=instance.interface)
    if not endpoint:
        raise osc_exc.CommandError("no CNF endpoint: register one in Keystone (openstack endpoint create --region "
                                   "RegionOne cnf public http://HOST:8080) or use --os-auth-type none "
                                   "--os-endpoint http://HOST:8080")
    return str(endpoint)


def make_client(instance: Any) -> CnfClient:
    """The REST client on the session OSC holds (so tokens, TLS and ``--debug`` come from OSC)."""
    version = str(instance._api_version.get(API_NAME, DEFAULT_API_VERSION))
    return CnfClient(instance.session, _endpoint(instance), api_version=version)


def build_option_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--os-cnf-api-version",
        metavar="<cnf-api-version>",
        default=utils.env("OS_CNF_API_VERSION", default=DEFAULT_API_VERSION),
        help=f"CNF API version, default={DEFAULT_API_VERSION} (Env: OS_CNF_API_VERSION)",
    )
    return parser
