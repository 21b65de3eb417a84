"""SQLAlchemy 2 models of crest's own tables (Optuna's tables live in the same database)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "StudyRow", "TrialRow", "ArtifactRow", "NodeCheckRow", "SensitivityRow"]


class Base(DeclarativeBase):
    """Declarative base of crest's tables (prefixed ``crest_``)."""


class ArtifactRow(Base):
    """A content-addressed artifact: its SHA-256 is the id. The bytes live in ``blob``, or,
    when it is NULL, in an artifact store at ``location`` (a URL without credentials)."""

    __tablename__ = "crest_artifacts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format_version: Mapped[int] = mapped_column(Integer)
    blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    location: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StudyRow(Base):
    """A crest study: the sweep file as given, the baseline, and the driver's lease."""

    __tablename__ = "crest_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    sweep_yaml: Mapped[str] = mapped_column(Text)
    config_json: Mapped[str] = mapped_column(Text)
    workload: Mapped[str] = mapped_column(String(500))
    n_trials: Mapped[int] = mapped_column(Integer)
    baseline_sha256: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("crest_artifacts.sha256"), nullable=True
    )
    baseline_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    dense_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(300), nullable=True)
    lease_heartbeat: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lease_ttl: Mapped[float | None] = mapped_column(Float, nullable=True)  # the holder's, in seconds


class TrialRow(Base):
    """A finished trial (complete, pruned or failed), keyed by Optuna's trial id."""

    __tablename__ = "crest_trials"
    __table_args__ = (UniqueConstraint("optuna_trial_id", name="uq_crest_trials_optuna_trial_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("crest_studies.id", ondelete="CASCADE"), index=True)
    optuna_trial_id: Mapped[int] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    params_json: Mapped[str] = mapped_column(Text)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    accuracy_drop: Mapped[float | None] = mapped_column(Float, nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    layers_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    wall_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    node: Mapped[str | None] = mapped_column(String(300), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    retry_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    artifact_sha256: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("crest_artifacts.sha256"), nullable=True
    )
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    transport_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why a PRUNED trial was stopped
    device: Mapped[str | None] = mapped_column(String(64), nullable=True)  # cpu, cuda:0, ...
    details_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # timings, latency, warnings


class NodeCheckRow(Base):
    """One decoder check of one Ray node: CuPy (mode "cuda") or NumPy (mode "cpu") vs the reference."""

    __tablename__ = "crest_node_checks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("crest_studies.id", ondelete="CASCADE"), index=True)
    node_id: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(300))
    mode: Mapped[str] = mapped_column(String(8))
    gpu_name: Mapped[str | None] = mapped_column(String(300), nullable=True)
    cuda_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cupy_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    passed: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    seconds: Mapped[float] = mapped_column(Float)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SensitivityRow(Base):
    """One point of a layer's sensitivity: the score with only that layer pruned."""

    __tablename__ = "crest_sensitivity"
    __table_args__ = (UniqueConstraint("study_id", "layer", "sparsity", name="uq_crest_sensitivity_point"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("crest_studies.id", ondelete="CASCADE"))
    layer: Mapped[str] = mapped_column(String(500))
    sparsity: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float] = mapped_column(Float)
    accuracy_drop: Mapped[float] = mapped_column(Float)
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
