"""``CnfClient``: the thin REST client of ``openstack cnf …`` (one method per REST API v1 endpoint).

It rides on the keystoneauth1 session OSC already holds, so a Keystone token (``X-Auth-Token``), TLS
settings, ``--insecure``/``--os-cacert``, timeouts and ``--debug`` request logging all come from the
normal ``OS_*`` variables / ``clouds.yaml``; with ``--os-auth-type none --os-endpoint URL`` the same
session simply sends no usable token (the embedded default runs ``noauth``).

Contract: every non-2xx answer goes through :func:`raise_from_response`, the ONE place that turns the
API's problem+json (``{"type","title","status","detail","code","field"?}``, see ``cnf.api.problem``)
into a :class:`CnfClientError` subclass carrying ``status``/``code``/``field``/``detail``; a transport
failure (agent down, DNS, TLS, timeout) becomes :class:`ApiUnreachable`. ``str()`` of any of them is
one line an operator can act on — the CLI prints exactly that on stderr and exits 1.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

from keystoneauth1 import exceptions as ks_exc
from osc_lib import exceptions as osc_exc

DEFAULT_TIMEOUT_S = 30.0


class CnfClientError(osc_exc.CommandError):
    """An error answered by (or on the way to) the CNF API. Subclasses ``CommandError`` so cliff prints it."""

    def __init__(self, detail: str, *, status: int | None = None, code: str = "error", field: str | None = None,
                 title: str = "", body: dict[str, Any] | None = None) -> None:
        self.detail = detail
        self.status = status
        self.code = code
        self.field = field
        self.title = title
        self.body = body or {}
        super().__init__(self._line())

    def _line(self) -> str:
        detail = " ".join(str(self.detail).split())  # one line, whatever the server sent
        parts = [detail]
        if self.field and self.field not in detail:
            parts.insert(0, f"{self.field}:")
        suffix = f" (HTTP {self.status} {self.code})" if self.status else ""
        return " ".join(parts) + suffix

    def __str__(self) -> str:
        return self._line()


class BadRequest(CnfClientError):
    """400/422: the request is wrong; ``field`` names what to fix."""


class Unauthorized(CnfClientError):
    """401: no token or a token Keystone does not accept."""


class Forbidden(CnfClientError):
    """403: the token is valid but lacks the role (``admin`` for mutations)."""


class NotFound(CnfClientError):
    """404: unknown VM, cluster, migration or policy (or an endpoint this agent does not serve)."""


class Conflict(CnfClientError):
    """409: the VM is already moving, the name is taken, the migration is past the point of no return, ..."""


class ServerError(CnfClientError):
    """5xx: the agent or one of its drivers failed; ``code`` says which (``driver_unavailable``, ``no_master``)."""


class ApiUnreachable(CnfClientError):
    """No HTTP answer at all: the agent is down, the endpoint is wrong, or the request timed out."""


_BY_STATUS: dict[int, type[CnfClientError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                               409: Conflict, 422: BadRequest}


def raise_from_response(resp: Any) -> None:
    """Raise the client exception for a non-2xx ``requests``-style response; return for a 2xx.

    Prefers the problem+json body; a non-JSON body (a proxy's HTML page) still gives one line with the
    status and the first words of the body.
    """
    status = int(resp.status_code)
    if 200 <= status < 300:
        return
    body: dict[str, Any] = {}
    try:
        parsed = resp.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    detail = body.get("detail") or body.get("title") or (resp.text or "").strip()[:200] or resp.reason or "error"
    if isinstance(detail, list | dict):  # FastAPI's own default shape, should a route bypass problem.py
        detail = json.dumps(detail)
    code = str(body.get("code") or ("server_error" if status >= 500 else "http_error"))
    field = body.get("field")
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else CnfClientError)
    raise cls(str(detail), status=status, code=code, field=str(field) if field else None,
              title=str(body.get("title", "")), body=body)


def _q(segment: str) -> str:
    return quote(segment, safe="")


class CnfClient:
    """REST API v1 over a keystoneauth1 ``Session``. ``endpoint`` is the agent's root (``/v1`` is added here)."""

    def __init__(self, session: Any, endpoint: str, *, api_version: str = "1",
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        endpoint = endpoint.rstrip("/")
        if endpoint.endswith("/v1"):  # catalogs written either way are accepted
            endpoint = endpoint[: -len("/v1")]
        self.session = session
        self.endpoint = endpoint
        self.api_version = api_version
        self.timeout_s = timeout_s

    # --- plumbing ------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
                idempotency_key: str | None = None) -> Any:
        """One HTTP call; returns the decoded JSON (``None`` for 204) or raises a ``CnfClientError``."""
        url = f"{self.endpoint}/v1{path}"
        headers = {"Accept": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        kwargs: dict[str, Any] = {"headers": headers, "raise_exc": False, "timeout": self.timeout_s}
        if body is not None:
            kwargs["json"] = body
        if params:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        try:
            resp = self.session.request(url, method, **kwargs)
        except ks_exc.ConnectTimeout as e:
            raise ApiUnreachable(f"the CNF API at {self.endpoint} did not answer in time ({e})",
                                 code="timeout") from None
        except ks_exc.ConnectFailure:
            raise ApiUnreachable(f"cannot reach the CNF API at {self.endpoint}: connection refused or host "
                                 "unreachable (is cnf-agent running?)", code="unreachable") from None
        except ks_exc.SSLError as e:
            raise ApiUnreachable(f"TLS error talking to the CNF API at {self.endpoint}: {e}", code="tls") from None
        except ks_exc.RequestTimeout:
            raise ApiUnreachable(f"the CNF API at {self.endpoint} did not answer within {self.timeout_s:.0f} s",
                                 code="timeout") from None
        except ks_exc.EndpointNotFound:
            raise ApiUnreachable("no 'cnf' endpoint in the Keystone catalog (openstack endpoint create ... cnf)",
                                 code="no_endpoint") from None
        raise_from_response(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    @staticmethod
    def new_idempotency_key() -> str:
        return f"osc-{uuid.uuid4()}"

    # --- clusters ------------------------------------------------------------------------------------

    def list_clusters(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/clusters")["clusters"])

    def show_cluster(self, cluster: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/clusters/{_q(cluster)}"))

    def cluster_metrics(self, cluster: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/clusters/{_q(cluster)}/metrics"))

    def register_cluster(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/clusters", body=body, idempotency_key=self.new_idempotency_key()))

    # --- vms -----------------------------------------------------------------------------------------

    def list_vms(self, cluster: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        return list(self.request("GET", "/vms", params={"cluster_id": cluster, "status": status})["vms"])

    def show_vm(self, vm: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/vms/{_q(vm)}"))

    def migrate_vm(self, vm: str, body: dict[str, Any], *, live: bool) -> dict[str, Any]:
        """202 + the new migration, or (``body["dry_run"]``) 200 + the preflight report."""
        verb = "live-migrate" if live else "migrate"
        key = None if body.get("dry_run") else self.new_idempotency_key()
        return dict(self.request("POST", f"/vms/{_q(vm)}/{verb}", body=body, idempotency_key=key))

    # --- migrations ----------------------------------------------------------------------------------

    def list_migrations(self, vm: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        return list(self.request("GET", "/migrations", params={"vm_id": vm, "state": state})["migrations"])

    def show_migration(self, migration_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/migrations/{_q(migration_id)}"))

    def abort_migration(self, migration_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/migrations/{_q(migration_id)}/abort",
                                 idempotency_key=self.new_idempotency_key()))

    # --- master --------------------------------------------------------------------------------------

    def show_master(self) -> dict[str, Any]:
        return dict(self.request("GET", "/master"))

    def elect_master(self, cluster: str) -> dict[str, Any]:
        return dict(self.request("POST", "/master/elect", body={"cluster_id": cluster}))

    # --- policies ------------------------------------------------------------------------------------

    def list_policies(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/policies")["policies"])

    def show_policy(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/policies/{_q(name)}"))

    def set_policy(self, name: str, rule: dict[str, Any], enabled: bool = True) -> dict[str, Any]:
        return dict(self.request("PUT", f"/policies/{_q(name)}", body={"rule": rule, "enabled": enabled}))

    def delete_policy(self, name: str) -> None:
        self.request("DELETE", f"/policies/{_q(name)}")

    def evaluate_policy(self, name: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/policies/{_q(name)}/evaluate"))

    def approve_policy(self, name: str, vm_ids: list[str] | None = None) -> list[dict[str, Any]]:
        body = {"vm_ids": vm_ids} if vm_ids else None
        out = self.request("POST", f"/policies/{_q(name)}/approve", body=body)
        return list(out.get("migrations", []))
