"""Sortable unique ids for captured records: 48-bit millisecond time + 80 random bits, 26 chars.

The layout is ULID's (Crockford base32, no padding), so ids sort by creation time as plain text
in SQL, Parquet and file listings. Within one millisecond the random part is incremented rather
than redrawn, so ids made by one process are strictly increasing even under a burst.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["id_from_uuid", "id_time_ms", "id_to_uuid", "is_id", "new_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
_RANDOM_MAX = (1 << 80) - 1
_lock = threading.Lock()
_last_ms = -1
_last_random = 0


_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # every 10-bit group as two symbols


def _encode(value: int) -> str:
    # 130 bits (the top 2 always zero) as 13 ten-bit groups, most significant first.
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(120, -1, -10)])


# The text of the current millisecond (10 symbols) and of the random part without its last 10 bits
# (14 symbols): within a millisecond only the last pair changes, except on a carry (1 in 1024).
_ms_text = ""
_high = -1
_high_text = ""


def new_id(now_ms: int | None = None) -> str:
    """A new id; strictly greater than the previous one from this process."""
    global _last_ms, _last_random, _ms_text, _high, _high_text
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            if _last_random == _RANDOM_MAX:  # 2^80 ids in one millisecond: borrow the next one
                ms += 1
                _last_random = int.from_bytes(os.urandom(10), "big") >> 1
            else:
                _last_random += 1
        else:
            _last_random = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments
        if ms != _last_ms or not _ms_text:
            _ms_text = _encode(ms << 80)[:10]
        _last_ms = ms
        random = _last_random
        high = random >> 10
        if high != _high:
            _high, _high_text = high, _encode(random)[10:24]
        return _ms_text + _high_text + _PAIRS[random & 1023]


def is_id(text: str) -> bool:
    """True for a 26-character Crockford base32 id whose time fits in 48 bits."""
    return len(text) == 26 and text[0] in "01234567" and all(c in _DECODE for c in text)


def id_time_ms(text: str) -> int:
    """The millisecond timestamp an id was made at."""
    if not is_id(text):
        raise ValueError(f"not a capture id: {text!r}")
    value = 0
    for c in text[:10]:
        value = (value << 5) | _DECODE[c]
    return value


def id_to_uuid(text: str) -> str:
    """The id's 128 bits in UUID text form (a CDS Hooks card's ``uuid``); :func:`id_from_uuid` inverts it."""
    if not is_id(text):
        raise ValueError(f"not a capture id: {text!r}")
    value = 0
    for c in text:
        value = (value << 5) | _DECODE[c]
    return str(uuid.UUID(int=value))


def id_from_uuid(text: str) -> str:
    """The capture id a UUID-form card id stands for; ValueError for text that is not a UUID."""
    try:
        value = uuid.UUID(text).int
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"not a UUID: {text[:64]!r}") from None
    return _encode(value)
