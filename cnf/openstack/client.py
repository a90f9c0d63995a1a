"""``OpenStackCloud``: the CloudDriver over openstacksdk/keystoneauth1 for one real OpenStack cloud.

Why this shape:
- One ``openstack.connection.Connection`` per cloud, built once from the cluster's registration
  (password or application credential) and reused for every call: one keystoneauth session,
  one token, connection pooling. Never a client per call.
- openstacksdk is synchronous; every call runs in this driver's own small thread pool under
  ``asyncio.wait_for`` so the agent's event loop never blocks, and every HTTP request also has
  ``api_timeout`` so a hung cloud cannot pin a thread forever. A cloud that refuses or does not
  answer becomes ``DriverUnavailable`` within ``call_timeout`` seconds.
- Library errors are translated exactly once, in ``_translate``: unreachable -> DriverUnavailable,
  404 -> NotFound, a wait that ran out -> StepTimeout naming what was awaited, anything else ->
  DriverError carrying the HTTP status and the operation.

Identity across clouds: Nova assigns a new UUID to every server it creates, so the destination
record of a migrated VM cannot keep the source's UUID. CNF's VM id is the UUID the VM had in the
cloud it was first seen in; every record CNF creates for it carries the Nova tag ``cnf-vm-<id>`` and
the metadata ``cnf_vm_id``. ``get_server(vm_id)`` resolves the tag when the id is not a local UUID,
and ``Server.id`` is always the CNF id (the local Nova UUID is in ``metadata["nova_id"]``).

The receiver pattern (see ``docs/openstack.md`` and ``cnf/openstack/receiver.py``): the destination
record of a migration is created through Nova's normal API, tagged ``cnf-mig-<migration>`` and with
metadata ``cnf_receiver=incoming``; the CNF receiver compute driver on the destination host
prepares an incoming domain instead of booting a guest, and CNF pauses the record (Nova status
PAUSED). ``activate_receiver`` (live) / ``boot_receiver`` (cold) set ``cnf_receiver=activate|boot``
and *unpause* it: Nova's unpause reaches the receiver driver on that host, which adopts the arrived
domain or boots the guest and acknowledges ``active|booted`` in the metadata. ``retire_server``
marks the source record ``cnf_state=departed`` first, so the receiver driver's ``destroy`` keeps
the disk, then deletes it through Nova.

Secrets: ``CloudCredentials.__repr__`` hides password and application credential secret; no log
line of this module contains them.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

import structlog

from cnf.clock import Clock, SystemClock
from cnf.errors import (
    CNFError,
    DriverError,
    DriverUnavailable,
    IllegalTransition,
    InvalidInput,
    NotFound,
    StepTimeout,
)
from cnf.openstack.base import CloudMetrics, Flavor, Host, Server, ServerSpec

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: metadata / tag vocabulary shared with ``cnf.openstack.receiver`` (kept as plain strings there:
#: the receiver runs inside nova-compute, which does not import the rest of CNF)
META_VM_ID = "cnf_vm_id"
META_MIGRATION = "cnf_migration"
META_RECEIVER = "cnf_receiver"  # incoming -> activate -> active (live) | incoming -> boot -> booted (cold)
META_STATE = "cnf_state"  # "departed" on a source record about to be retired
META_IP = "cnf_ip"
META_IMAGE = "cnf_image"
META_PORT = "cnf_port"  # a Neutron port CNF created for this record (deleted with it)
TAG_RECEIVER = "cnf-receiver"
PENDING_RECEIVER = ("incoming", "activate", "boot")
POWER_RUNNING = 1
POWER_PAUSED = 3
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def vm_tag(vm_id: str) -> str:
    return f"cnf-vm-{vm_id}"[:60]


def migration_tag(migration_id: str) -> str:
    return f"cnf-mig-{migration_id}"[:60]


# --- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudCredentials:
    """What ``cluster register`` stores for one cloud. Password or application credential.

    ``repr`` never shows a secret, so logging a ``CloudCredentials`` by mistake leaks nothing.
    """

    auth_url: str
    username: str = ""
    password: str = field(default="", repr=False)
    project_name: str = ""
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    application_credential_id: str = ""
    application_credential_secret: str = field(default="", repr=False)
    region_name: str = "RegionOne"
    interface: str = "public"
    verify: bool | str = True

    def validate(self) -> None:
        """Raise ``InvalidInput`` naming the field for a registration that cannot work."""
        url = urlparse(self.auth_url or "")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise InvalidInput(f"auth_url must be an http(s) URL, got {self.auth_url!r}", field="auth_url")
        if self.application_credential_id or self.application_credential_secret:
            if not self.application_credential_id:
                raise InvalidInput("application_credential_id is required", field="application_credential_id")
            if not self.application_credential_secret:
                raise InvalidInput("application_credential_secret is required",
                                   field="application_credential_secret")
            return
        if not self.username:
            raise InvalidInput("username (or an application credential) is required", field="username")
        if not self.password:
            raise InvalidInput("password is required", field="password")
        if not self.project_name:
            raise InvalidInput("project_name is required", field="project_name")

    def auth_args(self) -> dict[str, Any]:
        """Keyword arguments for ``openstack.connect`` (contains secrets: never log the result)."""
        if self.application_credential_id:
            auth: dict[str, Any] = {
                "auth_type": "v3applicationcredential",
                "auth": {"auth_url": self.auth_url, "application_credential_id": self.application_credential_id,
                         "application_credential_secret": self.application_credential_secret},
            }
        else:
            auth = {
                "auth_type": "password",
                "auth": {"auth_url": self.auth_url, "username": self.username, "password": self.password,
                         "project_name": self.project_name, "user_domain_name": self.user_domain_name,
                         "project_domain_name": self.project_domain_name},
            }
        return {**auth, "region_name": self.region_name or None, "interface": self.interface,
                "verify": self.verify}

    def secret_field(self) -> str:
        return "application_credential_secret" if self.application_credential_id else "password"


# --- error translation ----------------------------------------------------------------------


def _translate(exc: BaseException, operation: str, cluster_id: str) -> CNFError:
    """Map one openstacksdk/keystoneauth exception to the project's error (the only such table)."""
    from keystoneauth1 import exceptions as ka
    from openstack import exceptions as sdk

    details = {"port": "cloud", "operation": operation, "cluster_id": cluster_id}
    if isinstance(exc, CNFError):
        return exc
    if isinstance(exc, (ka.ConnectFailure, ka.ConnectTimeout, ka.RetriableConnectionFailure,
                        asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return DriverUnavailable(f"cloud {cluster_id} unreachable during {operation}: {type(exc).__name__}",
                                 **details)
    if isinstance(exc, ka.http.HttpError):
        status = int(getattr(exc, "http_status", 0) or 0)
        if status in (502, 503, 504):
            return DriverUnavailable(f"cloud {cluster_id} answered {status} during {operation}", **details,
                                     http_status_upstream=status)
        if status == 404:
            return NotFound(f"{operation}: not found in cloud {cluster_id}", **details)
        return DriverError(f"{operation} failed in cloud {cluster_id}: HTTP {status}", **details,
                           http_status_upstream=status)
    if isinstance(exc, ka.ClientException):  # auth plugin / discovery problems without an HTTP status
        return DriverError(f"{operation} failed in cloud {cluster_id}: {type(exc).__name__}: {exc}", **details)
    if isinstance(exc, sdk.ResourceTimeout):
        return StepTimeout(f"{operation} timed out in cloud {cluster_id}", **details)
    if isinstance(exc, (sdk.NotFoundException, sdk.ResourceNotFound)):
        return NotFound(f"{operation}: not found in cloud {cluster_id}", **details)
    if isinstance(exc, sdk.HttpException):
        status = int(exc.status_code or 0)
        if status in (502, 503, 504):
            return DriverUnavailable(f"cloud {cluster_id} answered {status} during {operation}", **details,
                                     http_status_upstream=status)
        msg = (exc.details or str(exc))[:300]
        return DriverError(f"{operation} failed in cloud {cluster_id}: HTTP {status}: {msg}", **details,
                           http_status_upstream=status)
    if isinstance(exc, sdk.SDKException):
        return DriverError(f"{operation} failed in cloud {cluster_id}: {exc}", **details)
    return DriverError(f"{operation} failed in cloud {cluster_id}: {type(exc).__name__}: {exc}", **details)


# --- credential check for `cluster register` --------------------------------------------------


def _verify_blocking(creds: CloudCredentials, timeout: float) -> dict[str, Any]:
    from keystoneauth1 import exceptions as ka
    from keystoneauth1 import loading, session

    loader: Any = loading.get_plugin_loader(creds.auth_args()["auth_type"])
    plugin = loader.load_from_options(**creds.auth_args()["auth"])
    sess = session.Session(auth=plugin, verify=creds.verify, timeout=timeout)
    try:
        sess.get_token()
        project_id = sess.get_project_id()
        compute = sess.get_endpoint(service_type="compute", interface=creds.interface,
                                    region_name=creds.region_name or None)
    except ka.Unauthorized as exc:
        raise InvalidInput(f"Keystone at {creds.auth_url} rejected the credentials (HTTP 401)",
                           field=creds.secret_field()) from exc
    except ka.http.HttpError as exc:
        raise InvalidInput(f"Keystone at {creds.auth_url} refused the credentials (HTTP {exc.http_status})",
                           field=creds.secret_field()) from exc
    except ka.EndpointNotFound as exc:
        raise InvalidInput(f"no compute endpoint in region {creds.region_name!r} of {creds.auth_url}",
                           field="region_name") from exc
    finally:
        sess.session.close()
    return {"project_id": project_id, "compute_endpoint": compute}


async def verify_credentials(creds: CloudCredentials, *, timeout_s: float = 10.0,
                             cluster_id: str = "") -> dict[str, Any]:
    """Check ``creds`` against the cloud's Keystone before ``cluster register`` stores them.

    Returns ``{"project_id", "compute_endpoint"}``. Raises ``InvalidInput`` (field named) for
    malformed or rejected credentials, ``DriverUnavailable`` when Keystone cannot be reached within
    ``timeout_s``. The secret is never part of a log line or an error message.
    """
    creds.validate()
    try:
        result = await asyncio.wait_for(asyncio.to_thread(_verify_blocking, creds, timeout_s), timeout_s + 2)
    except InvalidInput:
        log.info("cloud.credentials_rejected", auth_url=creds.auth_url, cluster_id=cluster_id)
        raise
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise _translate(exc, "verify_credentials", cluster_id) from exc
    log.info("cloud.credentials_verified", auth_url=creds.auth_url, cluster_id=cluster_id,
             project_id=result["project_id"])
    return result


# --- the driver ---------------------------------------------------------------------------------


def _first_fixed_ip(addresses: dict[str, Any] | None) -> str:
    for entries in (addresses or {}).values():
        for a in entries or []:
            if a.get("version", 4) == 4 and a.get("OS-EXT-IPS:type", "fixed") == "fixed":
                return str(a.get("addr", ""))
    return ""


def _cpu_model(cpu_info: Any) -> str:
    if isinstance(cpu_info, dict):
        return str(cpu_info.get("model") or "unknown")
    if isinstance(cpu_info, str):
        try:
            parsed = json.loads(cpu_info)
        except ValueError:
            return "unknown"
        if isinstance(parsed, dict):
            return str(parsed.get("model") or "unknown")
    return "unknown"


class OpenStackCloud:
    """CloudDriver for one OpenStack cloud (Nova + Placement; Neutron when ``network`` is set).

    Parameters:
    - ``network``: name or id of the Neutron network receivers get their port on (with the VM's
      fixed IP). ``None``: no Neutron port is made; the fixed IP is carried in metadata ``cnf_ip``.
    - ``attach_port``: boot the receiver on that port (production). ``False`` creates the port but
      boots with ``networks="none"`` and records the port in metadata ``cnf_port`` — the lab's
      Neutron runs without agents and cannot bind ports to a compute host.
    - ``receiver_image``: Glance image the receiver record is created from when the disk is not a
      Cinder volume (lab: the tiny image; the receiver driver never boots it on the live path).
    - ``call_timeout``: bound of one API call, seconds; ``wait_timeout``: bound of a state wait.
    """

    def __init__(self, cluster_id: str, creds: CloudCredentials, *, network: str | None = None,
                 attach_port: bool = True, receiver_image: str = "", call_timeout: float = 20.0,
                 wait_timeout: float = 120.0, poll_interval: float = 0.5, clock: Clock | None = None,
                 max_workers: int = 4) -> None:
        creds.validate()
        self.cluster_id = cluster_id
        self._creds = creds
        self.network = network
        self.attach_port = attach_port
        self.receiver_image = receiver_image
        self.call_timeout = call_timeout
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        self.clock: Clock = clock or SystemClock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"cloud-{cluster_id}")
        self._conn: Any = None
        self._conn_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenStackCloud(cluster_id={self.cluster_id!r}, auth_url={self._creds.auth_url!r})"

    # --- plumbing ------------------------------------------------------------------------------

    def _connection(self) -> Any:
        """The one Connection of this cloud (created lazily, in a worker thread)."""
        with self._conn_lock:
            if self._conn is None:
                import openstack

                self._conn = openstack.connect(
                    **self._creds.auth_args(), api_timeout=self.call_timeout, connect_retries=0,
                    status_code_retries=0, load_yaml_config=False, load_envvars=False,
                    app_name="cnf", app_version="0.1",
                )
            return self._conn

    async def _call(self, operation: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(connection)`` in the pool, bounded by ``call_timeout``, errors translated."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, lambda: fn(self._connection()))
        try:
            return await asyncio.wait_for(fut, self.call_timeout + 1.0)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            err = _translate(exc, operation, self.cluster_id)
            log.warning("cloud.call_failed", cluster_id=self.cluster_id, operation=operation,
                        error=err.code, reason=err.message)
            raise err from exc

    def close(self) -> None:
        """Drop the connection and the thread pool (agent shutdown)."""
        with self._conn_lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:
                    pass
                self._conn = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- server lookup ---------------------------------------------------------------------------

    def _to_server(self, s: Any) -> Server:
        meta = {str(k): str(v) for k, v in (s.metadata or {}).items()}
        nova_id = str(s.id)
        cnf_id = meta.get(META_VM_ID) or nova_id
        flavor = s.flavor or {}
        if hasattr(flavor, "to_dict"):
            flavor = flavor.to_dict()
        meta["nova_id"] = nova_id
        if meta.get(META_RECEIVER) in PENDING_RECEIVER:
            meta["cnf:receiver"] = meta.get(META_MIGRATION, "")  # the engine's "pending receiver" marker
        meta["power_state"] = str(s.power_state if s.power_state is not None else "")
        if s.task_state:
            meta["task_state"] = str(s.task_state)
        if s.attached_volumes:
            meta["volumes"] = ",".join(str(v.get("id", "")) for v in s.attached_volumes)
        return Server(
            id=cnf_id, name=str(s.name or ""), status=str(s.status or ""), host=str(s.compute_host or ""),
            flavor=str(flavor.get("original_name") or flavor.get("name") or flavor.get("id") or ""),
            vcpus=int(flavor.get("vcpus") or 0), ram_mb=int(flavor.get("ram") or 0),
            ip=_first_fixed_ip(s.addresses) or meta.get(META_IP, ""), project_id=str(s.project_id or ""),
            image=meta.get(META_IMAGE) or f"{cnf_id}_disk", tags=tuple(s.tags or ()), metadata=meta,
        )

    @staticmethod
    def _find_raw(conn: Any, vm_id: str) -> Any:
        """The live Nova record for CNF id ``vm_id`` (local UUID or ``cnf-vm-`` tag), or None."""
        from openstack import exceptions as sdk

        if _UUID.match(vm_id):
            try:
                s = conn.compute.get_server(vm_id)
            except sdk.NotFoundException:
                s = None
            if s is not None and s.status != "DELETED" and (s.metadata or {}).get(META_VM_ID, vm_id) == vm_id:
                return s
        found = [s for s in conn.compute.servers(details=True, all_projects=True, tags=vm_tag(vm_id))
                 if s.status != "DELETED"]
        if not found:
            return None
        # a receiver being retried could leave two records; the newest is the one being built
        found.sort(key=lambda s: str(s.created_at or ""))
        return found[-1]

    async def _raw(self, vm_id: str, operation: str) -> Any:
        s = await self._call(operation, lambda c: self._find_raw(c, vm_id))
        if s is None:
            raise NotFound(f"server {vm_id} not found in cloud {self.cluster_id}", port="cloud",
                           operation=operation, cluster_id=self.cluster_id, vm_id=vm_id)
        return s

    async def _wait(self, vm_id: str, what: str, ok: Callable[[Any], bool], *, gone_ok: bool = False,
                    within_s: float | None = None) -> Any:
        """Poll the server until ``ok(server)``; ERROR fails at once; the deadline raises StepTimeout."""
        deadline = self.clock.now() + (within_s if within_s is not None else self.wait_timeout)
        last = "absent"
        while True:
            s = await self._call(f"wait:{what}", lambda c: self._find_raw(c, vm_id))
            if s is None:
                if gone_ok:
                    return None
            else:
                last = f"status={s.status} power={s.power_state} task={s.task_state}"
                if ok(s):
                    return s
                if s.status == "ERROR":
                    fault = (s.fault or {}).get("message", "") if isinstance(s.fault, dict) else ""
                    raise DriverError(f"server {vm_id} went to ERROR while waiting for {what}: {fault}",
                                      port="cloud", operation=what, cluster_id=self.cluster_id, vm_id=vm_id)
            if self.clock.now() >= deadline:
                raise StepTimeout(f"server {vm_id} in cloud {self.cluster_id}: {what} not reached ({last})",
                                  port="cloud", operation=what, cluster_id=self.cluster_id, vm_id=vm_id)
            await self.clock.sleep(self.poll_interval)

    # --- inventory -------------------------------------------------------------------------------

    async def list_servers(self) -> list[Server]:
        raw = await self._call("list_servers",
                               lambda c: list(c.compute.servers(details=True, all_projects=True)))
        # a pending receiver is not yet a VM of this cloud (its VM still runs at the source): hide it,
        # as the sim does, so inventory never sees one VM in two clouds
        return [self._to_server(s) for s in raw if s.status != "DELETED"
                and (s.metadata or {}).get(META_RECEIVER) not in PENDING_RECEIVER]

    async def get_server(self, vm_id: str) -> Server | None:
        s = await self._call("get_server", lambda c: self._find_raw(c, vm_id))
        return None if s is None else self._to_server(s)

    async def list_flavors(self) -> list[Flavor]:
        raw = await self._call("list_flavors", lambda c: list(c.compute.flavors(details=True, is_public=None)))
        return [Flavor(name=str(f.name), vcpus=int(f.vcpus), ram_mb=int(f.ram), disk_gb=int(f.disk or 0))
                for f in raw]

    @staticmethod
    def _placement_hosts(conn: Any) -> list[dict[str, Any]]:
        """Capacity and allocation per compute node, from Placement (Nova hides them since 2.88)."""
        out = []
        for rp in conn.placement.resource_providers():
            inv = conn.placement.get(f"/resource_providers/{rp.id}/inventories",
                                     microversion="1.10").json().get("inventories", {})
            use = conn.placement.get(f"/resource_providers/{rp.id}/usages",
                                     microversion="1.10").json().get("usages", {})
            if "VCPU" not in inv or "MEMORY_MB" not in inv:
                continue  # sharing providers etc.

            def cap(rc: str, inv: dict[str, Any] = inv) -> int:
                i = inv[rc]
                return int((int(i["total"]) - int(i.get("reserved", 0))) * float(i.get("allocation_ratio", 1.0)))

            out.append({"name": str(rp.name), "cpu_model": "unknown", "vcpus": cap("VCPU"), "ram_mb": cap("MEMORY_MB"),
                        "vcpus_used": int(use.get("VCPU", 0)), "ram_mb_used": int(use.get("MEMORY_MB", 0))})
        models: dict[str, str] = {}
        try:  # cpu_info left the API in 2.88; ask at 2.87 and live without it if refused
            resp = conn.compute.get("/os-hypervisors/detail", microversion="2.87")
            for h in resp.json().get("hypervisors", []):
                models[str(h.get("hypervisor_hostname"))] = _cpu_model(h.get("cpu_info"))
        except Exception:
            pass
        for row in out:
            row["cpu_model"] = models.get(str(row["name"]), "unknown")
        return out

    async def list_hosts(self) -> list[Host]:
        rows = await self._call("list_hosts", self._placement_hosts)
        return [Host(name=r["name"], vcpus=r["vcpus"], ram_mb=r["ram_mb"], vcpus_used=r["vcpus_used"],
                     ram_mb_used=r["ram_mb_used"], cpu_model=r["cpu_model"],
                     cpu_pct=100.0 * r["vcpus_used"] / r["vcpus"] if r["vcpus"] else 0.0) for r in rows]

    async def metrics(self) -> CloudMetrics:
        """Allocation-based figures: Nova/Placement know allocations, not live load (see docs)."""
        hosts = await self.list_hosts()
        servers = await self.list_servers()
        vcpus = sum(h.vcpus for h in hosts)
        ram = sum(h.ram_mb for h in hosts)
        vu = sum(h.vcpus_used for h in hosts)
        ru = sum(h.ram_mb_used for h in hosts)
        return CloudMetrics(vcpus=vcpus, vcpus_used=vu, ram_mb=ram, ram_mb_used=ru, vm_count=len(servers),
                            cpu_pct=100.0 * vu / vcpus if vcpus else 0.0, mem_pct=100.0 * ru / ram if ram else 0.0)

    # --- power -----------------------------------------------------------------------------------

    async def stop_server(self, vm_id: str) -> None:
        s = await self._raw(vm_id, "stop_server")
        if s.status != "SHUTOFF":
            if s.status == "ACTIVE" and not s.task_state:
                await self._call("stop_server", lambda c: c.compute.stop_server(s.id))
            log.info("cloud.server_stop", cluster_id=self.cluster_id, vm_id=vm_id, from_status=s.status)
        await self._wait(vm_id, "status SHUTOFF", lambda x: x.status == "SHUTOFF" and not x.task_state)

    async def start_server(self, vm_id: str) -> None:
        s = await self._raw(vm_id, "start_server")
        if not (s.status == "ACTIVE" and s.power_state == POWER_RUNNING):
            if s.status == "SHUTOFF" and not s.task_state:
                await self._call("start_server", lambda c: c.compute.start_server(s.id))
            log.info("cloud.server_start", cluster_id=self.cluster_id, vm_id=vm_id, from_status=s.status)
        await self._wait(vm_id, "status ACTIVE", lambda x: x.status == "ACTIVE" and not x.task_state)

    # --- receiver --------------------------------------------------------------------------------

    def _map_flavor(self, conn: Any, spec: ServerSpec) -> Any:
        """Same name first; else the smallest flavor with the same vCPUs and RAM; else NotFound."""
        flavors = list(conn.compute.flavors(details=True, is_public=None))
        for f in flavors:
            if f.name == spec.flavor:
                return f
        same = sorted((f for f in flavors if int(f.vcpus) == spec.vcpus and int(f.ram) == spec.ram_mb),
                      key=lambda f: int(f.disk or 0))
        if same:
            return same[0]
        raise NotFound(f"no flavor in cloud {self.cluster_id} maps {spec.flavor} "
                       f"({spec.vcpus} vCPU, {spec.ram_mb} MB)", port="cloud", operation="create_receiver",
                       cluster_id=self.cluster_id, flavor=spec.flavor)

    def _ensure_port(self, conn: Any, spec: ServerSpec) -> Any:
        """The Neutron port holding ``spec.ip`` for this migration (reused when it already exists)."""
        net = conn.network.find_network(self.network, ignore_missing=False)
        name = f"cnf-receiver-{spec.migration_id}"
        for p in conn.network.ports(network_id=net.id, fixed_ips=f"ip_address={spec.ip}"):
            if p.name == name:
                return p
            raise IllegalTransition(f"fixed IP {spec.ip} is already used by port {p.id} in cloud {self.cluster_id}",
                                    port="cloud", operation="create_receiver", cluster_id=self.cluster_id)
        return conn.network.create_port(network_id=net.id, name=name, fixed_ips=[{"ip_address": spec.ip}])

    def _create_receiver_blocking(self, conn: Any, spec: ServerSpec) -> Any:
        existing = [s for s in conn.compute.servers(details=True, all_projects=True,
                                                    tags=migration_tag(spec.migration_id))
                    if s.status not in ("DELETED", "ERROR")]
        if existing:
            return existing[0]
        flavor = self._map_flavor(conn, spec)
        image = conn.image.find_image(self.receiver_image, ignore_missing=False)
        meta = {META_VM_ID: spec.vm_id, META_MIGRATION: spec.migration_id, META_RECEIVER: "incoming",
                META_IP: spec.ip, META_IMAGE: spec.image}
        networks: Any = "none"
        if self.network:
            port = self._ensure_port(conn, spec)
            meta[META_PORT] = str(port.id)
            if self.attach_port:
                networks = [{"port": port.id}]
        kwargs: dict[str, Any] = {}
        if spec.host:
            kwargs["availability_zone"] = f"nova:{spec.host}"
        return conn.compute.create_server(
            name=spec.name, flavor_id=flavor.id, image_id=image.id, networks=networks,
            metadata=meta, tags=[TAG_RECEIVER, vm_tag(spec.vm_id), migration_tag(spec.migration_id)], **kwargs)

    async def create_receiver(self, spec: ServerSpec) -> Server:
        """Nova builds the record (receiver driver: incoming domain, power PAUSED), then CNF pauses
        it so Nova's own status says PAUSED until the VM is activated or booted."""
        if not spec.migration_id:
            raise InvalidInput("a receiver needs the migration id", field="migration_id")
        if not spec.ip:
            raise InvalidInput("a receiver needs the fixed IP", field="ip")
        if not self.receiver_image:
            raise DriverError(f"cloud {self.cluster_id} has no receiver_image configured", port="cloud",
                              operation="create_receiver", cluster_id=self.cluster_id)
        created = await self._call("create_receiver", lambda c: self._create_receiver_blocking(c, spec))
        log.info("cloud.receiver_created", cluster_id=self.cluster_id, vm_id=spec.vm_id,
                 migration_id=spec.migration_id, nova_id=created.id)
        try:
            s = await self._wait(spec.vm_id, "receiver built",
                                 lambda x: x.status in ("ACTIVE", "PAUSED") and not x.task_state)
        except DriverError:
            # a receiver that failed to build never held the VM: remove the ERROR record (the port stays
            # for the retry) so a retried create_receiver starts clean, then report the failure
            failed = await self._call("create_receiver", lambda c: self._find_raw(c, spec.vm_id))
            if failed is not None and failed.status == "ERROR":
                await self._delete(failed, spec.vm_id, "create_receiver")
            raise
        if s.status == "ACTIVE":
            if (s.metadata or {}).get(META_RECEIVER) != "incoming" or s.power_state != POWER_PAUSED:
                raise DriverError(f"host {s.compute_host} of cloud {self.cluster_id} booted receiver {spec.vm_id} "
                                  "as a normal guest: the CNF receiver compute driver is not installed there",
                                  port="cloud", operation="create_receiver", cluster_id=self.cluster_id,
                                  vm_id=spec.vm_id)
            await self._call("create_receiver", lambda c: c.compute.pause_server(s.id))
            s = await self._wait(spec.vm_id, "receiver PAUSED", lambda x: x.status == "PAUSED" and not x.task_state)
        return self._to_server(s)

    async def _signal_receiver(self, vm_id: str, signal: str, ack: str, what: str) -> Server:
        s = await self._raw(vm_id, what)
        state = (s.metadata or {}).get(META_RECEIVER)
        if state is None:
            raise IllegalTransition(f"server {vm_id} in cloud {self.cluster_id} is not a receiver", port="cloud",
                                    operation=what, cluster_id=self.cluster_id, vm_id=vm_id)
        if state == ack and s.status == "ACTIVE":
            return self._to_server(s)
        if state not in (signal, ack):
            if state != "incoming":
                raise IllegalTransition(f"receiver {vm_id} in cloud {self.cluster_id} is {state}, cannot {signal}",
                                        port="cloud", operation=what, cluster_id=self.cluster_id, vm_id=vm_id)
            await self._call(what, lambda c: c.compute.set_server_metadata(s.id, **{META_RECEIVER: signal}))
        if s.status == "PAUSED" and not s.task_state:
            await self._call(what, lambda c: c.compute.unpause_server(s.id))
            log.info("cloud.receiver_signalled", cluster_id=self.cluster_id, vm_id=vm_id, signal=signal)

        def done(x: Any) -> bool:
            acked = (x.metadata or {}).get(META_RECEIVER)
            if x.status == "ACTIVE" and not x.task_state and acked == signal:
                raise DriverError(f"receiver {vm_id} was unpaused but host {x.compute_host} did not acknowledge "
                                  f"{signal!r}: the CNF receiver compute driver is not installed there",
                                  port="cloud", operation=what, cluster_id=self.cluster_id, vm_id=vm_id)
            return bool(x.status == "ACTIVE" and not x.task_state and acked == ack
                        and x.power_state == POWER_RUNNING)

        ready = await self._wait(vm_id, f"receiver {ack}", done)
        return self._to_server(ready)

    async def activate_receiver(self, vm_id: str) -> Server:
        """Live path: the domain arrived; the receiver driver adopts it and acknowledges ``active``."""
        return await self._signal_receiver(vm_id, "activate", "active", "activate_receiver")

    async def boot_receiver(self, vm_id: str, power_on: bool = True) -> Server:
        """Cold path: the receiver driver boots the guest (production: from the promoted volume).
        ``power_on=False`` leaves it SHUTOFF afterwards (the VM was stopped at the source)."""
        server = await self._signal_receiver(vm_id, "boot", "booted", "boot_receiver")
        if not power_on:
            await self.stop_server(vm_id)
            found = await self.get_server(vm_id)
            assert found is not None
            server = found
        return server

    async def _delete(self, s: Any, vm_id: str, operation: str) -> None:
        from openstack import exceptions as sdk

        def delete(c: Any) -> None:
            try:
                c.compute.delete_server(s.id)
            except sdk.NotFoundException:
                pass

        await self._call(operation, delete)
        deadline = self.clock.now() + self.wait_timeout
        while True:
            gone = await self._call(f"wait:{operation}", lambda c: self._gone(c, s.id))
            if gone:
                return
            if self.clock.now() >= deadline:
                raise StepTimeout(f"server {vm_id} in cloud {self.cluster_id}: deletion not finished",
                                  port="cloud", operation=operation, cluster_id=self.cluster_id, vm_id=vm_id)
            await self.clock.sleep(self.poll_interval)

    @staticmethod
    def _gone(conn: Any, nova_id: str) -> bool:
        from openstack import exceptions as sdk

        try:
            s = conn.compute.get_server(nova_id)
        except sdk.NotFoundException:
            return True
        return bool(s.status == "DELETED")

    async def _drop_port(self, s: Any, operation: str) -> None:
        """Delete the Neutron port CNF made for this record (Nova deletes only ports it created)."""
        port_id = (s.metadata or {}).get(META_PORT)
        if not port_id:
            return
        await self._call(operation, lambda c: c.network.delete_port(port_id, ignore_missing=True))

    async def delete_receiver(self, vm_id: str) -> None:
        """Compensation before the point of no return; idempotent. Deletes nothing but a receiver that
        has not gone live: for any other server it is a logged no-op, so a wrong id never kills a VM."""
        s = await self._call("delete_receiver", lambda c: self._find_raw(c, vm_id))
        if s is None:
            return
        state = (s.metadata or {}).get(META_RECEIVER)
        if state not in PENDING_RECEIVER:
            log.warning("cloud.delete_receiver_refused", cluster_id=self.cluster_id, vm_id=vm_id,
                        receiver_state=state or "none")
            return
        await self._delete(s, vm_id, "delete_receiver")
        await self._drop_port(s, "delete_receiver")
        log.info("cloud.receiver_deleted", cluster_id=self.cluster_id, vm_id=vm_id)

    async def retire_server(self, vm_id: str) -> None:
        """CLEANUP on the source: mark ``cnf_state=departed`` (the receiver driver then keeps the
        disk and does not touch the departed domain), delete the Nova record; idempotent."""
        s = await self._call("retire_server", lambda c: self._find_raw(c, vm_id))
        if s is None:
            return
        if (s.metadata or {}).get(META_STATE) != "departed":
            await self._call("retire_server", lambda c: c.compute.set_server_metadata(s.id, **{META_STATE: "departed"}))
        await self._delete(s, vm_id, "retire_server")
        await self._drop_port(s, "retire_server")
        log.info("cloud.server_retired", cluster_id=self.cluster_id, vm_id=vm_id, nova_id=s.id)


def cloud_from_registration(cluster_id: str, registration: dict[str, Any], **kwargs: Any) -> OpenStackCloud:
    """Build the driver from a stored registration dict (keys of ``CloudCredentials``, plus
    optional ``network``, ``attach_port`` and ``receiver_image``). Unknown keys are refused, naming the key."""
    known = set(CloudCredentials.__dataclass_fields__)
    extra = {"network", "attach_port", "receiver_image"}
    for k in registration:
        if k not in known | extra:
            raise InvalidInput(f"unknown registration key {k!r}", field=k)
    creds = CloudCredentials(**{k: v for k, v in registration.items() if k in known})
    opts = {k: registration[k] for k in extra if k in registration}
    return OpenStackCloud(cluster_id, creds, **opts, **kwargs)


__all__ = ["CloudCredentials", "OpenStackCloud", "cloud_from_registration", "verify_credentials"]
