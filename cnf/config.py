"""``/etc/cnf/cnf.yaml``: the seed's keys, validated, with ``CNF_*`` environment overrides.

Why pydantic-settings: operators get one schema (``docs/config.md``, generated
sample ``etc/cnf.yaml.sample``), typed values and errors that name the key. A bad
file stops the agent at start with ONE line (``cnf.yaml: bgp.as_number: ...``)
and exit code 2 — never a traceback.

Precedence (highest first): ``CNF_*`` environment (nested with ``__``, e.g.
``CNF_BGP__AS_NUMBER=65002``; ``CNF_API_PORT`` for the REST port), the YAML file,
defaults. No file at all = the embedded default (three sim clouds, SQLite,
in-process tasks, single-node election) so ``cnf-agent`` runs on a laptop.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cnf.errors import ConfigError

DEFAULT_PATH = Path("/etc/cnf/cnf.yaml")
Backend = Literal["sim", "real"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CephConfig(_Section):
    pool: str = "vms"
    mirror_mode: Literal["image", "pool"] = "image"
    conf: str = "/etc/ceph/ceph.conf"
    client_name: str = "admin"
    keyring: str = ""
    cluster_name: str = ""  # the Ceph cluster's name (default: cluster_name)
    mirror_lag_limit_s: float = Field(30.0, gt=0)


class BgpConfig(_Section):
    as_number: int = Field(65001, ge=1, le=4294967294)
    route_reflector_addr: str = ""
    next_hop: str = ""  # default next hop for this cloud's /32s ("" = router id)
    vtysh_pathspace: str = ""  # FRR instance (vtysh -N) when not the default one
    observer_pathspace: str = ""  # FRR instance whose table shows what the rest of the fabric sees
    # "socket": one persistent session on bgpd's vtysh socket (vtysh's own protocol, ~0.2 ms a command);
    # "vtysh": one vtysh process per change (~25 ms idle, 0.1-0.35 s loaded). docs/bgp.md has the measurements.
    transport: Literal["socket", "vtysh"] = "socket"
    frr_run_dir: str = "/var/run/frr"  # where FRR's <daemon>.vty sockets live (transport "socket")


class RaftConfig(_Section):
    etcd_endpoints: list[str] = Field(default_factory=list)
    lease_ttl_s: float = Field(5.0, ge=2.0, le=60.0)

    @field_validator("etcd_endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        for ep in v:
            host, _, port = ep.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{ep!r} is not host:port")
        return v


class DatabaseConfig(_Section):
    url: str = "sqlite+aiosqlite:///cnf.sqlite"

    @field_validator("url")
    @classmethod
    def _async_driver(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("must be sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return v


class DriversConfig(_Section):
    """Which implementation each port uses: ``sim`` (embedded, tests) or ``real``."""

    cloud: Backend = "sim"
    storage: Backend = "sim"
    bgp: Backend = "sim"
    hypervisor: Backend = "sim"


class KeystoneAuthConfig(_Section):
    """keystone auth: the service user the agent validates tokens with (needs the ``service`` or ``admin`` role)."""

    auth_url: str = ""
    username: str = ""
    password: str = Field("", repr=False)
    project_name: str = "service"
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    cache_ttl_s: float = Field(60.0, ge=0, le=3600)
    timeout_s: float = Field(10.0, gt=0, le=120)
    verify: bool | str = True


class ApiConfig(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)
    auth_strategy: Literal["noauth", "keystone"] = "noauth"
    advertise_url: str = ""  # how peers reach this agent's REST API (for the proxy)
    keystone: KeystoneAuthConfig = Field(default_factory=KeystoneAuthConfig)

    @model_validator(mode="after")
    def _keystone_needs_a_service_user(self) -> ApiConfig:
        if self.auth_strategy == "keystone":
            for key in ("auth_url", "username", "password"):
                if not getattr(self.keystone, key):
                    raise ValueError(f"api.keystone.{key} is required when auth_strategy is keystone")
        return self


class TlsConfig(_Section):
    """mTLS between agents: ``dir`` holds ``ca.crt`` and ``<cluster_id>.crt/.key`` (``cnf-manage``)."""

    dir: str = ""
    allow_plaintext: bool = False  # development only: peers are then not authenticated


class SimConfig(_Section):
    """The ``sim`` drivers' world. ``state_file`` shares one world between agent processes (tests, demos)."""

    state_file: str = ""
    vms: int = Field(0, ge=0, le=1000)  # VMs to seed in this agent's sim cloud when it is created
    replication_mbps: float = Field(400.0, gt=0)


class OpenStackConfig(_Section):
    """This cloud's Keystone credentials for ``drivers.cloud: real`` (the agent's own cloud)."""

    auth_url: str = ""
    username: str = ""
    password: str = Field("", repr=False)
    project_name: str = ""
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    application_credential_id: str = ""
    application_credential_secret: str = Field("", repr=False)
    region_name: str = "RegionOne"
    network: str = ""  # Neutron network of the receivers' ports ("" = no Neutron)
    #: bind the receiver to that port at boot (production); False: make the port but boot without a NIC (a Neutron
    #: without agents cannot bind ports, see docs/openstack.md)
    attach_port: bool = True
    #: Glance image (name or id) receiver records are created from; ``create_receiver`` refuses without one
    receiver_image: str = ""


class HypervisorConfig(_Section):
    """How ``drivers.hypervisor: real`` starts QEMU (the same machine description on both sides)."""

    runtime_dir: str = "/var/lib/cnf/qemu"
    #: the QEMU executable (or a wrapper that execs it, e.g. into another network namespace: the PID spawned must
    #: become QEMU's, the driver records it as the domain's pid)
    binary: str = "qemu-system-x86_64"
    accel: str = "kvm"
    kernel: str = ""
    initrd: str = ""
    append: str = "console=ttyS0 quiet"
    disk_template: str = "rbd:vms/{image}:conf=/etc/ceph/ceph.conf"
    listen_address: str = "127.0.0.1"
    #: appended to every QEMU command line of this cloud, e.g. the guest NIC's ``-netdev``/``-device`` pair: its
    #: guest-visible devices must be the same on both sides of a migration (only backends may differ)
    extra_args: list[str] = Field(default_factory=list)


class SchedulerConfig(_Section):
    interval_s: float = Field(30.0, ge=1.0, le=3600.0)  # how often the master evaluates the policies


class TasksConfig(_Section):
    """Durable work (``docs/durable-work.md``): who drives migrations, and the Celery runner's knobs."""

    runner: Literal["inprocess", "celery"] = "inprocess"
    broker_url: str = "redis://127.0.0.1:6379/0"
    #: one engine action (one step's check/do/poll) may not run longer (Celery soft limit; hard = +5 s)
    step_time_limit_s: float = Field(60.0, gt=0)
    #: the DB lease on a migration row; renewed every third of it while a worker acts
    lease_ttl_s: float = Field(10.0, ge=1.0)
    #: the master re-enqueues an unfinished migration nobody has heart-beaten for this long
    reconcile_stale_s: float = Field(15.0, ge=1.0)
    reconcile_every_s: float = Field(3.0, gt=0)
    #: Redis redelivers an unacknowledged task after this long (a killed worker's task comes back)
    visibility_timeout_s: float = Field(60.0, ge=1.0)


class CNFConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CNF_", env_nested_delimiter="__", extra="forbid")

    cluster_id: str = "11111111-1111-4111-8111-111111111111"
    cluster_name: str = "openstack-1"
    cluster_grpc_addr: str = "127.0.0.1:50051"
    peer_clusters: list[str] = Field(default_factory=list)
    ceph: CephConfig = Field(default_factory=CephConfig)
    bgp: BgpConfig = Field(default_factory=BgpConfig)
    raft: RaftConfig = Field(default_factory=RaftConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    drivers: DriversConfig = Field(default_factory=DriversConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    openstack: OpenStackConfig = Field(default_factory=OpenStackConfig)
    hypervisor: HypervisorConfig = Field(default_factory=HypervisorConfig)
    sim: SimConfig = Field(default_factory=SimConfig)
    state_dir: str = "/var/lib/cnf"  # small local state: the highest peer epoch seen
    #: embedded default: serve the demo's three sim clouds from this one agent
    embedded: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("cluster_id")
    @classmethod
    def _uuid(cls, v: str) -> str:
        try:
            uuid.UUID(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a UUID") from None
        return v

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


def _first_error(e: ValidationError, source: str) -> ConfigError:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(root)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return ConfigError(f"{source}: {key}: {msg}", key=key)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> CNFConfig:
    """Load the config; ``path=None`` uses ``/etc/cnf/cnf.yaml`` if it exists, else the embedded default.

    Raises ``ConfigError`` (one line naming the key) for any problem.
    """
    data: dict[str, Any] = {}
    source = "environment"
    explicit = path is not None
    p = Path(path) if path is not None else DEFAULT_PATH
    if p.exists():
        source = p.name
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}: not valid YAML{where}", key="(file)") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys", key="(file)")
        data = loaded
    elif explicit:
        raise ConfigError(f"{p}: file not found", key="(file)")
    else:
        data = {"embedded": True}
    data.update(overrides or {})
    if "CNF_API_PORT" in os.environ and "CNF_API__PORT" not in os.environ:
        api = dict(data.get("api") or {})
        api["port"] = os.environ["CNF_API_PORT"]
        data["api"] = api
    try:
        return CNFConfig(**data)
    except ValidationError as e:
        raise _first_error(e, source) from None
