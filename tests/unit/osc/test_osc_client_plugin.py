"""``CnfClient`` + ``raise_from_response`` (problem+json -> one-line exceptions), the plugin hooks, ``--wait``."""

from __future__ import annotations

import importlib.metadata
import io
from types import SimpleNamespace
from typing import Any

import pytest
from keystoneauth1 import exceptions as ks_exc
from osc_cli_fakes import FakeCnfClient, migration
from osc_lib import exceptions as osc_exc

from cnf.osc import client as cnf_client
from cnf.osc import plugin
from cnf.osc.v1 import COMMANDS
from cnf.osc.v1.common import wait_for_migration

pytestmark = pytest.mark.timeout(30)


class Resp:
    def __init__(self, status: int, body: Any = None, text: str | None = None) -> None:
        self.status_code = status
        self._body = body
        self.text = text if text is not None else ("" if body is None else "json")
        self.content = b"x" if (body is not None or text) else b""
        self.reason = "Reason"

    def json(self) -> Any:
        if self._body is None:
            raise ValueError("no json")
        return self._body


def problem(status: int, code: str, detail: str, **extra: Any) -> Resp:
    return Resp(status, {"type": f"https://docs.openstack-cnf.org/errors/{code}", "title": code, "status": status,
                         "detail": detail, "code": code, **extra})


@pytest.mark.parametrize("resp,cls,line", [
    (problem(404, "not_found", "VM ghost not found"), cnf_client.NotFound, "VM ghost not found (HTTP 404 not_found)"),
    (problem(422, "invalid_input", "dest_next_hop: '10.0.0.300' is not an IPv4 address", field="dest_next_hop"),
     cnf_client.BadRequest, "dest_next_hop: '10.0.0.300' is not an IPv4 address (HTTP 422 invalid_input)"),
    (problem(422, "invalid_input", "must be host:port", field="grpc_addr"), cnf_client.BadRequest,
     "grpc_addr: must be host:port (HTTP 422 invalid_input)"),
    (problem(409, "conflict", "VM vm-1 is already\nmoving", migration_id="m"), cnf_client.Conflict,
     "VM vm-1 is already moving (HTTP 409 conflict)"),
    (problem(403, "forbidden", "this action needs the admin role"), cnf_client.Forbidden,
     "this action needs the admin role (HTTP 403 forbidden)"),
    (problem(401, "unauthorized", "token not valid"), cnf_client.Unauthorized, "token not valid (HTTP 401"),
    (problem(503, "no_master", "no master is elected right now"), cnf_client.ServerError, "(HTTP 503 no_master)"),
    (Resp(502, text="<html>Bad gateway</html>"), cnf_client.ServerError, "<html>Bad gateway</html> (HTTP 502"),
])
def test_raise_from_response(resp: Resp, cls: type, line: str) -> None:
    with pytest.raises(cls) as e:
        cnf_client.raise_from_response(resp)
    assert line in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, osc_exc.CommandError)  # cliff prints it as one line, exit 1
    assert e.value.status == resp.status_code
    if resp._body:
        assert e.value.code == resp._body["code"] and e.value.field == resp._body.get("field")


def test_raise_from_response_passes_2xx() -> None:
    cnf_client.raise_from_response(Resp(200, {}))
    cnf_client.raise_from_response(Resp(204))


class FakeSession:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def request(self, url: str, method: str, **kwargs: Any) -> Any:
        self.calls.append((url, method, kwargs))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_request_builds_url_headers_and_params() -> None:
    sess = FakeSession(Resp(200, {"vms": [{"id": "a"}]}))
    c = cnf_client.CnfClient(sess, "http://agent:8080/v1/")
    assert c.endpoint == "http://agent:8080"
    assert c.list_vms(cluster="openstack-1") == [{"id": "a"}]
    url, method, kw = sess.calls[0]
    assert (url, method) == ("http://agent:8080/v1/vms", "GET")
    assert kw["params"] == {"cluster_id": "openstack-1"} and kw["raise_exc"] is False and kw["timeout"] == 30.0
    sess.result = Resp(202, {"id": "m"})
    c.migrate_vm("vm/1", {"dest_cluster_id": "x"}, live=True)
    url, method, kw = sess.calls[1]
    assert url == "http://agent:8080/v1/vms/vm%2F1/live-migrate" and method == "POST"
    assert kw["headers"]["Idempotency-Key"].startswith("osc-") and kw["json"] == {"dest_cluster_id": "x"}
    c.migrate_vm("vm", {"dest_cluster_id": "x", "dry_run": True}, live=False)
    assert "Idempotency-Key" not in sess.calls[2][2]["headers"]  # a dry run is safe to repeat
    sess.result = Resp(204)
    assert c.delete_policy("p") is None


@pytest.mark.parametrize("exc,needle", [
    (ks_exc.ConnectFailure("refused"), "cannot reach the CNF API at http://agent:8080"),
    (ks_exc.ConnectTimeout("slow"), "did not answer in time"),
    (ks_exc.EndpointNotFound(), "no 'cnf' endpoint in the Keystone catalog"),
])
def test_transport_errors_are_one_line(exc: Exception, needle: str) -> None:
    c = cnf_client.CnfClient(FakeSession(exc), "http://agent:8080")
    with pytest.raises(cnf_client.ApiUnreachable) as e:
        c.show_master()
    assert needle in str(e.value) and "\n" not in str(e.value)


def _instance(override: str | None = None, catalog: str | None = None) -> Any:
    def get_endpoint(service_type: str, region_name: str | None = None, interface: str | None = None) -> Any:
        assert service_type == "cnf" and region_name == "RegionOne" and interface == "public"
        return catalog

    return SimpleNamespace(_api_version={"cnf": "1"}, session=object(), region_name="RegionOne", interface="public",
                           _override_for=lambda st: override, get_endpoint_for_service_type=get_endpoint)


def test_make_client_endpoint_resolution() -> None:
    assert plugin.make_client(_instance(catalog="http://cnf.example:8080")).endpoint == "http://cnf.example:8080"
    assert plugin.make_client(_instance(override="http://o:1/v1", catalog="http://c:2")).endpoint == "http://o:1"
    with pytest.raises(osc_exc.CommandError, match="no CNF endpoint"):
        plugin.make_client(_instance())


def test_plugin_module_contract() -> None:
    assert plugin.API_NAME == "cnf" and plugin.API_VERSION_OPTION == "os_cnf_api_version"
    assert plugin.check_api_version("1") is True
    with pytest.raises(osc_exc.CommandError):
        plugin.check_api_version("2")
    import argparse

    ns = plugin.build_option_parser(argparse.ArgumentParser()).parse_args(["--os-cnf-api-version", "1"])
    assert ns.os_cnf_api_version == "1"


def test_installed_entry_points_match_the_command_table() -> None:
    """pyproject.toml's ``openstack.cnf.v1`` group must list every command class (and nothing else)."""
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="openstack.cnf.v1")}
    assert eps == COMMANDS
    ext = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="openstack.cli.extension")}
    assert ext.get("cnf") == "cnf.osc.plugin"
    for value in COMMANDS.values():
        module, cls = value.split(":")
        assert hasattr(importlib.import_module(module), cls)


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_wait_redraws_one_line_on_a_tty() -> None:
    client = FakeCnfClient()
    client.migrations = [migration(done=1), migration(phase="MEMORY", step="memory.precopy", done=2, percent=42.0),
                         migration(state="completed", phase="CLEANUP", step="", done=6)]
    out = TtyStream()
    m = wait_for_migration(client, "m-1", stream=out, sleep=lambda _s: None)  # type: ignore[arg-type]
    assert m["state"] == "completed"
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "MEMORY" in text and "memory  42.0% copied" in text and "ETA 3 s" in text


def test_wait_gives_up_after_the_timeout() -> None:
    client = FakeCnfClient()
    client.migrations = [migration()]
    t = [0.0]

    def sleep(s: float) -> None:
        t[0] += s

    with pytest.raises(osc_exc.CommandError, match="still running in DISK after 2 s"):
        wait_for_migration(client, "m-1", stream=io.StringIO(), timeout_s=2, interval_s=1,  # type: ignore[arg-type]
                           sleep=sleep, monotonic=lambda: t[0])


def test_wait_rides_out_a_short_outage() -> None:
    client = FakeCnfClient()
    answers: list[Any] = [migration(done=1), cnf_client.ApiUnreachable("down", code="unreachable"),
                          cnf_client.ServerError("no master", status=503, code="no_master"),
                          migration(state="completed", phase="CLEANUP", step="", done=6)]

    def show(mid: str) -> dict[str, Any]:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return dict(a)

    client.show_migration = show  # type: ignore[method-assign]
    assert wait_for_migration(client, "m-1", stream=io.StringIO(),  # type: ignore[arg-type]
                              sleep=lambda _s: None)["state"] == "completed"
    client.show_migration = lambda mid: (_ for _ in ()).throw(  # type: ignore[method-assign]
        cnf_client.ApiUnreachable("down", code="unreachable"))
    with pytest.raises(cnf_client.ApiUnreachable):
        wait_for_migration(client, "m-1", stream=io.StringIO(), sleep=lambda _s: None)  # type: ignore[arg-type]
