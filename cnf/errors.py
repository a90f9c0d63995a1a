"""One error hierarchy for all of CNF.

Why: an operator reading a failure should see the same ``code`` whether it came
back over HTTP, gRPC or the CLI. Drivers translate library errors into these at
the port; each edge (REST, gRPC, OSC client) maps them exactly once. Nothing in
here knows about transports: the HTTP status is an attribute read by the HTTP
edge only, so the mapping stays in one table (``cnf.api.problem``).

Contract: every subclass has a stable ``code`` (snake_case, documented in
``docs/errors.md``) and says whether retrying the same call may succeed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class CNFError(Exception):
    """Root of every error CNF raises on purpose."""

    code: str = "cnf_error"
    retryable: bool = False
    http_status: int = 500
    title: str = "Internal error"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.title)
        self.message = message or self.title
        self.details: dict[str, Any] = dict(details)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe view used by every edge (problem+json, gRPC details, event log)."""
        return {"code": self.code, "message": self.message, "retryable": self.retryable, **self.details}


# --- input -----------------------------------------------------------------------------------


class InvalidInput(CNFError):
    """The caller sent something we refuse; ``field`` names the offending part."""

    code = "invalid_input"
    http_status = 422
    title = "Invalid input"

    def __init__(self, message: str, *, field: str, **details: Any) -> None:
        super().__init__(message, field=field, **details)
        self.field = field


class NotFound(CNFError):
    code = "not_found"
    http_status = 404
    title = "Not found"


class Conflict(CNFError):
    """The request is valid but the current state forbids it (e.g. VM already migrating)."""

    code = "conflict"
    http_status = 409
    title = "Conflict"


class Unauthorized(CNFError):
    code = "unauthorized"
    http_status = 401
    title = "Authentication required"


class Forbidden(CNFError):
    code = "forbidden"
    http_status = 403
    title = "Forbidden"


# --- federation ------------------------------------------------------------------------------


class NoMaster(CNFError):
    """No master is elected right now; the caller should retry shortly."""

    code = "no_master"
    retryable = True
    http_status = 503
    title = "No master elected"


class Fenced(CNFError):
    """A write or call carried an epoch lower than the highest one seen: a newer master exists."""

    code = "fenced"
    http_status = 409
    title = "Fenced by a newer master"


class NotMaster(CNFError):
    """This agent is not the master and cannot act on its own."""

    code = "not_master"
    retryable = True
    http_status = 503
    title = "Not the master"


# --- migrations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One preflight check: its name, whether it passed, and why (shown by ``--dry-run``)."""

    name: str
    passed: bool
    reason: str
    severity: str = "error"  # "error" fails the preflight, "warning" only reports

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "reason": self.reason, "severity": self.severity}


class PreflightFailed(CNFError):
    code = "preflight_failed"
    http_status = 409
    title = "Preflight checks failed"

    def __init__(self, checks: Sequence[CheckResult]) -> None:
        failed = [c for c in checks if not c.passed and c.severity == "error"]
        msg = "; ".join(f"{c.name}: {c.reason}" for c in failed) or "preflight failed"
        super().__init__(msg, checks=[c.to_dict() for c in checks])
        self.checks = list(checks)


class MigrationAborted(CNFError):
    code = "migration_aborted"
    title = "Migration aborted by the operator"


class StepTimeout(CNFError):
    """A step's ``check`` did not become true before its deadline."""

    code = "step_timeout"
    retryable = True
    http_status = 504
    title = "Step timed out"


class NotConverging(CNFError):
    """Live migration pre-copy does not converge and the policy says abort."""

    code = "not_converging"
    title = "Live migration does not converge"


# --- drivers ---------------------------------------------------------------------------------


class DriverError(CNFError):
    """A driver call failed; ``port`` and ``operation`` say where."""

    code = "driver_error"
    retryable = True
    http_status = 502
    title = "Driver call failed"


class DriverUnavailable(DriverError):
    """The backend (FRR, Ceph, Nova, QEMU, a peer agent) cannot be reached or did not answer in time."""

    code = "driver_unavailable"
    retryable = True
    http_status = 503
    title = "Backend unavailable"


class SplitBrain(DriverError):
    """Both sides of a mirrored image claim to be primary; recovery needs an operator (resync)."""

    code = "split_brain"
    retryable = False
    http_status = 409
    title = "Storage split-brain"


class IllegalTransition(DriverError):
    """The driver refused an action that would break an invariant (e.g. two primaries)."""

    code = "illegal_transition"
    retryable = False
    http_status = 409
    title = "Refused: would break an invariant"


class ConfigError(CNFError):
    """The configuration file or environment is invalid; ``key`` names the setting."""

    code = "config_error"
    title = "Invalid configuration"

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message, key=key)
        self.key = key


@dataclass
class ErrorCatalog:
    """Every concrete error class by code; the edges use it to map back (client side)."""

    by_code: Mapping[str, type[CNFError]] = field(default_factory=dict)


def _all_subclasses(cls: type[CNFError]) -> list[type[CNFError]]:
    out: list[type[CNFError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_class_for(code: str) -> type[CNFError]:
    """Map a stable ``code`` back to its class (used by the gRPC and HTTP clients)."""
    for cls in _all_subclasses(CNFError):
        if cls.code == code:
            return cls
    return CNFError


def error_from_dict(data: Mapping[str, Any]) -> CNFError:
    """Rebuild a CNFError from its ``to_dict()`` form, keeping code and details."""
    cls = error_class_for(str(data.get("code", "cnf_error")))
    err = CNFError.__new__(cls)
    CNFError.__init__(err, str(data.get("message", "")),
                      **{k: v for k, v in data.items() if k not in ("code", "message", "retryable")})
    if cls is InvalidInput:
        err.field = str(data.get("field", ""))  # type: ignore[attr-defined]
    if cls is ConfigError:
        err.key = str(data.get("key", ""))  # type: ignore[attr-defined]
    if cls is PreflightFailed:
        err.checks = [CheckResult(**c) for c in data.get("checks", [])]  # type: ignore[attr-defined]
    return err
