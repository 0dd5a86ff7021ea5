"""``kgrid serve``: run the activator over a shelf with uvicorn (registered as a kgrid plugin command)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from activator.settings import ENV_VAR, Settings

__all__ = ["serve"]


@click.command()
@click.argument("shelf", required=False, envvar="KGRID_SHELF", default="knowledge_objects")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Server processes.")
@click.option(
    "--inference-threads",
    default=4,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Threads per worker that run inference, off the event loop.",
)
@click.option(
    "--inline-budget-ms",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.0, 100.0),
    help="A KO function whose measured median call costs less runs on the event loop, not a thread (0: never).",
)
@click.option(
    "--http",
    "http_impl",
    type=click.Choice(["auto", "httptools", "h11"]),
    default="auto",
    show_default=True,
    help="HTTP parser: httptools (C, about twice as fast) where installed, else h11; both get the same limits.",
)
@click.option(
    "--loop",
    "loop_impl",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    default="auto",
    show_default=True,
    help="Event loop: uvloop where installed, else asyncio's.",
)
@click.option(
    "--ort-threads",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="ONNX Runtime intra-op threads per session.",
)
@click.option("--admin-token", envvar="KGRID_ADMIN_TOKEN", default=None, help="Enables POST /admin/reload.")
@click.option(
    "--max-body-bytes", default=1_048_576, show_default=True, type=click.IntRange(1), help="Largest request body."
)
@click.option("--watch/--no-watch", default=True, show_default=True, help="Reload when the shelf changes.")
@click.option(
    "--watch-interval", default=1.0, show_default=True, type=click.FloatRange(0.05), help="Seconds between shelf looks."
)
@click.option("--verify-vectors/--no-verify-vectors", default=True, show_default=True, help="Test KOs before serving.")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Log one line per request.")
@click.option(
    "--cds-issuers",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON file of trusted CDS Hooks issuers and their JWKS.",
)
@click.option("--cds-no-auth", is_flag=True, help="Turn CDS Hooks JWT checks off (local development only).")
@click.option(
    "--public-url",
    default=None,
    help="The URL EHRs reach this server at (behind a proxy: the proxy's); CDS Hooks JWTs must name it "
    "in 'aud' (default: http://HOST:PORT).",
)
@click.option(
    "--cds-db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite file of CDS Hooks replay cache and feedback, shared by the workers "
    "(default: SHELF/.kgrid/cds.sqlite3).",
)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    help="Comma-separated proxy IPs or networks whose X-Forwarded-* headers are honoured (default: none).",
)
@click.option(
    "--tokens",
    "tokens_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON file of bearer tokens and roles for POST /kos and the status route (default: "
    "$KGRID_TOKENS_FILE or $KGRID_TOKENS).",
)
@click.option("--require-signature", is_flag=True, help="Refuse archives not signed by a key in --trust.")
@click.option(
    "--trust",
    "trust_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of trusted curators' public keys (*.pem); a present signature is always checked.",
)
@click.option(
    "--max-archive-bytes",
    default=256 * 1_048_576,
    show_default=True,
    type=click.IntRange(1),
    help="Largest archive POST /kos takes.",
)
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where a manifest URL given as SHELF is synced (default: $KGRID_CACHE, else ~/.cache/kgrid-py).",
)
@click.option(
    "--max-batch-rows",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Most items in one batch (a JSON array, or an OIP tensor's rows); more is a 413.",
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds a connection has to send a request's headers (from connecting or from the last response).",
)
@click.option(
    "--body-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds a request has to send its whole body (else 408), and a client to read a response.",
)
@click.option(
    "--keep-alive-timeout",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds an idle keep-alive connection stays open.",
)
@click.option(
    "--limit-concurrency",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Connections and requests one worker holds at once: past it requests get 503 and new connections are closed.",
)
@click.option(
    "--capture",
    "capture",
    is_flag=False,
    flag_value="default",
    default=None,
    metavar="[URL]",
    help="Record every call: a path, sqlite:///path or postgresql://... (alone: <shelf>/.kgrid/capture.sqlite3).",
)
@click.option("--site", default="default", show_default=True, envvar="KGRID_SITE", help="The site recorded with calls.")
@click.option(
    "--subject-secret-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Per-site secret that keys patient ids (else $KGRID_SUBJECT_SECRET); at least 32 bytes.",
)
@click.option(
    "--capture-policy",
    type=click.Choice(["fail-closed", "best-effort"]),
    default="fail-closed",
    show_default=True,
    help="Store unavailable: refuse with 503, or answer and count the lost records in /metrics.",
)
@click.option(
    "--federation",
    "federation_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Serve the federated-recalibration mailboxes in DIR (/federation/...; kgrid federate).",
)
@click.option("--bench-echo", is_flag=True, hidden=True, help="Serve /_bench/echo for the HTTP benchmark.")
def serve(
    shelf: Path,
    host: str,
    port: int,
    workers: int,
    inference_threads: int,
    inline_budget_ms: float,
    http_impl: str,
    loop_impl: str,
    ort_threads: int,
    admin_token: str | None,
    max_body_bytes: int,
    watch: bool,
    watch_interval: float,
    verify_vectors: bool,
    access_log: bool,
    cds_issuers: Path | None,
    cds_no_auth: bool,
    public_url: str | None,
    cds_db: Path | None,
    forwarded_allow_ips: str | None,
    tokens_file: Path | None,
    require_signature: bool,
    trust_dir: Path | None,
    max_archive_bytes: int,
    cache_dir: Path | None,
    max_batch_rows: int,
    header_timeout: float,
    body_timeout: float,
    keep_alive_timeout: float,
    limit_concurrency: int,
    capture: str | None,
    site: str,
    subject_secret_file: Path | None,
    capture_policy: str,
    federation_dir: Path | None,
    bench_echo: bool,
) -> None:
    """Serve every KO version on SHELF over HTTP (default: $KGRID_SHELF, else ./knowledge_objects).

    SHELF may also be a KGrid manifest URL (http or https): its archives are downloaded, checked
    like any publication (with --require-signature/--trust) and served from the local cache.
    """
    import uvicorn

    from activator.app import configure_logging
    from activator.protocol import protocol_path

    try:
        http_setting = protocol_path(http_impl)
    except RuntimeError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[1], param_hint="--http") from None
    if loop_impl == "uvloop":
        import importlib.util

        if importlib.util.find_spec("uvloop") is None:
            raise click.BadParameter("the uvloop package is not installed", param_hint="--loop")

    if require_signature and trust_dir is None:
        raise click.BadParameter("--require-signature needs --trust DIR", param_hint="--trust")
    _check_tokens(tokens_file)
    if shelf.startswith(("http://", "https://")):
        shelf_path = _sync_manifest(shelf, cache_dir, require_signature, trust_dir, max_archive_bytes)
    else:
        shelf_path = Path(shelf)
    if not shelf_path.is_dir():
        raise click.BadParameter(f"no shelf folder at {shelf}", param_hint="SHELF")
    settings = Settings(
        shelf=shelf_path.resolve(),
        admin_token=admin_token,
        max_body_bytes=max_body_bytes,
        inference_threads=inference_threads,
        inline_budget_ms=inline_budget_ms,
        ort_threads=ort_threads,
        watch=watch,
        watch_interval=watch_interval,
        verify_vectors=verify_vectors,
        bench_echo=bench_echo,
        access_log=access_log,
        cds_issuers=cds_issuers.resolve() if cds_issuers else None,
        cds_no_auth=cds_no_auth,
        public_url=_public_url(public_url, host, port),
        cds_db=cds_db.resolve() if cds_db else None,
        forwarded_allow_ips=forwarded_allow_ips,
        tokens_file=tokens_file.resolve() if tokens_file else None,
        require_signature=require_signature,
        trust_dir=trust_dir.resolve() if trust_dir else None,
        max_archive_bytes=max_archive_bytes,
        max_batch_rows=max_batch_rows,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keep_alive_timeout=keep_alive_timeout,
        limit_concurrency=_fit_descriptors(limit_concurrency),
        capture=_capture_url(capture, shelf_path.resolve()),
        site=site,
        subject_secret_file=subject_secret_file.resolve() if subject_secret_file else None,
        capture_policy=capture_policy,
        federation_dir=federation_dir.resolve() if federation_dir else None,
        **_worker_state(workers, shelf_path.resolve()),
    )
    os.environ[ENV_VAR] = settings.to_env()  # worker processes read their settings from here
    configure_logging()
    click.echo(f"serving {settings.shelf} on http://{host}:{port} ({workers} worker(s))", err=True)
    uvicorn.run(
        "activator.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,  # the activator logs each request itself, with its request id
        log_level="info",
        # Deadlines and the connection cap uvicorn lacks (activator.protocol), and its own ones.
        http=http_setting,
        loop=loop_impl,
        timeout_keep_alive=keep_alive_timeout,  # type: ignore[arg-type] - call_later takes a float
        limit_concurrency=settings.limit_concurrency,
        # X-Forwarded-* only from the configured proxies (uvicorn trusts 127.0.0.1 by default).
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=forwarded_allow_ips or "",
    )


def _worker_state(workers: int, shelf: Path) -> dict[str, Path]:
    """With several workers: where they share their metrics, and the shelf generation they follow."""
    if workers == 1:
        return {}
    run_dir = Path(tempfile.mkdtemp(prefix="kgrid-serve-"))
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    # prometheus_client reads this when a worker process imports it: set before the workers start.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    generation = shelf / ".kgrid" / "generation"
    return {"metrics_dir": metrics_dir, "workers_dir": run_dir / "workers", "generation_file": generation}


def _fit_descriptors(limit: int) -> int:
    """Raise the open-files limit to fit ``limit`` connections (plus the shelf's models and logs);
    where the hard limit does not allow it, lower ``limit`` instead, so accept() never runs out."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return limit
    reserve = 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limit + reserve
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        fitted = max(1, soft - reserve) if soft > 2 * reserve else max(1, soft // 4)
        click.echo(f"--limit-concurrency {limit} lowered to {fitted}: only {soft} files may be open", err=True)
        return fitted
    return limit


def _public_url(url: str | None, host: str, port: int) -> str:
    """The configured public URL (http or https, no query), else the address served on."""
    if url is None:
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise click.BadParameter("must be an http(s) URL without query or fragment", param_hint="--public-url")
    return url.rstrip("/")


def _sync_manifest(
    url: str, cache_dir: Path | None, require_signature: bool, trust_dir: Path | None, max_archive_bytes: int
) -> Path:
    """Download and check a remote manifest's archives into the cache; the local shelf to serve."""
    from activator.routes.publishing import publish_policy
    from kgrid_py.curation.remote import sync

    policy = publish_policy(require_signature, trust_dir, max_archive_bytes)
    cache = cache_dir or Path(os.environ.get("KGRID_CACHE") or Path.home() / ".cache" / "kgrid-py")
    result = sync(url, cache, policy)
    for outcome in result.published:
        click.echo(f"{outcome.ref}: {'published' if outcome.changed else 'cached'} from {url}", err=True)
    for source, reason in result.refused:
        click.echo(f"refused {source}: {reason}", err=True)
    return result.shelf


def _check_tokens(tokens_file: Path | None) -> None:
    """Fail at start-up, with the reason, on a token config the workers could not read."""
    from kgrid_py.curation.tokens import TokenStore
    from kgrid_py.errors import KgridError

    try:
        TokenStore.from_file(tokens_file) if tokens_file else TokenStore.from_env()
    except KgridError as exc:
        raise click.BadParameter(str(exc), param_hint="--tokens") from None


def _capture_url(capture: str | None, shelf: Path) -> str | None:
    """--capture alone means the shelf's own SQLite store; the store is opened (and migrated) now,
    so a bad URL or an unreachable server stops ``kgrid serve`` before it listens."""
    if capture is None:
        return None
    from kgrid_py.learning.store import CaptureStore, StoreError
    from kgrid_py.learning.subjects import SubjectKeyer, SubjectSecretError

    url = f"sqlite:///{shelf / '.kgrid' / 'capture.sqlite3'}" if capture == "default" else capture
    try:
        CaptureStore.open(url).close()
    except StoreError as exc:
        raise click.BadParameter(str(exc), param_hint="--capture") from None
    try:
        SubjectKeyer.from_env()
    except SubjectSecretError as exc:
        raise click.BadParameter(f"$KGRID_SUBJECT_SECRET: {exc}", param_hint="--subject-secret-file") from None
    return url
