from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BoolReply(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: bool
    def __init__(self, value: _Optional[bool] = ...) -> None: ...

class VmQuery(_message.Message):
    __slots__ = ("vm_id", "wait_ms")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    wait_ms: int
    def __init__(self, vm_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class VmMutation(_message.Message):
    __slots__ = ("epoch", "vm_id")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    vm_id: str
    def __init__(self, epoch: _Optional[int] = ..., vm_id: _Optional[str] = ...) -> None: ...

class ImageQuery(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: str
    def __init__(self, image: _Optional[str] = ...) -> None: ...

class ImageMutation(_message.Message):
    __slots__ = ("epoch", "image")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    image: str
    def __init__(self, epoch: _Optional[int] = ..., image: _Optional[str] = ...) -> None: ...

class PrefixQuery(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class Server(_message.Message):
    __slots__ = ("id", "name", "status", "host", "flavor", "vcpus", "ram_mb", "ip", "project_id", "image", "tags", "cpu_pct", "mem_pct", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CPU_PCT_FIELD_NUMBER: _ClassVar[int]
    MEM_PCT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    status: str
    host: str
    flavor: str
    vcpus: int
    ram_mb: int
    ip: str
    project_id: str
    image: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    cpu_pct: float
    mem_pct: float
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., host: _Optional[str] = ..., flavor: _Optional[str] = ..., vcpus: _Optional[int] = ..., ram_mb: _Optional[int] = ..., ip: _Optional[str] = ..., project_id: _Optional[str] = ..., image: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., cpu_pct: _Optional[float] = ..., mem_pct: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ServerList(_message.Message):
    __slots__ = ("servers",)
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    servers: _containers.RepeatedCompositeFieldContainer[Server]
    def __init__(self, servers: _Optional[_Iterable[_Union[Server, _Mapping]]] = ...) -> None: ...

class ServerLookup(_message.Message):
    __slots__ = ("found", "server")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    found: bool
    server: Server
    def __init__(self, found: _Optional[bool] = ..., server: _Optional[_Union[Server, _Mapping]] = ...) -> None: ...

class Host(_message.Message):
    __slots__ = ("name", "vcpus", "ram_mb", "vcpus_used", "ram_mb_used", "cpu_model", "cpu_pct")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    VCPUS_USED_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_USED_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_PCT_FIELD_NUMBER: _ClassVar[int]
    name: str
    vcpus: int
    ram_mb: int
    vcpus_used: int
    ram_mb_used: int
    cpu_model: str
    cpu_pct: float
    def __init__(self, name: _Optional[str] = ..., vcpus: _Optional[int] = ..., ram_mb: _Optional[int] = ..., vcpus_used: _Optional[int] = ..., ram_mb_used: _Optional[int] = ..., cpu_model: _Optional[str] = ..., cpu_pct: _Optional[float] = ...) -> None: ...

class HostList(_message.Message):
    __slots__ = ("hosts",)
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ...) -> None: ...

class Flavor(_message.Message):
    __slots__ = ("name", "vcpus", "ram_mb", "disk_gb")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    DISK_GB_FIELD_NUMBER: _ClassVar[int]
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    def __init__(self, name: _Optional[str] = ..., vcpus: _Optional[int] = ..., ram_mb: _Optional[int] = ..., disk_gb: _Optional[int] = ...) -> None: ...

class FlavorList(_message.Message):
    __slots__ = ("flavors",)
    FLAVORS_FIELD_NUMBER: _ClassVar[int]
    flavors: _containers.RepeatedCompositeFieldContainer[Flavor]
    def __init__(self, flavors: _Optional[_Iterable[_Union[Flavor, _Mapping]]] = ...) -> None: ...

class CloudMetrics(_message.Message):
    __slots__ = ("vcpus", "vcpus_used", "ram_mb", "ram_mb_used", "vm_count", "cpu_pct", "mem_pct")
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    VCPUS_USED_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_USED_FIELD_NUMBER: _ClassVar[int]
    VM_COUNT_FIELD_NUMBER: _ClassVar[int]
    CPU_PCT_FIELD_NUMBER: _ClassVar[int]
    MEM_PCT_FIELD_NUMBER: _ClassVar[int]
    vcpus: int
    vcpus_used: int
    ram_mb: int
    ram_mb_used: int
    vm_count: int
    cpu_pct: float
    mem_pct: float
    def __init__(self, vcpus: _Optional[int] = ..., vcpus_used: _Optional[int] = ..., ram_mb: _Optional[int] = ..., ram_mb_used: _Optional[int] = ..., vm_count: _Optional[int] = ..., cpu_pct: _Optional[float] = ..., mem_pct: _Optional[float] = ...) -> None: ...

class ServerSpec(_message.Message):
    __slots__ = ("vm_id", "name", "flavor", "vcpus", "ram_mb", "ip", "image", "host", "project_id", "migration_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    name: str
    flavor: str
    vcpus: int
    ram_mb: int
    ip: str
    image: str
    host: str
    project_id: str
    migration_id: str
    def __init__(self, vm_id: _Optional[str] = ..., name: _Optional[str] = ..., flavor: _Optional[str] = ..., vcpus: _Optional[int] = ..., ram_mb: _Optional[int] = ..., ip: _Optional[str] = ..., image: _Optional[str] = ..., host: _Optional[str] = ..., project_id: _Optional[str] = ..., migration_id: _Optional[str] = ...) -> None: ...

class BootReceiverRequest(_message.Message):
    __slots__ = ("epoch", "vm_id", "power_on")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    POWER_ON_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    vm_id: str
    power_on: bool
    def __init__(self, epoch: _Optional[int] = ..., vm_id: _Optional[str] = ..., power_on: _Optional[bool] = ...) -> None: ...

class CreateReceiverRequest(_message.Message):
    __slots__ = ("epoch", "spec")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    spec: ServerSpec
    def __init__(self, epoch: _Optional[int] = ..., spec: _Optional[_Union[ServerSpec, _Mapping]] = ...) -> None: ...

class MirrorStatus(_message.Message):
    __slots__ = ("image", "exists", "mirroring", "primary", "last_snapshot_id", "in_sync", "lag_s", "split_brain")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    MIRRORING_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    LAST_SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    LAG_S_FIELD_NUMBER: _ClassVar[int]
    SPLIT_BRAIN_FIELD_NUMBER: _ClassVar[int]
    image: str
    exists: bool
    mirroring: bool
    primary: bool
    last_snapshot_id: int
    in_sync: bool
    lag_s: float
    split_brain: bool
    def __init__(self, image: _Optional[str] = ..., exists: _Optional[bool] = ..., mirroring: _Optional[bool] = ..., primary: _Optional[bool] = ..., last_snapshot_id: _Optional[int] = ..., in_sync: _Optional[bool] = ..., lag_s: _Optional[float] = ..., split_brain: _Optional[bool] = ...) -> None: ...

class SnapshotReply(_message.Message):
    __slots__ = ("snapshot_id",)
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: int
    def __init__(self, snapshot_id: _Optional[int] = ...) -> None: ...

class AnnounceRequest(_message.Message):
    __slots__ = ("epoch", "prefix", "next_hop")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    NEXT_HOP_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    prefix: str
    next_hop: str
    def __init__(self, epoch: _Optional[int] = ..., prefix: _Optional[str] = ..., next_hop: _Optional[str] = ...) -> None: ...

class WithdrawRequest(_message.Message):
    __slots__ = ("epoch", "prefix")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    prefix: str
    def __init__(self, epoch: _Optional[int] = ..., prefix: _Optional[str] = ...) -> None: ...

class BgpPath(_message.Message):
    __slots__ = ("prefix", "next_hop", "origin_as")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    NEXT_HOP_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_AS_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    next_hop: str
    origin_as: int
    def __init__(self, prefix: _Optional[str] = ..., next_hop: _Optional[str] = ..., origin_as: _Optional[int] = ...) -> None: ...

class BgpPathLookup(_message.Message):
    __slots__ = ("found", "path")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    found: bool
    path: BgpPath
    def __init__(self, found: _Optional[bool] = ..., path: _Optional[_Union[BgpPath, _Mapping]] = ...) -> None: ...

class BgpPeer(_message.Message):
    __slots__ = ("address", "remote_as", "established", "prefixes_received", "state")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_AS_FIELD_NUMBER: _ClassVar[int]
    ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    address: str
    remote_as: int
    established: bool
    prefixes_received: int
    state: str
    def __init__(self, address: _Optional[str] = ..., remote_as: _Optional[int] = ..., established: _Optional[bool] = ..., prefixes_received: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class BgpPeerList(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[BgpPeer]
    def __init__(self, peers: _Optional[_Iterable[_Union[BgpPeer, _Mapping]]] = ...) -> None: ...

class Domain(_message.Message):
    __slots__ = ("vm_id", "state", "ram_mb")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    state: str
    ram_mb: int
    def __init__(self, vm_id: _Optional[str] = ..., state: _Optional[str] = ..., ram_mb: _Optional[int] = ...) -> None: ...

class DomainLookup(_message.Message):
    __slots__ = ("found", "domain")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    found: bool
    domain: Domain
    def __init__(self, found: _Optional[bool] = ..., domain: _Optional[_Union[Domain, _Mapping]] = ...) -> None: ...

class PrepareIncomingRequest(_message.Message):
    __slots__ = ("epoch", "vm_id", "ram_mb", "image", "host")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    vm_id: str
    ram_mb: int
    image: str
    host: str
    def __init__(self, epoch: _Optional[int] = ..., vm_id: _Optional[str] = ..., ram_mb: _Optional[int] = ..., image: _Optional[str] = ..., host: _Optional[str] = ...) -> None: ...

class EndpointReply(_message.Message):
    __slots__ = ("uri",)
    URI_FIELD_NUMBER: _ClassVar[int]
    uri: str
    def __init__(self, uri: _Optional[str] = ...) -> None: ...

class MigrationParams(_message.Message):
    __slots__ = ("downtime_limit_ms", "max_bandwidth_mbps", "auto_converge", "post_copy", "non_convergence_action", "max_passes")
    DOWNTIME_LIMIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BANDWIDTH_MBPS_FIELD_NUMBER: _ClassVar[int]
    AUTO_CONVERGE_FIELD_NUMBER: _ClassVar[int]
    POST_COPY_FIELD_NUMBER: _ClassVar[int]
    NON_CONVERGENCE_ACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_PASSES_FIELD_NUMBER: _ClassVar[int]
    downtime_limit_ms: int
    max_bandwidth_mbps: int
    auto_converge: bool
    post_copy: bool
    non_convergence_action: str
    max_passes: int
    def __init__(self, downtime_limit_ms: _Optional[int] = ..., max_bandwidth_mbps: _Optional[int] = ..., auto_converge: _Optional[bool] = ..., post_copy: _Optional[bool] = ..., non_convergence_action: _Optional[str] = ..., max_passes: _Optional[int] = ...) -> None: ...

class StartMigrationRequest(_message.Message):
    __slots__ = ("epoch", "vm_id", "dest_uri", "params")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    DEST_URI_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    vm_id: str
    dest_uri: str
    params: MigrationParams
    def __init__(self, epoch: _Optional[int] = ..., vm_id: _Optional[str] = ..., dest_uri: _Optional[str] = ..., params: _Optional[_Union[MigrationParams, _Mapping]] = ...) -> None: ...

class MigrationProgress(_message.Message):
    __slots__ = ("status", "transferred_bytes", "remaining_bytes", "total_bytes", "passes", "dirty_rate_bps", "expected_downtime_ms", "downtime_ms", "error", "history", "stopped_at", "resumed_at", "throttle_percent")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_BYTES_FIELD_NUMBER: _ClassVar[int]
    REMAINING_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PASSES_FIELD_NUMBER: _ClassVar[int]
    DIRTY_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    STOPPED_AT_FIELD_NUMBER: _ClassVar[int]
    RESUMED_AT_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    status: str
    transferred_bytes: int
    remaining_bytes: int
    total_bytes: int
    passes: int
    dirty_rate_bps: float
    expected_downtime_ms: float
    downtime_ms: float
    error: str
    history: _containers.RepeatedScalarFieldContainer[int]
    stopped_at: float
    resumed_at: float
    throttle_percent: int
    def __init__(self, status: _Optional[str] = ..., transferred_bytes: _Optional[int] = ..., remaining_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., passes: _Optional[int] = ..., dirty_rate_bps: _Optional[float] = ..., expected_downtime_ms: _Optional[float] = ..., downtime_ms: _Optional[float] = ..., error: _Optional[str] = ..., history: _Optional[_Iterable[int]] = ..., stopped_at: _Optional[float] = ..., resumed_at: _Optional[float] = ..., throttle_percent: _Optional[int] = ...) -> None: ...

class ConvergenceRequest(_message.Message):
    __slots__ = ("epoch", "vm_id", "action")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    vm_id: str
    action: str
    def __init__(self, epoch: _Optional[int] = ..., vm_id: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class PeerDescription(_message.Message):
    __slots__ = ("cluster_id", "as_number", "default_next_hop", "highest_epoch")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    AS_NUMBER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_NEXT_HOP_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    as_number: int
    default_next_hop: str
    highest_epoch: int
    def __init__(self, cluster_id: _Optional[str] = ..., as_number: _Optional[int] = ..., default_next_hop: _Optional[str] = ..., highest_epoch: _Optional[int] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("name", "ok", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    detail: str
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("cluster_id", "version", "healthy", "checks", "role", "master_id", "highest_epoch", "uptime_s")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MASTER_ID_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    version: str
    healthy: bool
    checks: _containers.RepeatedCompositeFieldContainer[HealthCheck]
    role: str
    master_id: str
    highest_epoch: int
    uptime_s: float
    def __init__(self, cluster_id: _Optional[str] = ..., version: _Optional[str] = ..., healthy: _Optional[bool] = ..., checks: _Optional[_Iterable[_Union[HealthCheck, _Mapping]]] = ..., role: _Optional[str] = ..., master_id: _Optional[str] = ..., highest_epoch: _Optional[int] = ..., uptime_s: _Optional[float] = ...) -> None: ...

class InventorySnapshot(_message.Message):
    __slots__ = ("cluster_id", "taken_at", "servers", "hosts", "flavors", "metrics")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    TAKEN_AT_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    FLAVORS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    taken_at: float
    servers: _containers.RepeatedCompositeFieldContainer[Server]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    flavors: _containers.RepeatedCompositeFieldContainer[Flavor]
    metrics: CloudMetrics
    def __init__(self, cluster_id: _Optional[str] = ..., taken_at: _Optional[float] = ..., servers: _Optional[_Iterable[_Union[Server, _Mapping]]] = ..., hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ..., flavors: _Optional[_Iterable[_Union[Flavor, _Mapping]]] = ..., metrics: _Optional[_Union[CloudMetrics, _Mapping]] = ...) -> None: ...

class HandoverRequest(_message.Message):
    __slots__ = ("epoch", "from_cluster_id", "to_cluster_id")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FROM_CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    TO_CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    from_cluster_id: str
    to_cluster_id: str
    def __init__(self, epoch: _Optional[int] = ..., from_cluster_id: _Optional[str] = ..., to_cluster_id: _Optional[str] = ...) -> None: ...

class HandoverReply(_message.Message):
    __slots__ = ("accepted", "detail", "epoch")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    detail: str
    epoch: int
    def __init__(self, accepted: _Optional[bool] = ..., detail: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...
