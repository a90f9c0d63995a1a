"""The wire contract: generated stubs match the proto, the seed's protoc line still works, every port
type survives a round trip through protobuf, and every CNFError survives the status mapping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cnf import errors
from cnf.grpc import convert, stubs
from cnf.grpc.status import decode_error, encode_error
from cnf.hypervisor.base import Domain, MigrationParams, MigrationProgress
from cnf.network.base import BgpPath, BgpPeer
from cnf.openstack.base import CloudMetrics, Flavor, Host, Server, ServerSpec
from cnf.storage.base import MirrorStatus

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[3]


def test_committed_stubs_match_the_proto() -> None:
    assert stubs.check() == [], "run: python -m cnf.grpc.stubs"


def test_stub_check_detects_an_edited_proto(tmp_path: Path) -> None:
    edited = tmp_path / "cnf.proto"
    edited.write_text(stubs.PROTO_FILE.read_text().replace("message Empty {}", "message Empty { bool x = 1; }"))
    assert stubs.check(edited) == [f"{stubs.STAMP_FILE.name} does not match cnf.proto",
                                   "cnf_pb2.py was generated from a different proto"]


def test_seed_protoc_line_output_imports_from_the_package(tmp_path: Path) -> None:
    """The seed's manual command emits `import cnf_pb2`; the package must import that output too."""
    out = tmp_path / "out"
    out.mkdir()
    seed = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"), f"--python_out={out}",
            f"--grpc_python_out={out}", str(REPO / "proto" / "cnf.proto")]
    subprocess.run(seed, check=True, timeout=60)
    generated = (out / "cnf_pb2_grpc.py").read_text()
    assert "\nimport cnf_pb2 as cnf__pb2\n" in generated  # the top-level import the package must cope with
    probe = (  # load the seed output as the package's modules, the way cnf.grpc.wire does
        "import importlib.util, sys\n"
        f"d = {str(out)!r}\n"
        "def load(name, file):\n"
        "    spec = importlib.util.spec_from_file_location(name, d + '/' + file)\n"
        "    mod = importlib.util.module_from_spec(spec); sys.modules[name] = mod; spec.loader.exec_module(mod)\n"
        "    return mod\n"
        "pb = load('cnf.grpc.cnf_pb2', 'cnf_pb2.py')\n"
        "sys.modules.setdefault('cnf_pb2', pb)\n"
        "g = load('cnf.grpc.cnf_pb2_grpc', 'cnf_pb2_grpc.py')\n"
        "assert g.cnf__pb2 is pb and hasattr(g, 'CNFPeerStub')\n"
        "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_missing_stubs_are_generated(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    assert not stubs.stubs_current(out_dir=out)
    stubs.generate(out_dir=out)
    assert stubs.stubs_current(out_dir=out)
    assert "from cnf.grpc import cnf_pb2 as cnf__pb2" in (out / "cnf_pb2_grpc.py").read_text()
    changed = tmp_path / "cnf.proto"
    changed.write_text(stubs.PROTO_FILE.read_text() + "\n// edited\n")
    assert not stubs.stubs_current(proto=changed, out_dir=out)  # an edited proto makes them stale


def test_every_port_type_round_trips() -> None:
    server = Server(id="v1", name="n", status="ACTIVE", host="h", flavor="f", vcpus=2, ram_mb=512, ip="10.0.0.1",
                    project_id="p", image="img", tags=("a", "b"), cpu_pct=12.5, mem_pct=3.25,
                    metadata={"k": "v"})
    assert convert.server_from_pb(convert.server_to_pb(server)) == server
    host = Host(name="h", vcpus=8, ram_mb=1024, vcpus_used=2, ram_mb_used=256, cpu_model="x", cpu_pct=1.5)
    assert convert.host_from_pb(convert.host_to_pb(host)) == host
    flavor = Flavor(name="f", vcpus=1, ram_mb=64, disk_gb=3)
    assert convert.flavor_from_pb(convert.flavor_to_pb(flavor)) == flavor
    metrics = CloudMetrics(vcpus=1, vcpus_used=2, ram_mb=3, ram_mb_used=4, vm_count=5, cpu_pct=6.5, mem_pct=7.5)
    assert convert.metrics_from_pb(convert.metrics_to_pb(metrics)) == metrics
    spec = ServerSpec(vm_id="v", name="n", flavor="f", vcpus=1, ram_mb=2, ip="10.0.0.2", image="i", host="h",
                      project_id="p", migration_id="m")
    assert convert.spec_from_pb(convert.spec_to_pb(spec)) == spec
    mirror = MirrorStatus(image="i", exists=True, mirroring=True, primary=False, last_snapshot_id=9, in_sync=False,
                          lag_s=float("inf"), split_brain=True)
    assert convert.mirror_from_pb(convert.mirror_to_pb(mirror)) == mirror
    path = BgpPath(prefix="10.0.0.1/32", next_hop="192.0.2.1", origin_as=65001)
    assert convert.path_from_pb(convert.path_to_pb(path)) == path
    peer = BgpPeer(address="192.0.2.254", remote_as=65000, established=True, prefixes_received=3, state="Est")
    assert convert.peer_from_pb(convert.peer_to_pb(peer)) == peer
    domain = Domain(vm_id="v", state="incoming", ram_mb=256)
    assert convert.domain_from_pb(convert.domain_to_pb(domain)) == domain
    params = MigrationParams(downtime_limit_ms=100, max_bandwidth_mbps=5, auto_converge=False, post_copy=True,
                             non_convergence_action="abort", max_passes=4)
    assert convert.params_from_pb(convert.params_to_pb(params)) == params
    for downtime in (None, 0.0, 92.5):
        progress = MigrationProgress(status="completed", transferred_bytes=1 << 40, remaining_bytes=0,
                                     total_bytes=1 << 40, passes=3, dirty_rate_bps=1.5, expected_downtime_ms=2.0,
                                     downtime_ms=downtime, error="e", history=(5, 4, 3))
        assert convert.progress_from_pb(convert.progress_to_pb(progress)) == progress


def _every_error() -> list[errors.CNFError]:
    return [
        errors.InvalidInput("bad", field="prefix"), errors.NotFound("gone", vm_id="v"), errors.Conflict("busy"),
        errors.Unauthorized(), errors.Forbidden(), errors.NoMaster(), errors.Fenced("old", epoch=1, highest_seen=2),
        errors.NotMaster(), errors.PreflightFailed([errors.CheckResult("cpu", False, "too busy")]),
        errors.MigrationAborted(), errors.StepTimeout("slow"), errors.NotConverging(),
        errors.DriverError("x", port="storage"), errors.DriverUnavailable("down"), errors.SplitBrain("two"),
        errors.IllegalTransition("no"), errors.ConfigError("k", key="tls"), errors.CNFError("root"),
    ]


@pytest.mark.parametrize("err", _every_error(), ids=lambda e: e.code)
def test_every_error_survives_the_status_mapping(err: errors.CNFError) -> None:
    code, message, trailing = encode_error(err)
    back = decode_error(code, message, trailing, peer="p", operation="Op")
    assert type(back) is type(err)
    assert back.to_dict() == err.to_dict()
    if isinstance(err, errors.Fenced):
        assert code is grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(("code", "cls"), [
    (grpc.StatusCode.UNAVAILABLE, errors.DriverUnavailable), (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                              errors.DriverUnavailable),
    (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthorized), (grpc.StatusCode.PERMISSION_DENIED, errors.Forbidden),
    (grpc.StatusCode.INTERNAL, errors.DriverError), (grpc.StatusCode.UNIMPLEMENTED, errors.DriverError),
])
def test_transport_failures_name_peer_and_operation(code: grpc.StatusCode, cls: type[errors.CNFError]) -> None:
    err = decode_error(code, "boom", (), peer="p1", operation="CloudStopServer")
    assert type(err) is cls
    assert err.details["peer"] == "p1" and err.details["operation"] == "CloudStopServer"


_PAIRS = [
    (Server, "Server"), (Host, "Host"), (Flavor, "Flavor"), (CloudMetrics, "CloudMetrics"),
    (ServerSpec, "ServerSpec"), (MirrorStatus, "MirrorStatus"), (BgpPath, "BgpPath"), (BgpPeer, "BgpPeer"),
    (Domain, "Domain"), (MigrationParams, "MigrationParams"), (MigrationProgress, "MigrationProgress"),
]


@pytest.mark.parametrize(("cls", "message"), _PAIRS, ids=[m for _c, m in _PAIRS])
def test_proto_messages_carry_every_dataclass_field(cls: type, message: str) -> None:
    """A field added to a port dataclass must be added to the proto (and to cnf.grpc.convert)."""
    import dataclasses

    from cnf.grpc.wire import pb

    proto_fields = {f.name for f in getattr(pb, message).DESCRIPTOR.fields}
    assert {f.name for f in dataclasses.fields(cls)} == proto_fields


_PORTS = [("CloudDriver", "cnf.openstack.base", "RemoteCloud"), ("StorageDriver", "cnf.storage.base", "RemoteStorage"),
          ("BgpDriver", "cnf.network.base", "RemoteBgp"), ("HypervisorDriver", "cnf.hypervisor.base",
                                                               "RemoteHypervisor")]


@pytest.mark.parametrize(("port", "module", "remote"), _PORTS, ids=[p for p, _m, _r in _PORTS])
def test_remote_drivers_implement_every_port_method(port: str, module: str, remote: str) -> None:
    import importlib
    import inspect

    from cnf.grpc import peer_client

    proto_cls = getattr(importlib.import_module(module), port)
    remote_cls = getattr(peer_client, remote)
    methods = [n for n, f in vars(proto_cls).items() if inspect.iscoroutinefunction(f)]
    assert methods
    for name in methods:
        expected = inspect.signature(getattr(proto_cls, name))
        got = inspect.signature(getattr(remote_cls, name))
        assert list(got.parameters.items()) == list(expected.parameters.items()), name


def test_every_cnfpeer_rpc_is_served() -> None:
    from cnf.grpc.server import PeerServicer
    from cnf.grpc.wire import pb, rpc

    service = pb.DESCRIPTOR.services_by_name["CNFPeer"]
    for method in service.methods:
        assert getattr(PeerServicer, method.name) is not getattr(rpc.CNFPeerServicer, method.name), method.name
