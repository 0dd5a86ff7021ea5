"""The activator's settings: one frozen value, passed to ``create_app`` and never read from globals.

``--workers N`` starts N processes that each import the app anew, so settings also travel through
one environment variable (``KGRID_ACTIVATOR_SETTINGS``, JSON) to the worker processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENV_VAR", "Settings"]

ENV_VAR = "KGRID_ACTIVATOR_SETTINGS"


@dataclass(frozen=True)
class Settings:
    """Everything that shapes a running activator."""

    shelf: Path = Path("knowledge_objects")
    admin_token: str | None = None
    max_body_bytes: int = 1_048_576
    # Threads that run inference, off the event loop; each ONNX session itself uses ort_threads.
    inference_threads: int = 4
    # A function whose measured median call costs less runs inline on the event loop (activator.dispatch).
    inline_budget_ms: float = 0.5
    ort_threads: int = 1
    # Poll the shelf for new or changed KOs (no extra dependency; seconds between looks).
    watch: bool = True
    watch_interval: float = 1.0
    # Run every KO's own test vectors before serving it; a KO that fails them is not served.
    verify_vectors: bool = True
    # --workers N: the folder where each worker of one server records the shelf generation it serves
    # (activator.workers), and the shared generation counter (<shelf>/.kgrid/generation).
    workers_dir: Path | None = None
    # Hidden /_bench/echo route: parses and returns JSON on the same stack, for the benchmark.
    bench_echo: bool = False
    access_log: bool = True
    # CDS Hooks: trusted EHR issuers (JSON file); cds_no_auth turns JWT checks off (development only).
    cds_issuers: Path | None = None
    cds_no_auth: bool = False
    # The URL EHRs call this server at: a CDS JWT's 'aud' must be it plus the service path (never
    # taken from the request's Host). cds_db: the SQLite file of seen jtis and feedback, shared by
    # the workers (default <shelf>/.kgrid/cds.sqlite3).
    public_url: str | None = None
    cds_db: Path | None = None
    # Proxies whose X-Forwarded-For/-Proto uvicorn honours (comma-separated IPs or networks; none by default).
    forwarded_allow_ips: str | None = None
    # Publishing (POST /kos) and lifecycle (POST /kos/{id}/{version}/status): bearer tokens with
    # roles from this JSON file, else from KGRID_TOKENS_FILE / KGRID_TOKENS (kgrid_py.curation.tokens).
    tokens_file: Path | None = None
    # Refuse archives without a signature from a key in trust_dir (a present signature is checked
    # whenever trust_dir is set).
    require_signature: bool = False
    trust_dir: Path | None = None
    # The largest archive POST /kos takes (refused with 413 before it is read past this).
    max_archive_bytes: int = 256 * 1_048_576
    # The most items a batch (a JSON array, or an OIP tensor's first dimension) may hold. Measured on
    # 2 shared cores with the demo KO: 1,000 rows hold one inference thread ~0.2 s and answer at most
    # ~0.6 MB (rows of 30 unknown keys; 10,000 good rows took 1.4 s).
    max_batch_rows: int = 1000
    # Seconds a connection may take to send a request's headers (from connecting, or from the end
    # of the previous response), to send the whole body, and may sit idle between requests.
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    # Connections (and requests) one worker holds at once; past it, requests get 503 and new
    # connections are closed at once, so a flood can never exhaust the file descriptors.
    limit_concurrency: int = 1000
    # Prometheus multiprocess mode (--workers N): the folder the workers share their counters in.
    metrics_dir: Path | None = None
    generation_file: Path | None = None
    # Capture (kgrid serve --capture): the store URL (None: off), the site recorded with each call,
    # the subject secret's file (else $KGRID_SUBJECT_SECRET), and fail-closed or best-effort.
    capture: str | None = None
    site: str = "default"
    subject_secret_file: Path | None = None
    capture_policy: str = "fail-closed"
    # Federated recalibration (activator/routes/federation.py): the folder of study mailboxes; None: off.
    federation_dir: Path | None = None

    def to_env(self) -> str:
        data = dataclasses.asdict(self)
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in data.items()})

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from ``KGRID_ACTIVATOR_SETTINGS``, else defaults (``KGRID_SHELF`` for the shelf)."""
        text = os.environ.get(ENV_VAR)
        if not text:
            return cls(shelf=Path(os.environ.get("KGRID_SHELF", "knowledge_objects")))
        data = json.loads(text)
        paths = (
            "shelf",
            "workers_dir",
            "cds_issuers",
            "cds_db",
            "tokens_file",
            "trust_dir",
            "metrics_dir",
            "generation_file",
            "subject_secret_file",
            "federation_dir",
        )
        for key in paths:
            if data.get(key) is not None:
                data[key] = Path(data[key])
        return cls(**data)
