"""Packing is deterministic; unpacking refuses every hostile archive and writes nothing outside the shelf."""

from __future__ import annotations

import io
import json
import os
import secrets
import stat
import zipfile
from pathlib import Path

import onnx
import pytest
from archives import build_zip, entries_of, manifest_for, rebuild, refuse, snapshot, symlink_info, with_metadata

from kgrid_py.curation.archive import MANIFEST_NAME, ArchiveLimits, extract, inspect, pack
from kgrid_py.curation.build import seal
from kgrid_py.curation.errors import ArchiveDigestMismatch, ArchiveRejected, ArchiveTooLarge, http_status
from kgrid_py.errors import IntegrityError
from kgrid_py.ko import KnowledgeObject

# -- packing ----------------------------------------------------------------------------------------


def test_pack_is_deterministic(demo_path: Path) -> None:
    first = pack(demo_path)
    for file in demo_path.rglob("*"):
        os.utime(file, (1_700_000_000, 1_700_000_000))
    (demo_path / "tests.json").chmod(0o600)
    (demo_path / "__pycache__").mkdir()
    (demo_path / "__pycache__" / "x.pyc").write_bytes(b"cache")
    (demo_path / ".DS_Store").write_bytes(b"junk")
    assert pack(demo_path) == first


def test_pack_lists_every_file_with_its_digest(demo_path: Path) -> None:
    data = pack(demo_path)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) and i.external_attr >> 16 == stat.S_IFREG | 0o644 for i in infos)
    manifest = json.loads(entries_of(data)[MANIFEST_NAME])
    assert set(manifest["files"]) == {"README.md", "metadata.json", "model.onnx", "service.yaml", "tests.json"}
    assert manifest["id"] == "demo-bmi" and manifest["version"] == "1.0.0"


def test_pack_refuses_a_stale_digest(demo_path: Path) -> None:
    (demo_path / "README.md").write_text("changed after sealing\n")
    with pytest.raises(IntegrityError, match=r"README\.md"):
        pack(demo_path)


def test_pack_refuses_symlinks(demo_path: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    (demo_path / "link.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(ArchiveRejected, match=r"link\.txt"):
        pack(demo_path)


def test_extract_round_trip(demo_path: Path, tmp_path: Path) -> None:
    info = extract(pack(demo_path), tmp_path / "out")
    assert info.ref == "demo-bmi@1.0.0" and info.signature is None
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()
    ko = KnowledgeObject.from_path(tmp_path / "out")
    assert all(o.passed for o in ko.test())


# -- hostile archives: each refused, nothing written outside the shelf -------------------------------


@pytest.fixture
def contents(demo_path: Path) -> dict[str, bytes]:
    return entries_of(pack(demo_path))


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "./evil.txt", "model/../../../evil.txt"])
def test_hostile_dotdot_path(contents: dict[str, bytes], tmp_path: Path, name: str) -> None:
    exc = refuse(rebuild({**contents, name: b"pwned"}), tmp_path, ArchiveRejected, "stay inside the KO")
    assert http_status(exc) == 422


@pytest.mark.parametrize("kind", ["posix", "drive", "backslash"])
def test_hostile_absolute_path(contents: dict[str, bytes], tmp_path: Path, kind: str) -> None:
    target = f"/tmp/kgrid-evil-{secrets.token_hex(4)}.txt"
    name = {"posix": target, "drive": "C:/evil.txt", "backslash": "..\\..\\evil.txt"}[kind]
    refuse(rebuild({**contents, name: b"pwned"}), tmp_path, ArchiveRejected, "stay inside the KO")
    assert not Path(target).exists()


def test_hostile_symlink(contents: dict[str, bytes], tmp_path: Path) -> None:
    data = rebuild(contents, extra=[(symlink_info("evil-link"), b"/etc/passwd")])
    refuse(data, tmp_path, ArchiveRejected, "symlinks are not allowed")


def test_hostile_symlink_listed_in_manifest(contents: dict[str, bytes], tmp_path: Path) -> None:
    body = {n: d for n, d in contents.items() if n != MANIFEST_NAME}
    items = [*sorted(body.items()), (symlink_info("README.md.evil"), b"../../../../etc/passwd")]
    manifest = manifest_for({**body, "README.md.evil": b"../../../../etc/passwd"})
    refuse(build_zip([*items, (MANIFEST_NAME, manifest)]), tmp_path, ArchiveRejected, "symlinks")


def test_hostile_duplicate_names(contents: dict[str, bytes], tmp_path: Path) -> None:
    data = rebuild(contents, extra=[("model.onnx", b"a different model")])
    refuse(data, tmp_path, ArchiveRejected, "duplicate entry 'model.onnx'")


def test_hostile_duplicate_names_differing_in_case(contents: dict[str, bytes], tmp_path: Path) -> None:
    refuse(rebuild({**contents, "Model.ONNX": b"shadow"}), tmp_path, ArchiveRejected, "duplicate entry")


def test_hostile_digest_mismatch(contents: dict[str, bytes], tmp_path: Path) -> None:
    items = [(n, b"tampered" + d if n == "model.onnx" else d) for n, d in sorted(contents.items())]
    exc = refuse(build_zip(items), tmp_path, ArchiveDigestMismatch, "model.onnx: content does not match")
    assert exc.path == "model.onnx"  # type: ignore[attr-defined]


def test_hostile_metadata_digest_mismatch(contents: dict[str, bytes], tmp_path: Path) -> None:
    raw = json.loads(contents["metadata.json"])
    raw["intended_use"] = "something else entirely"
    items = [(n, json.dumps(raw).encode() if n == "metadata.json" else d) for n, d in sorted(contents.items())]
    refuse(build_zip(items), tmp_path, ArchiveDigestMismatch, "metadata.json")


def test_hostile_entry_missing_from_manifest(contents: dict[str, bytes], tmp_path: Path) -> None:
    items = [*sorted(contents.items()), ("smuggled.onnx", b"extra")]
    refuse(build_zip(items), tmp_path, ArchiveRejected, "not in the manifest")


def test_hostile_archive_over_the_size_limit(contents: dict[str, bytes], tmp_path: Path) -> None:
    data = rebuild(contents)
    exc = refuse(data, tmp_path, ArchiveTooLarge, "over the limit", limits=ArchiveLimits(max_archive_bytes=1024))
    assert http_status(exc) == 413


def test_hostile_zip_bomb(contents: dict[str, bytes], tmp_path: Path) -> None:
    data = rebuild({**contents, "evil-bomb.bin": b"\0" * (20 << 20)})
    assert len(data) < 200_000
    exc = refuse(data, tmp_path, ArchiveTooLarge, "zip bomb")
    assert http_status(exc) == 413


def test_hostile_many_small_bombs(contents: dict[str, bytes], tmp_path: Path) -> None:
    bombs = {f"evil-{i}.bin": b"\0" * 60_000 for i in range(40)}
    refuse(rebuild({**contents, **bombs}), tmp_path, ArchiveTooLarge, "zip bomb")


def test_hostile_total_expansion_over_the_limit(contents: dict[str, bytes], tmp_path: Path) -> None:
    data = rebuild({**contents, "big.bin": secrets.token_bytes(300_000)})
    refuse(data, tmp_path, ArchiveTooLarge, "expands to", limits=ArchiveLimits(max_total_bytes=200_000))


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"tests": "../../evil-tests.json"}, "tests"),
        ({"files": [{"path": "../../etc/passwd", "sha256": "0" * 64, "role": "data"}]}, r"files\[0\]"),
        ({"tests": "/etc/passwd"}, "tests"),
    ],
    ids=["tests-dotdot", "files-dotdot", "tests-absolute"],
)
def test_hostile_metadata_pointing_outside(
    contents: dict[str, bytes], tmp_path: Path, changes: dict[str, object], where: str
) -> None:
    refuse(rebuild(with_metadata(contents, **changes)), tmp_path, ArchiveRejected, f"metadata.json {where}")


def test_hostile_model_path_outside(contents: dict[str, bytes], tmp_path: Path) -> None:
    raw = json.loads(contents["metadata.json"])
    raw["functions"][0]["model"] = "../evil.onnx"
    refuse(rebuild({**contents, "metadata.json": json.dumps(raw).encode()}), tmp_path, ArchiveRejected, "model")


def test_hostile_not_a_zip(tmp_path: Path) -> None:
    refuse(b"PK\x03\x04 this is not really a zip", tmp_path, ArchiveRejected, "not a readable zip")


def test_hostile_hidden_file(contents: dict[str, bytes], tmp_path: Path) -> None:
    refuse(rebuild({**contents, ".evil-hidden": b"x"}), tmp_path, ArchiveRejected, "hidden files")


def test_hostile_manifest_id_differs_from_metadata(contents: dict[str, bytes], tmp_path: Path) -> None:
    body = {n: d for n, d in contents.items() if n != MANIFEST_NAME}
    data = build_zip([*sorted(body.items()), (MANIFEST_NAME, manifest_for(body, ko_id="kfre"))])
    refuse(data, tmp_path, ArchiveRejected, "manifest says kfre@1.0.0")


def test_inspect_writes_nothing(contents: dict[str, bytes], tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    with pytest.raises(ArchiveRejected):
        inspect(rebuild({**contents, "../evil.txt": b"x"}))
    assert snapshot(tmp_path) == before


def test_hostile_manifest_id_escaping_the_shelf(contents: dict[str, bytes], tmp_path: Path) -> None:
    body = with_metadata(contents, **{"dc:identifier": "../../evil", "@id": "../../evil/1.0.0"})
    body = {n: d for n, d in body.items() if n != MANIFEST_NAME}
    data = build_zip([*sorted(body.items()), (MANIFEST_NAME, manifest_for(body, ko_id="../../evil"))])
    refuse(data, tmp_path, ArchiveRejected, "'id' must be a KO id")


def test_hostile_unicode_lookalike_duplicates(contents: dict[str, bytes], tmp_path: Path) -> None:
    nfc, nfd = "caf\u00e9.txt", "cafe\u0301.txt"
    refuse(rebuild({**contents, nfc: b"one", nfd: b"two"}), tmp_path, ArchiveRejected, "duplicate entry")


@pytest.mark.parametrize("location", ["../../../../etc/hostname", "/etc/hostname", "unlisted.bin"])
def test_hostile_onnx_external_data(demo_path: Path, tmp_path: Path, location: str) -> None:
    model = onnx.load(str(demo_path / "model.onnx"))
    tensor = onnx.helper.make_tensor("evil_weights", onnx.TensorProto.DOUBLE, [1], [0.0])
    tensor.ClearField("double_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    model.graph.initializer.append(tensor)
    onnx.save(model, str(demo_path / "model.onnx"))
    if location == "unlisted.bin":
        (demo_path / "unlisted.bin").write_bytes(bytes(8))
    seal(demo_path)
    refuse(pack(demo_path), tmp_path, ArchiveRejected, "external data")


def test_hostile_corrupt_deflate_stream(demo_path: Path, tmp_path: Path) -> None:
    """Overwritten compressed bytes (zlib.error while inflating) are a refusal, not a crash."""
    data = bytearray(pack(demo_path))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = next(i for i in archive.infolist() if i.compress_type == zipfile.ZIP_DEFLATED and i.compress_size > 64)
    header = 30 + len(info.filename.encode()) + len(info.extra)
    start = info.header_offset + header
    data[start : start + 32] = b"\xff" * 32
    refuse(bytes(data), tmp_path, ArchiveRejected, "cannot be read|corrupt")
