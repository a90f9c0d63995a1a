"""SQLAlchemy 2 ORM models: the federation's durable truth.

Tables: clusters, vms (inventory), migrations (+ append-only migration_events),
policies, master_epoch (fencing), idempotency_keys. JSON columns hold the
migration's step list and context so the pure engine's record round-trips
unchanged (``MigrationRow.to_record`` / ``from_record``).

Portable on purpose: the same models run on SQLite (embedded default) and
PostgreSQL (production); Alembic migrations in ``cnf/db/migrations``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ClusterRow(Base):
    __tablename__ = "clusters"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    grpc_addr: Mapped[str] = mapped_column(String(255), default="")
    api_url: Mapped[str] = mapped_column(String(255), default="")
    auth_url: Mapped[str] = mapped_column(String(255), default="")
    region: Mapped[str] = mapped_column(String(64), default="RegionOne")
    bgp_as: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(32), default="active")
    #: encrypted-at-rest is a deployment concern; the API never returns this column
    credentials: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class VmRow(Base):
    __tablename__ = "vms"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    cluster_id: Mapped[str] = mapped_column(String(36), ForeignKey("clusters.id"), index=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(32), default="")
    flavor: Mapped[str] = mapped_column(String(128), default="")
    vcpus: Mapped[int] = mapped_column(Integer, default=0)
    ram_mb: Mapped[int] = mapped_column(Integer, default=0)
    ip: Mapped[str] = mapped_column(String(64), default="")
    image: Mapped[str] = mapped_column(String(255), default="")
    project_id: Mapped[str] = mapped_column(String(64), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    cpu_pct: Mapped[float] = mapped_column(Float, default=0.0)
    mem_pct: Mapped[float] = mapped_column(Float, default=0.0)
    #: the migration currently moving this VM (a VM moves once at a time: 409 otherwise)
    migration_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class MigrationRow(Base):
    __tablename__ = "migrations"
    __table_args__ = (Index("ix_migrations_state", "state"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    vm_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    source_cluster_id: Mapped[str] = mapped_column(String(36))
    dest_cluster_id: Mapped[str] = mapped_column(String(36))
    state: Mapped[str] = mapped_column(String(32))
    phase: Mapped[str] = mapped_column(String(16), default="")
    step: Mapped[str] = mapped_column(String(64), default="")
    record: Mapped[dict[str, Any]] = mapped_column(JSON)  # MigrationRecord.to_dict(): the engine's truth
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    #: DB lease: which worker drives it, until when (two workers never drive one migration)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class MigrationEventRow(Base):
    """Append-only: rows are inserted, never updated or deleted."""

    __tablename__ = "migration_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    migration_id: Mapped[str] = mapped_column(String(36), ForeignKey("migrations.id"), index=True)
    ts: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    phase: Mapped[str] = mapped_column(String(16), default="")
    step: Mapped[str] = mapped_column(String(64), default="")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)


class PolicyRow(Base):
    __tablename__ = "policies"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    rule: Mapped[dict[str, Any]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class MasterEpochRow(Base):
    """One row: the highest master epoch ever seen. Writes with a lower epoch are refused (fencing)."""

    __tablename__ = "master_epoch"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    cluster_id: Mapped[str] = mapped_column(String(36), default="")
    since: Mapped[float] = mapped_column(Float, default=0.0)


class IdempotencyKeyRow(Base):
    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(512))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    location: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[float] = mapped_column(Float)
