"""CNFError <-> gRPC status: the one mapping each way for the gRPC edge.

Server side: a ``CNFError`` becomes a status code (table below) plus its ``to_dict()`` as JSON in the
trailing metadata key ``cnf-error-bin``; anything else becomes ``INTERNAL`` carrying a ``DriverError``.
Client side: ``cnf-error-bin`` present -> ``error_from_dict`` rebuilds the exact error (code, message,
details); absent (the call never reached CNF code: peer down, deadline, TLS refused) -> a transport
error built from the status code, always naming the peer and the operation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import grpc

from cnf.errors import (
    CNFError,
    Conflict,
    DriverError,
    DriverUnavailable,
    Fenced,
    Forbidden,
    IllegalTransition,
    InvalidInput,
    NoMaster,
    NotFound,
    NotMaster,
    SplitBrain,
    StepTimeout,
    Unauthorized,
    error_from_dict,
)

ERROR_METADATA_KEY = "cnf-error-bin"  # "-bin": gRPC carries the value as raw bytes

#: most specific class first; the first ``isinstance`` match wins
_STATUS_BY_ERROR: tuple[tuple[type[CNFError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Fenced, grpc.StatusCode.FAILED_PRECONDITION),
    (SplitBrain, grpc.StatusCode.FAILED_PRECONDITION),
    (IllegalTransition, grpc.StatusCode.FAILED_PRECONDITION),
    (Conflict, grpc.StatusCode.ABORTED),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (NoMaster, grpc.StatusCode.UNAVAILABLE),
    (NotMaster, grpc.StatusCode.UNAVAILABLE),
    (DriverUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StepTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (DriverError, grpc.StatusCode.UNKNOWN),
)


def status_for(err: CNFError) -> grpc.StatusCode:
    for cls, code in _STATUS_BY_ERROR:
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def encode_error(err: CNFError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """(status code, status message, trailing metadata) for ``err``."""
    body = json.dumps(_json_safe(err.to_dict())).encode()
    return status_for(err), f"{err.code}: {err.message}", ((ERROR_METADATA_KEY, body),)


def decode_error(code: grpc.StatusCode | None, details: str | None,
                 trailing: Iterable[tuple[str, str | bytes]] | None, *, peer: str, operation: str) -> CNFError:
    """Rebuild the error a peer sent, or describe the transport failure when no CNF error came back."""
    for key, value in trailing or ():
        if key == ERROR_METADATA_KEY:
            raw = value if isinstance(value, bytes) else value.encode()
            try:
                data = json.loads(raw)
            except ValueError:
                break
            if isinstance(data, dict):
                return error_from_dict(data)
    msg = f"peer {peer}: {operation}: {details or code}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                grpc.StatusCode.RESOURCE_EXHAUSTED):
        name = code.name if code is not None else "UNKNOWN"
        return DriverUnavailable(msg, port="peer", peer=peer, operation=operation, grpc_status=name)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return Unauthorized(msg, peer=peer, operation=operation)
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return Forbidden(msg, peer=peer, operation=operation)
    name = code.name if code is not None else "UNKNOWN"
    return DriverError(msg, port="peer", peer=peer, operation=operation, grpc_status=name)
