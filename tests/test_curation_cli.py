"""Curator commands: token, vectors regenerate, pack's vector check, info's detail, exit codes, reserved ids."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from demo_ko import write_demo_ko

from kgrid_py.cli import cli
from kgrid_py.curation.scaffold import reference_risk
from kgrid_py.curation.tokens import TokenStore, hash_token
from kgrid_py.shelf import RESERVED_IDS

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["validate", "test", "info", "list", "run", "build", "init", "pack", "keygen", "sign", "verify"]
COMMANDS += ["publish", "status", "token", "vectors", "score"]
COMMANDS += ["capture", "outcomes", "monitor", "recalibrate", "federate"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_token_prints_a_token_and_the_entry_holding_only_its_digest(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["token", "--name", "dr-curator", "--role", "publish", "--role", "admin"])
    assert result.exit_code == 0, result.output
    token = result.stdout.split("token: ", 1)[1].split()[0]
    entry = json.loads(result.stdout.split("tokens.json entry: ", 1)[1])
    assert entry == {"name": "dr-curator", "roles": ["admin", "publish"], "sha256": hash_token(token)}
    assert len(token) >= 40 and token not in json.dumps(entry)
    principal = TokenStore.from_config({"tokens": [entry]}).authorize(f"Bearer {token}", "publish")
    assert principal.name == "dr-curator"


def test_token_to_a_file_is_private_and_never_printed(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "ops.token"
    result = runner.invoke(cli, ["token", "--name", "ops", "--role", "admin", "--output", str(target)])
    assert result.exit_code == 0, result.output
    token = target.read_text().strip()
    assert token not in result.output and (target.stat().st_mode & 0o777) == 0o600
    assert json.loads(result.stdout.split("tokens.json entry: ", 1)[1])["sha256"] == hash_token(token)
    assert runner.invoke(cli, ["token", "--name", "ops", "--role", "admin", "--output", str(target)]).exit_code == 1


def _break_a_vector(path: Path) -> None:
    vectors = json.loads((path / "tests.json").read_text())
    vectors["vectors"][0]["expected"]["bmi"] = 99.0
    (path / "tests.json").write_text(json.dumps(vectors))
    from kgrid_py.curation.build import seal

    seal(path)


def test_pack_refuses_a_ko_whose_own_vectors_fail(runner: CliRunner, tmp_path: Path) -> None:
    path = write_demo_ko(tmp_path / "src")
    _break_a_vector(path)
    result = runner.invoke(cli, ["pack", str(path), "--output", str(tmp_path / "out.zip")])
    assert result.exit_code == 1 and "1 test vector(s) failed" in result.output and "not packed" in result.output
    assert not (tmp_path / "out.zip").exists()


def test_vectors_regenerate_recomputes_reference_vectors_only(runner: CliRunner, tmp_path: Path) -> None:
    assert runner.invoke(cli, ["init", "my-score", "--dir", str(tmp_path)]).exit_code == 0
    path = tmp_path / "my-score"
    vectors = json.loads((path / "tests.json").read_text())
    for vector in vectors["vectors"]:
        if "expected" in vector:
            vector["expected"] = {k: 0.5 for k in vector["expected"]}  # stale
    vectors["vectors"][0]["source"] = "a published worked example"  # external truth: never rewritten
    (path / "tests.json").write_text(json.dumps(vectors))
    assert runner.invoke(cli, ["validate", str(path)]).exit_code == 1  # stale digests and values
    result = runner.invoke(cli, ["vectors", "regenerate", str(path)])
    assert result.exit_code == 0, result.output
    assert "4 vector(s) recomputed" in result.output and "4 changed" in result.output
    after = json.loads((path / "tests.json").read_text())["vectors"]
    assert after[0]["expected"] == {"risk": 0.5, "linear_predictor": 0.5}
    by_name = {v["name"]: v for v in after}
    converted = by_name["a biomarker in g/L is converted"]["expected"]["risk"]  # 1 g/L arrived as 100 mg/dL
    assert converted == pytest.approx(reference_risk(60, 100.0, False), rel=1e-12)
    vectors_fixed = [v for v in after if v.get("source", "").startswith("src/reference.py") and "expected" in v]
    assert all(v["expected"]["risk"] != 0.5 for v in vectors_fixed)


def test_info_shows_units_accepted_units_enums_and_bounds(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["info", "kfre@1.0.0", "--shelf", str(REPO / "knowledge_objects")])
    assert result.exit_code == 0, result.output
    assert "in  sex: enum one of ['female', 'male']; required" in result.output
    assert "in  uacr: number [mg/g] (also accepts mg/mmol); valid > 0 and <= 100000;" in result.output
    assert "intended population >= 10 and < 60" in result.output
    assert "optional, default 'north_american'" in result.output


# -- exit codes: 0 ok, 1 failure, 2 usage --------------------------------------------------------


def _failures(tmp: Path) -> dict[str, list[str]]:
    """One invocation per command that must fail (exit 1) for a reason that is not usage."""
    empty = tmp / "empty"
    empty.mkdir()
    not_zip = tmp / "not.zip"
    not_zip.write_bytes(b"not a zip")
    keys = tmp / "keys"
    keys.mkdir()
    (keys / "k.key.pem").write_text("x")
    taken = tmp / "taken"
    taken.write_text("x")
    not_db = tmp / "not.db"
    not_db.write_text("this is a text file, not a SQLite database\n" * 8)
    secret = tmp / "secret"
    secret.write_text("s" * 40)
    shelf = str(REPO / "knowledge_objects")
    return {
        "validate": ["validate", str(empty)],
        "test": ["test", "no-such-ko", "--shelf", shelf],
        "info": ["info", "no-such-ko", "--shelf", shelf],
        "list": ["list", "--shelf", str(tmp / "missing")],
        "run": ["run", "no-such-ko", "f", "--input", "{}", "--shelf", shelf],
        "build": ["build", str(empty)],
        "init": ["init", "Bad_Name", "--dir", str(tmp)],
        "pack": ["pack", str(empty), "--output", str(tmp / "o.zip")],
        "keygen": ["keygen", "--dir", str(keys), "--name", "k"],
        "sign": ["sign", str(not_zip), "--key", str(keys / "k.key.pem")],
        "verify": ["verify", str(not_zip)],
        "publish": ["publish", str(not_zip), "--to", str(tmp / "shelf")],
        "status": ["status", "no-such-ko@1.0.0", "--shelf", shelf],
        "token": ["token", "--name", "x", "--role", "admin", "--output", str(taken)],
        "vectors": ["vectors", "regenerate", str(empty)],
        "score": ["score", "no-such-ko", "f", "--input", str(taken), "--output", str(tmp / "o.csv"), "--shelf", shelf],
        "capture": ["capture", "prune", "--store", str(not_db), "--before", "2026-01-01"],
        "outcomes": [
            *["outcomes", "import", str(taken), "--store", str(tmp / "s.db"), "--site", "a", "--outcome", "x"],
            *["--subject-col", "id", "--event-col", "e", "--subject-secret-file", str(secret)],
        ],
        "monitor": ["monitor", "no-such-ko", "f", "--store", str(tmp / "s.db"), "--json", str(tmp / "r.json")],
        "recalibrate": ["recalibrate", "no-such-ko", "f", "--validation", str(taken), "--out", str(tmp / "out")],
        "federate": ["federate", "combine", "--mailbox", str(empty), "--key", str(keys / "k.key.pem")],
    }


def test_every_command_is_covered() -> None:
    listed = cli.list_commands(click.Context(cli))  # lazily registered commands included
    assert set(listed) == {*COMMANDS, "serve"}, "add an exit-code case for each new command"


@pytest.mark.parametrize("name", [*COMMANDS, "serve"])
def test_exit_codes(runner: CliRunner, tmp_path: Path, name: str) -> None:
    assert runner.invoke(cli, [name, "--help"]).exit_code == 0
    assert runner.invoke(cli, [name, "--no-such-option"]).exit_code == 2
    if name == "serve":
        return  # the activator's command: its failures are its own tests'
    result = runner.invoke(cli, _failures(tmp_path)[name])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].lower().startswith("error: "), result.output
    assert "Traceback" not in result.output


def test_run_with_bad_json_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["run", "kfre", "four-variable", "--input", "{not json"])
    assert result.exit_code == 2 and "not valid JSON" in result.output


# -- reserved ids ----------------------------------------------------------------------------------


def test_reserved_ids_cover_every_top_level_route_of_the_activator(tmp_path: Path) -> None:
    from activator.app import create_app
    from activator.settings import Settings

    app = create_app(Settings(shelf=tmp_path))
    segments = set()
    for route in app.router.routes:
        path = getattr(route, "path", "")
        first = path.strip("/").split("/", 1)[0]
        if first and "{" not in first and not first.startswith("_") and "." not in first:
            segments.add(first)
    assert segments and segments <= RESERVED_IDS, sorted(segments - RESERVED_IDS)


@pytest.mark.parametrize("reserved", sorted(RESERVED_IDS))
def test_init_refuses_a_reserved_id(runner: CliRunner, tmp_path: Path, reserved: str) -> None:
    result = runner.invoke(cli, ["init", reserved, "--dir", str(tmp_path)])
    assert result.exit_code == 1 and "reserved" in result.output


def test_init_writes_json_ld(runner: CliRunner, tmp_path: Path) -> None:
    from kgrid_py.metadata import KOIO_CONTEXT

    assert runner.invoke(cli, ["init", "my-score", "--dir", str(tmp_path)]).exit_code == 0
    raw = json.loads((tmp_path / "my-score" / "metadata.json").read_text())
    assert raw["@context"] == KOIO_CONTEXT and raw["@type"] == "koio:KnowledgeObject"
    assert raw["@id"] == "my-score/1.0.0"
