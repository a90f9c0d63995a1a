"""The generated protobuf messages (``pb``) and gRPC stubs (``rpc``), made current and importable.

Import from here, never from ``cnf_pb2`` directly: this module first regenerates missing or stale
stubs (``cnf.grpc.stubs``) and aliases the top-level ``cnf_pb2`` name the seed's protoc line emits.
"""

from __future__ import annotations

import sys

from cnf.grpc import stubs

stubs.ensure_current()

from cnf.grpc import cnf_pb2 as pb  # noqa: E402  (typed by cnf_pb2.pyi)

sys.modules.setdefault("cnf_pb2", pb)

from cnf.grpc import cnf_pb2_grpc as rpc  # noqa: E402

#: the longest a HypervisorProgress call may hold its answer for a status change (well inside a read's 5 s)
MAX_PROGRESS_WAIT_MS = 1000

__all__ = ["MAX_PROGRESS_WAIT_MS", "pb", "rpc"]
