"""Remote shelves against a real HTTP server on 127.0.0.1: both manifest shapes, verify, cache."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from archives import entries_of, rebuild
from demo_ko import write_demo_ko

import kgrid_py
from kgrid_py.curation.archive import ArchiveLimits, pack
from kgrid_py.curation.errors import ArchiveDigestMismatch, ArchiveRejected, ArchiveTooLarge, RemoteError
from kgrid_py.curation.publish import PublishPolicy
from kgrid_py.curation.remote import RemoteItem, fetch_archive, parse_manifest, sync
from kgrid_py.digest import sha256_bytes


class _Handler(SimpleHTTPRequestHandler):
    requests_seen: list[str]

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self.requests_seen.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    root = tmp_path / "www"
    root.mkdir()
    seen: list[str] = []
    handler = type("Handler", (_Handler,), {"requests_seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/", seen
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def archives(tmp_path: Path) -> dict[str, bytes]:
    return {v: pack(write_demo_ko(tmp_path / "src", v)) for v in ("1.0.0", "1.1.0")}


def test_manifest_of_urls(server: tuple[Path, str, list[str]], archives: dict[str, bytes], tmp_path: Path) -> None:
    root, base, _ = server
    for version, data in archives.items():
        (root / f"demo-{version}.zip").write_bytes(data)
    (root / "manifest.json").write_text(json.dumps({"manifest": ["demo-1.0.0.zip", f"{base}demo-1.1.0.zip"]}))
    result = sync(f"{base}manifest.json", tmp_path / "cache")
    assert result.refused == [] and [o.ref for o in result.published] == ["demo-bmi@1.0.0", "demo-bmi@1.1.0"]
    ko = kgrid_py.load("demo-bmi@1", shelf=result.shelf)
    assert ko.version == "1.1.0"
    assert ko.call("bmi", {"weight": 70, "height": 1.75, "sex": "female", "age": 40}).result["category"] == "normal"
    cached = sorted(p.name for p in (tmp_path / "cache" / "archives").iterdir())
    assert cached == sorted(f"{sha256_bytes(d)}.zip" for d in archives.values())


def test_manifest_of_objects_uses_the_cache(
    server: tuple[Path, str, list[str]], archives: dict[str, bytes], tmp_path: Path
) -> None:
    root, base, seen = server
    (root / "kos").mkdir()
    items = []
    for version, data in archives.items():
        (root / "kos" / f"{version}.zip").write_bytes(data)
        items.append({"@id": f"demo-bmi/{version}", "url": f"kos/{version}.zip", "sha256": sha256_bytes(data)})
    (root / "manifest.json").write_text(json.dumps(items))
    first = sync(f"{base}manifest.json", tmp_path / "cache")
    assert [o.changed for o in first.published] == [True, True]
    seen.clear()
    second = sync(f"{base}manifest.json", tmp_path / "cache")
    assert [o.changed for o in second.published] == [False, False]
    assert seen == ["/manifest.json"]  # archives came from the cache


def test_download_not_matching_the_stated_digest(
    server: tuple[Path, str, list[str]], archives: dict[str, bytes], tmp_path: Path
) -> None:
    root, base, _ = server
    (root / "a.zip").write_bytes(archives["1.0.0"])
    item = RemoteItem(f"{base}a.zip", "demo-bmi/1.0.0", "0" * 64)
    with pytest.raises(ArchiveDigestMismatch, match="does not match the manifest's sha256"):
        fetch_archive(item, tmp_path / "cache")
    assert not (tmp_path / "cache" / "archives").exists()


def test_a_tampered_remote_archive_is_refused_and_the_rest_served(
    server: tuple[Path, str, list[str]], archives: dict[str, bytes], tmp_path: Path
) -> None:
    root, base, _ = server
    contents = entries_of(archives["1.0.0"])
    evil = rebuild({**contents, "../evil.txt": b"x"})
    (root / "evil.zip").write_bytes(evil)
    (root / "good.zip").write_bytes(archives["1.1.0"])
    (root / "manifest.json").write_text(json.dumps({"manifest": ["evil.zip", "good.zip"]}))
    result = sync(f"{base}manifest.json", tmp_path / "cache")
    assert [o.ref for o in result.published] == ["demo-bmi@1.1.0"]
    assert result.refused[0][0].endswith("evil.zip") and "stay inside the KO" in result.refused[0][1]
    assert not list(tmp_path.rglob("evil.txt"))
    with pytest.raises(ArchiveRejected, match="stay inside"):
        sync(f"{base}manifest.json", tmp_path / "cache2", strict=True)


def test_remote_archive_over_the_limit(
    server: tuple[Path, str, list[str]], archives: dict[str, bytes], tmp_path: Path
) -> None:
    root, base, _ = server
    (root / "a.zip").write_bytes(archives["1.0.0"])
    (root / "manifest.json").write_text(json.dumps({"manifest": ["a.zip"]}))
    policy = PublishPolicy(limits=ArchiveLimits(max_archive_bytes=1000))
    with pytest.raises(ArchiveTooLarge):
        sync(f"{base}manifest.json", tmp_path / "cache", policy, strict=True)


def test_missing_manifest(server: tuple[Path, str, list[str]], tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="HTTP 404"):
        sync(f"{server[1]}nope.json", tmp_path / "cache")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"kos": []}, "a KGrid manifest is"),
        ({"manifest": [42]}, "neither a URL"),
        ({"manifest": ["file:///etc/passwd"]}, "only http"),
        ([{"@id": "x", "url": "a.zip", "sha256": "short"}], "64 hex"),
        ([{"@id": "x", "url": "a.zip", "sha256": "z" * 64}], "64 hex"),
        ([{"@id": "x", "url": "a.zip", "sha256": "./" * 26 + "../../victim"}], "64 hex"),
    ],
    ids=["wrong-shape", "wrong-item", "file-url", "bad-digest", "non-hex-digest", "digest-as-path"],
)
def test_bad_manifests(document: object, message: str) -> None:
    with pytest.raises(RemoteError, match=message):
        parse_manifest(document, "http://127.0.0.1/manifest.json")


def test_an_upper_case_digest_names_the_same_cache_file() -> None:
    digest = "AB" * 32
    [item] = parse_manifest([{"url": "a.zip", "sha256": digest}], "http://127.0.0.1/manifest.json")
    assert item.sha256 == digest.lower()


def test_a_digest_cannot_reach_outside_the_cache(server: tuple[Path, str, list[str]], tmp_path: Path) -> None:
    root, base, _ = server
    victim = tmp_path / "victim.zip"
    victim.write_bytes(b"not the cache's")
    (tmp_path / "cache" / "archives").mkdir(parents=True)
    (root / "evil.json").write_text(json.dumps([{"url": "x.zip", "sha256": "./" * 26 + "../../victim"}]))
    with pytest.raises(RemoteError, match="64 hex"):
        sync(f"{base}evil.json", tmp_path / "cache")
    assert victim.read_bytes() == b"not the cache's"
