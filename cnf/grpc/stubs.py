"""Generated gRPC stubs: produce them without a manual ``protoc`` step, and import them from the package.

Why: the seed asked operators to run ``python -m grpc_tools.protoc ...`` after every install. Here the
stubs (``cnf/grpc/cnf_pb2.py``, ``cnf_pb2_grpc.py``, ``cnf_pb2.pyi``) are committed with the source, so a
plain ``pip install`` ships them, and :func:`ensure_current` regenerates them when they are missing or
older than ``proto/cnf.proto`` (checked by the proto's SHA-256 recorded in ``cnf_pb2.proto-sha256``)
in a source checkout. ``python -m cnf.grpc.stubs`` regenerates explicitly; ``--check`` fails when the
committed stubs do not match the proto (used by the test suite).

The seed's own command keeps working: it writes the same files, but ``protoc`` emits
``import cnf_pb2`` (a top-level module) in ``cnf_pb2_grpc.py``. :func:`load` registers the package
module under that name before importing the grpc stubs, and :func:`generate` rewrites the line to a
package import, so both outputs import cleanly.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

log = structlog.get_logger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_FILE = PACKAGE_DIR.parent.parent / "proto" / "cnf.proto"
STAMP_FILE = PACKAGE_DIR / "cnf_pb2.proto-sha256"
GENERATED = ("cnf_pb2.py", "cnf_pb2_grpc.py", "cnf_pb2.pyi")
_TOPLEVEL_IMPORT = "import cnf_pb2 as cnf__pb2"
_PACKAGE_IMPORT = "from cnf.grpc import cnf_pb2 as cnf__pb2"


def proto_digest(proto: Path = PROTO_FILE) -> str:
    return hashlib.sha256(proto.read_bytes()).hexdigest()


def generate(proto: Path = PROTO_FILE, out_dir: Path = PACKAGE_DIR) -> None:
    """Run protoc (from ``grpcio-tools``) and move the outputs into ``out_dir`` atomically.

    Atomic per file (write in a temp dir, ``os.replace``) so two processes importing at once never
    see a half-written module. Raises ``RuntimeError`` when protoc fails.
    """
    from grpc_tools import protoc  # build/dev dependency only

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".protoc-") as tmp:
        argv = ["grpc_tools.protoc", f"-I{proto.parent}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                f"--pyi_out={tmp}", str(proto)]
        rc = protoc.main(argv)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc} for {proto}")
        grpc_file = Path(tmp) / "cnf_pb2_grpc.py"
        grpc_file.write_text(grpc_file.read_text().replace(_TOPLEVEL_IMPORT, _PACKAGE_IMPORT))
        for name in GENERATED:
            os.replace(Path(tmp) / name, out_dir / name)
        stamp = Path(tmp) / STAMP_FILE.name
        stamp.write_text(proto_digest(proto) + "\n")
        os.replace(stamp, out_dir / STAMP_FILE.name)
    log.info("grpc_stubs_generated", proto=str(proto), out_dir=str(out_dir))


def stubs_current(proto: Path = PROTO_FILE, out_dir: Path = PACKAGE_DIR) -> bool:
    """True when every generated file exists and was generated from this exact proto."""
    if not all((out_dir / name).exists() for name in GENERATED[:2]):
        return False
    if not proto.exists():
        return True  # installed package without the proto: the shipped stubs are the truth
    stamp = out_dir / STAMP_FILE.name
    return stamp.exists() and stamp.read_text().strip() == proto_digest(proto)


def ensure_current() -> None:
    """Regenerate the stubs if missing or stale; keep the existing ones if protoc is unavailable."""
    if stubs_current():
        return
    try:
        generate()
    except ImportError:
        if not all((PACKAGE_DIR / name).exists() for name in GENERATED[:2]):
            raise RuntimeError("gRPC stubs missing and grpcio-tools not installed: "
                               "pip install grpcio-tools, then python -m cnf.grpc.stubs") from None
        log.warning("grpc_stubs_stale", reason="grpcio-tools not installed", proto=str(PROTO_FILE))
    except OSError as exc:  # read-only install tree
        log.warning("grpc_stubs_stale", reason=str(exc), proto=str(PROTO_FILE))


def load() -> tuple[ModuleType, ModuleType]:
    """Import ``cnf_pb2`` and ``cnf_pb2_grpc`` from the package (whichever way they were generated)."""
    ensure_current()
    from cnf.grpc import cnf_pb2

    sys.modules.setdefault("cnf_pb2", cnf_pb2)  # output of the seed's plain protoc line says `import cnf_pb2`
    from cnf.grpc import cnf_pb2_grpc

    return cnf_pb2, cnf_pb2_grpc


def fresh_descriptor(proto: Path = PROTO_FILE) -> bytes:
    """The serialized FileDescriptorProto protoc makes from ``proto`` (no source info)."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        rc = protoc.main(["grpc_tools.protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}", str(proto)])
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc} for {proto}")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    fd = fds.file[0]
    for msg in _all_messages(fd.message_type):  # the python generator does not embed json_name
        for fld in msg.field:
            fld.ClearField("json_name")
    return bytes(fd.SerializeToString(deterministic=True))


def _all_messages(messages: Any) -> list[Any]:
    out = []
    for m in messages:
        out.append(m)
        out.extend(_all_messages(m.nested_type))
    return out


def check(proto: Path = PROTO_FILE) -> list[str]:
    """Why the committed stubs do not match ``proto`` (empty list = they do).

    Compares meaning, not bytes, so a different (newer) grpcio-tools on the checking machine does not
    flag stubs as stale: the stamp must name this proto, and the descriptor embedded in ``cnf_pb2.py``
    must equal the one protoc builds from the proto now.
    """
    problems = []
    for name in GENERATED[:2]:
        if not (PACKAGE_DIR / name).exists():
            problems.append(f"{name} missing")
    if problems:
        return problems
    stamp = PACKAGE_DIR / STAMP_FILE.name
    if not stamp.exists() or stamp.read_text().strip() != proto_digest(proto):
        problems.append(f"{STAMP_FILE.name} does not match {proto.name}")
    from google.protobuf import descriptor_pb2

    from cnf.grpc import cnf_pb2

    embedded = descriptor_pb2.FileDescriptorProto.FromString(cnf_pb2.DESCRIPTOR.serialized_pb)
    if bytes(embedded.SerializeToString(deterministic=True)) != fresh_descriptor(proto):
        problems.append("cnf_pb2.py was generated from a different proto")
    grpc_text = (PACKAGE_DIR / "cnf_pb2_grpc.py").read_text()
    if _PACKAGE_IMPORT not in grpc_text and _TOPLEVEL_IMPORT not in grpc_text:
        problems.append("cnf_pb2_grpc.py does not import cnf_pb2")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--check"]:
        stale = check()
        if stale:
            print("stale gRPC stubs (run: python -m cnf.grpc.stubs): " + "; ".join(stale), file=sys.stderr)
            return 1
        print("gRPC stubs match proto/cnf.proto")
        return 0
    generate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
