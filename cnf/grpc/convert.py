"""Port dataclasses <-> protobuf messages, one pair of functions per type.

Why a hand-written pair per type rather than reflection: the proto is the wire contract and the
dataclasses are the port contract; an explicit field list makes a drift between them a test failure
(``tests/functional/grpc/test_convert.py`` round-trips every type) instead of a silent zero.
"""

from __future__ import annotations

from cnf.grpc.wire import pb
from cnf.hypervisor.base import Domain, MigrationParams, MigrationProgress
from cnf.network.base import BgpPath, BgpPeer
from cnf.openstack.base import CloudMetrics, Flavor, Host, Server, ServerSpec
from cnf.storage.base import MirrorStatus

# --- cloud -------------------------------------------------------------------------------------


def server_to_pb(s: Server) -> pb.Server:
    return pb.Server(id=s.id, name=s.name, status=s.status, host=s.host, flavor=s.flavor, vcpus=s.vcpus,
                     ram_mb=s.ram_mb, ip=s.ip, project_id=s.project_id, image=s.image, tags=list(s.tags),
                     cpu_pct=s.cpu_pct, mem_pct=s.mem_pct, metadata=dict(s.metadata))


def server_from_pb(m: pb.Server) -> Server:
    return Server(id=m.id, name=m.name, status=m.status, host=m.host, flavor=m.flavor, vcpus=m.vcpus,
                  ram_mb=m.ram_mb, ip=m.ip, project_id=m.project_id, image=m.image, tags=tuple(m.tags),
                  cpu_pct=m.cpu_pct, mem_pct=m.mem_pct, metadata=dict(m.metadata))


def host_to_pb(h: Host) -> pb.Host:
    return pb.Host(name=h.name, vcpus=h.vcpus, ram_mb=h.ram_mb, vcpus_used=h.vcpus_used,
                   ram_mb_used=h.ram_mb_used, cpu_model=h.cpu_model, cpu_pct=h.cpu_pct)


def host_from_pb(m: pb.Host) -> Host:
    return Host(name=m.name, vcpus=m.vcpus, ram_mb=m.ram_mb, vcpus_used=m.vcpus_used, ram_mb_used=m.ram_mb_used,
                cpu_model=m.cpu_model, cpu_pct=m.cpu_pct)


def flavor_to_pb(f: Flavor) -> pb.Flavor:
    return pb.Flavor(name=f.name, vcpus=f.vcpus, ram_mb=f.ram_mb, disk_gb=f.disk_gb)


def flavor_from_pb(m: pb.Flavor) -> Flavor:
    return Flavor(name=m.name, vcpus=m.vcpus, ram_mb=m.ram_mb, disk_gb=m.disk_gb)


def metrics_to_pb(c: CloudMetrics) -> pb.CloudMetrics:
    return pb.CloudMetrics(vcpus=c.vcpus, vcpus_used=c.vcpus_used, ram_mb=c.ram_mb, ram_mb_used=c.ram_mb_used,
                           vm_count=c.vm_count, cpu_pct=c.cpu_pct, mem_pct=c.mem_pct)


def metrics_from_pb(m: pb.CloudMetrics) -> CloudMetrics:
    return CloudMetrics(vcpus=m.vcpus, vcpus_used=m.vcpus_used, ram_mb=m.ram_mb, ram_mb_used=m.ram_mb_used,
                        vm_count=m.vm_count, cpu_pct=m.cpu_pct, mem_pct=m.mem_pct)


def spec_to_pb(s: ServerSpec) -> pb.ServerSpec:
    return pb.ServerSpec(vm_id=s.vm_id, name=s.name, flavor=s.flavor, vcpus=s.vcpus, ram_mb=s.ram_mb, ip=s.ip,
                         image=s.image, host=s.host, project_id=s.project_id, migration_id=s.migration_id)


def spec_from_pb(m: pb.ServerSpec) -> ServerSpec:
    return ServerSpec(vm_id=m.vm_id, name=m.name, flavor=m.flavor, vcpus=m.vcpus, ram_mb=m.ram_mb, ip=m.ip,
                      image=m.image, host=m.host, project_id=m.project_id, migration_id=m.migration_id)


# --- storage -----------------------------------------------------------------------------------


def mirror_to_pb(s: MirrorStatus) -> pb.MirrorStatus:
    return pb.MirrorStatus(image=s.image, exists=s.exists, mirroring=s.mirroring, primary=s.primary,
                           last_snapshot_id=s.last_snapshot_id, in_sync=s.in_sync, lag_s=s.lag_s,
                           split_brain=s.split_brain)


def mirror_from_pb(m: pb.MirrorStatus) -> MirrorStatus:
    return MirrorStatus(image=m.image, exists=m.exists, mirroring=m.mirroring, primary=m.primary,
                        last_snapshot_id=m.last_snapshot_id, in_sync=m.in_sync, lag_s=m.lag_s,
                        split_brain=m.split_brain)


# --- bgp ---------------------------------------------------------------------------------------


def path_to_pb(p: BgpPath) -> pb.BgpPath:
    return pb.BgpPath(prefix=p.prefix, next_hop=p.next_hop, origin_as=p.origin_as)


def path_from_pb(m: pb.BgpPath) -> BgpPath:
    return BgpPath(prefix=m.prefix, next_hop=m.next_hop, origin_as=m.origin_as)


def peer_to_pb(p: BgpPeer) -> pb.BgpPeer:
    return pb.BgpPeer(address=p.address, remote_as=p.remote_as, established=p.established,
                      prefixes_received=p.prefixes_received, state=p.state)


def peer_from_pb(m: pb.BgpPeer) -> BgpPeer:
    return BgpPeer(address=m.address, remote_as=m.remote_as, established=m.established,
                   prefixes_received=m.prefixes_received, state=m.state)


# --- hypervisor --------------------------------------------------------------------------------


def domain_to_pb(d: Domain) -> pb.Domain:
    return pb.Domain(vm_id=d.vm_id, state=d.state, ram_mb=d.ram_mb)


def domain_from_pb(m: pb.Domain) -> Domain:
    return Domain(vm_id=m.vm_id, state=m.state, ram_mb=m.ram_mb)


def params_to_pb(p: MigrationParams) -> pb.MigrationParams:
    return pb.MigrationParams(downtime_limit_ms=p.downtime_limit_ms, max_bandwidth_mbps=p.max_bandwidth_mbps,
                              auto_converge=p.auto_converge, post_copy=p.post_copy,
                              non_convergence_action=p.non_convergence_action, max_passes=p.max_passes)


def params_from_pb(m: pb.MigrationParams) -> MigrationParams:
    return MigrationParams(downtime_limit_ms=m.downtime_limit_ms, max_bandwidth_mbps=m.max_bandwidth_mbps,
                           auto_converge=m.auto_converge, post_copy=m.post_copy,
                           non_convergence_action=m.non_convergence_action, max_passes=m.max_passes)


def progress_to_pb(p: MigrationProgress) -> pb.MigrationProgress:
    msg = pb.MigrationProgress(status=p.status, transferred_bytes=p.transferred_bytes,
                               remaining_bytes=p.remaining_bytes, total_bytes=p.total_bytes, passes=p.passes,
                               dirty_rate_bps=p.dirty_rate_bps, expected_downtime_ms=p.expected_downtime_ms,
                               error=p.error, history=list(p.history), throttle_percent=p.throttle_percent)
    for name in ("downtime_ms", "stopped_at", "resumed_at"):
        value = getattr(p, name)
        if value is not None:
            setattr(msg, name, value)
    return msg


def progress_from_pb(m: pb.MigrationProgress) -> MigrationProgress:
    return MigrationProgress(status=m.status, transferred_bytes=m.transferred_bytes,
                             remaining_bytes=m.remaining_bytes, total_bytes=m.total_bytes, passes=m.passes,
                             dirty_rate_bps=m.dirty_rate_bps, expected_downtime_ms=m.expected_downtime_ms,
                             downtime_ms=m.downtime_ms if m.HasField("downtime_ms") else None, error=m.error,
                             history=tuple(m.history),
                             stopped_at=m.stopped_at if m.HasField("stopped_at") else None,
                             resumed_at=m.resumed_at if m.HasField("resumed_at") else None,
                             throttle_percent=m.throttle_percent)
