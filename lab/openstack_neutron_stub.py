"""A read-only stand-in for Neutron, for labs started with ``CNF_LAB_OPENSTACK_NEUTRON=0``.

Why: nova-api asks Neutron for a server's ports and security groups on every server show, even for a
``--nic none`` server; without an answer every show fails. Every list is empty, every other path 404s.
Run as ``python -m lab.openstack neutron-stub PORT`` (a process of the cloud like the others).
"""

from __future__ import annotations

import json
from typing import Any


def serve_neutron_stub(port: int) -> None:
    """Read-only stand-in for Neutron: every list is empty, every other path 404. nova-api renders
    security groups from ``GET /v2.0/ports`` on every server show, even for ``--nic none`` servers."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    lists = {"ports", "networks", "subnets", "security-groups", "floatingips", "extensions"}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/").removesuffix(".json")
        method = environ.get("REQUEST_METHOD", "GET")
        body: dict[str, Any]
        status, body = "404 Not Found", {"NeutronError": {"type": "NotFound", "message": path, "detail": ""}}
        if path == "":
            status, body = "200 OK", {"versions": [{"id": "v2.0", "status": "CURRENT",
                                                     "links": [{"rel": "self", "href": "/v2.0/"}]}]}
        elif path == "/v2.0":
            status, body = "200 OK", {"resources": []}
        elif method == "GET" and path.startswith("/v2.0/") and path[6:] in lists:
            status, body = "200 OK", {path[6:].replace("-", "_"): []}
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    make_server("127.0.0.1", port, app, handler_class=Quiet).serve_forever()
