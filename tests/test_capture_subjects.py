"""Subject keys: one key per patient id's text form; anything that cannot be a patient id is refused."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import pytest

from kgrid_py.learning.subjects import MAX_SUBJECT_CHARS, SubjectKeyer, SubjectSecretError

SECRET = secrets.token_hex(32).encode()


def test_key_is_hmac_sha256_of_the_stripped_text() -> None:
    keyer = SubjectKeyer(SECRET)
    expected = hmac.new(SECRET, b"p-1", hashlib.sha256).hexdigest()
    assert keyer.key("p-1") == keyer.key("  p-1 \n") == expected
    assert keyer.key(123) == keyer.key("123")

    class Id(str):
        pass

    assert keyer.key(Id(" p-1")) == expected


@pytest.mark.parametrize("bad", [True, 1.5, None, b"p-1", "", "   ", "x" * (MAX_SUBJECT_CHARS + 1)])
def test_unusable_ids_are_refused(bad: object) -> None:
    with pytest.raises(SubjectSecretError, match="subject id"):
        SubjectKeyer(SECRET).key(bad)  # type: ignore[arg-type]
