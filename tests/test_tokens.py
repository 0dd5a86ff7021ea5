"""Bearer tokens with roles: 401 without a valid token, 403 without the role, never logged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kgrid_py.curation.errors import CurationError, Forbidden, Unauthorized, http_status
from kgrid_py.curation.tokens import TokenStore, bearer_token, generate_token, hash_token

PUBLISHER = "publisher-token-0123456789"
ADMIN = "admin-token-0123456789abcdef"


@pytest.fixture
def store() -> TokenStore:
    return TokenStore.from_config(
        {
            "tokens": [
                {"name": "alice", "roles": ["publish"], "sha256": hash_token(PUBLISHER)},
                {"name": "ops", "roles": ["admin"], "token": ADMIN},
            ]
        }
    )


def test_token_with_the_role(store: TokenStore) -> None:
    assert store.authorize(f"Bearer {PUBLISHER}", "publish").name == "alice"
    assert store.authorize(f"bearer  {ADMIN} ", "admin").name == "ops"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", f"Token {PUBLISHER}"])
def test_no_token_is_401(store: TokenStore, header: str | None) -> None:
    with pytest.raises(Unauthorized, match="required") as caught:
        store.authorize(header, "publish")
    assert http_status(caught.value) == 401


def test_unknown_token_is_401_and_not_echoed(store: TokenStore) -> None:
    with pytest.raises(Unauthorized) as caught:
        store.authorize("Bearer guessed-token-xyz", "publish")
    assert "guessed" not in str(caught.value)


def test_token_without_the_role_is_403(store: TokenStore) -> None:
    with pytest.raises(Forbidden, match="alice does not have the 'admin' role") as caught:
        store.authorize(f"Bearer {PUBLISHER}", "admin")
    assert http_status(caught.value) == 403
    assert PUBLISHER not in str(caught.value)


def test_store_repr_hides_secrets(store: TokenStore) -> None:
    assert repr(store) == "<TokenStore with 2 token(s)>"


def test_from_env_and_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens.json"
    file.write_text(json.dumps({"tokens": [{"name": "ci", "roles": ["publish"], "token": PUBLISHER}]}))
    assert (
        TokenStore.from_env({"KGRID_TOKENS_FILE": str(file)}).authorize(f"Bearer {PUBLISHER}", "publish").name == "ci"
    )
    env = {"KGRID_TOKENS": file.read_text()}
    assert TokenStore.from_env(env).authenticate(PUBLISHER).name == "ci"
    with pytest.raises(Unauthorized):
        TokenStore.from_env({}).authenticate(PUBLISHER)


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "x", "roles": ["root"], "token": PUBLISHER},
        {"name": "x", "roles": ["publish"], "token": "short"},
        {"name": "x", "roles": ["publish"], "sha256": "z" * 64},
        {"name": "x", "roles": ["publish"], "sha256": "ab" * 16},
        {"name": "x", "roles": []},
        {"roles": ["publish"], "token": PUBLISHER},
    ],
    ids=["unknown-role", "short-token", "non-hex-sha256", "short-sha256", "no-roles", "no-name"],
)
def test_bad_config(entry: dict[str, object]) -> None:
    with pytest.raises(CurationError):
        TokenStore.from_config({"tokens": [entry]})


@pytest.mark.parametrize("config", [[], {"tokens": {}}, {"token": []}], ids=["list", "tokens-not-list", "no-tokens"])
def test_config_without_a_tokens_list(config: object) -> None:
    with pytest.raises(CurationError, match="'tokens' list"):
        TokenStore.from_config(config)


def test_helpers() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Bearer ") is None
    assert len(generate_token()) >= 40
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 "abc"
