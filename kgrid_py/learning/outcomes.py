"""Import what happened to patients after a call into the capture store's ``outcomes`` table.

Rows come from a CSV or Parquet file (``kgrid outcomes import``), JSON rows or a FHIR Bundle
(``POST /outcomes``). Patient ids are turned into subject keys with the site's secret on the way
in and never stored. Each row is checked before anything is written; the whole import is one
transaction, so an import either lands completely or not at all. A row identical to one already
stored (same site, subject, outcome and content digest) is skipped and counted, so re-importing a
file never double counts. Rows for subjects with no call at the site are stored (a later call
cannot precede its outcome, so they simply stay unlinked) and reported; rows whose dates fall
before the subject's first call are refused and reported by row number.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa

from kgrid_py.learning.ids import new_id
from kgrid_py.learning.store import CaptureStore, StoreError, calls, outcomes
from kgrid_py.learning.subjects import SubjectKeyer, SubjectSecretError

__all__ = [
    "MAX_IMPORT_ROWS",
    "ImportReport",
    "OutcomeImportError",
    "OutcomeRow",
    "fhir_bundle_rows",
    "import_rows",
    "read_outcome_file",
    "rows_from_json",
    "rows_from_table",
]

MAX_IMPORT_ROWS = 2_000_000
MAX_FILE_BYTES = 1 << 30
MAX_REPORTED = 50  # row problems listed in a report; the counts are always complete


class OutcomeImportError(ValueError):
    """Raised when an outcome import cannot proceed at all (a bad file, column or bundle)."""


@dataclass(frozen=True)
class OutcomeRow:
    """One outcome row as given, before keying: ``row`` is its 1-based position in the source."""

    row: int
    patient_id: str
    event: int | None = None
    event_date: str | None = None
    followup_date: str | None = None
    competing_event: int | None = None
    competing_date: str | None = None
    value: float | None = None
    value_date: str | None = None


@dataclass
class ImportReport:
    """What an import did: counts, and the first problems by row number."""

    rows: int = 0
    inserted: int = 0
    duplicates: int = 0
    unknown_subjects: int = 0
    refused: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    def refuse(self, row: int, reason: str) -> None:
        self.refused += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append({"row": row, "error": reason})

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "unknown_subjects": self.unknown_subjects,
            "refused": self.refused,
            "problems": self.problems,
        }


def _date(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value).strip()
    try:
        return (
            dt.date.fromisoformat(text[:10]).isoformat() if len(text) >= 10 else dt.date.fromisoformat(text).isoformat()
        )
    except ValueError:
        raise ValueError(f"{name} {text[:40]!r} is not an ISO date (YYYY-MM-DD)") from None


def _flag(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text in ("1", "true", "1.0"):
        return 1
    if text in ("0", "false", "0.0"):
        return 0
    raise ValueError(f"{name} {str(value)[:40]!r} must be 0 or 1 (true or false)")


def _number(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {str(value)[:40]!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite")
    return number


def read_outcome_file(path: str | Path) -> pa.Table:
    """A CSV or Parquet file as a table of text columns (CSV: every column read as text)."""
    where = Path(path)
    try:
        size = where.stat().st_size
    except OSError as exc:
        raise OutcomeImportError(f"cannot read {where}: {exc.strerror}") from None
    if size > MAX_FILE_BYTES:
        raise OutcomeImportError(f"{where} is {size} bytes; outcome files are limited to {MAX_FILE_BYTES}")
    try:
        if where.suffix.lower() in (".parquet", ".pq"):
            meta = pq.read_metadata(where)
            if meta.num_rows > MAX_IMPORT_ROWS:
                raise OutcomeImportError(f"{where} has {meta.num_rows} rows; at most {MAX_IMPORT_ROWS} per import")
            return pq.read_table(where)
        header = pacsv.read_csv(where, read_options=pacsv.ReadOptions(block_size=1 << 24)).schema.names
        table = pacsv.read_csv(
            where,
            read_options=pacsv.ReadOptions(block_size=1 << 24),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string())),
        )
    except OutcomeImportError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise OutcomeImportError(f"cannot read {where} as CSV or Parquet: {str(exc).splitlines()[0]}") from None
    if table.num_rows > MAX_IMPORT_ROWS:
        raise OutcomeImportError(f"{where} has {table.num_rows} rows; at most {MAX_IMPORT_ROWS} per import")
    return table


def rows_from_table(table: pa.Table, columns: Mapping[str, str | None]) -> list[OutcomeRow | tuple[int, str]]:
    """Outcome rows from a table, given which column holds each field (``patient_id`` required).

    A row that cannot be read becomes ``(row number, reason)``; a named column that is missing is
    an :class:`OutcomeImportError` before any row is read.
    """
    missing = [f"{name} column {col!r}" for name, col in columns.items() if col and col not in table.column_names]
    if missing:
        raise OutcomeImportError(f"the file has no {', '.join(missing)} (it has {', '.join(table.column_names)})")
    data = {name: table.column(col).to_pylist() for name, col in columns.items() if col}
    out: list[OutcomeRow | tuple[int, str]] = []
    for i in range(table.num_rows):
        values = {name: col[i] for name, col in data.items()}
        out.append(_make_row(i + 1, values))
    return out


ROW_FIELDS = (
    "patient_id",
    "event",
    "event_date",
    "followup_date",
    "competing_event",
    "competing_date",
    "value",
    "value_date",
)


def rows_from_json(items: Any, max_rows: int = MAX_IMPORT_ROWS) -> list[OutcomeRow | tuple[int, str]]:
    """Outcome rows from a JSON array of objects keyed by :data:`ROW_FIELDS` (``POST /outcomes``).

    An item that is not an object, or names a field not in :data:`ROW_FIELDS`, becomes
    ``(row number, reason)``: an unknown field is refused, never silently dropped.
    """
    if not isinstance(items, list):
        raise OutcomeImportError("rows must be a JSON array of objects")
    if len(items) > max_rows:
        raise OutcomeImportError(f"{len(items)} rows; at most {max_rows} per request: split the import")
    out: list[OutcomeRow | tuple[int, str]] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            out.append((number, "the row is not a JSON object"))
            continue
        unknown = sorted(str(k)[:40] for k in item if k not in ROW_FIELDS)
        if unknown:
            out.append((number, f"unknown field(s) {', '.join(unknown)}; use {', '.join(ROW_FIELDS)}"))
            continue
        if isinstance(item.get("patient_id"), (dict, list, bool)):
            out.append((number, "patient_id must be a string or a number"))
            continue
        out.append(_make_row(number, item))
    return out


def _make_row(number: int, values: Mapping[str, Any]) -> OutcomeRow | tuple[int, str]:
    try:
        pid = values.get("patient_id")
        if pid is None or str(pid).strip() == "":
            raise ValueError("the subject id is empty")
        return OutcomeRow(
            row=number,
            patient_id=str(pid),
            event=_flag(values.get("event"), "event"),
            event_date=_date(values.get("event_date"), "event date"),
            followup_date=_date(values.get("followup_date"), "follow-up date"),
            competing_event=_flag(values.get("competing_event"), "competing event"),
            competing_date=_date(values.get("competing_date"), "competing event date"),
            value=_number(values.get("value"), "value"),
            value_date=_date(values.get("value_date"), "value date"),
        )
    except ValueError as exc:
        return (number, str(exc))


def _check(row: OutcomeRow) -> str | None:
    """Why a row is unusable, or None."""
    if row.event is None and row.value is None and row.competing_event is None:
        return "the row has no event, competing event or value"
    if row.event == 1 and row.event_date is None:
        return "an event needs its event date"
    if row.competing_event == 1 and row.competing_date is None:
        return "a competing event needs its date"
    if row.value is not None and row.value_date is None:
        return "a measured value needs its date"
    if row.event == 0 and row.competing_event != 1 and row.followup_date is None:
        return "a row without the event needs the last follow-up date"
    dates = [d for d in (row.event_date, row.competing_date) if d]
    if row.followup_date and any(d > row.followup_date for d in dates):
        return "an event date is after the last follow-up date"
    return None


def _first_calls(conn: sa.Connection, site: str, keys: Sequence[str]) -> dict[str, str]:
    """The date (UTC) of each subject's first call at the site."""
    first: dict[str, str] = {}
    for start in range(0, len(keys), 5000):
        chunk = keys[start : start + 5000]
        query = (
            sa.select(calls.c.subject_key, sa.func.min(calls.c.ts_us))
            .where(calls.c.site == site, calls.c.subject_key.in_(chunk))
            .group_by(calls.c.subject_key)
        )
        for key, ts_us in conn.execute(query):
            first[key] = dt.datetime.fromtimestamp(ts_us / 1e6, tz=dt.UTC).date().isoformat()
    return first


def _digest(row: dict[str, Any]) -> str:
    fields = ("event", "event_date", "followup_date", "competing_event", "competing_date", "value", "value_date")
    text = json.dumps([row[f] for f in fields], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def import_rows(
    store: CaptureStore,
    rows: Iterable[OutcomeRow | tuple[int, str]],
    *,
    site: str,
    outcome: str,
    keyer: SubjectKeyer,
    source: str,
    all_or_nothing: bool = False,
) -> ImportReport:
    """Key, check and store outcome rows in one transaction; returns what happened to each.

    With ``all_or_nothing`` (``POST /outcomes``), one refused row means nothing is stored: the
    report then lists the refusals and ``inserted`` is 0.
    """
    report = ImportReport()
    good: list[tuple[OutcomeRow, str]] = []
    for item in rows:
        report.rows += 1
        if report.rows > MAX_IMPORT_ROWS:
            raise OutcomeImportError(f"more than {MAX_IMPORT_ROWS} rows; split the import")
        if isinstance(item, tuple):
            report.refuse(*item)
            continue
        reason = _check(item)
        if reason:
            report.refuse(item.row, reason)
            continue
        try:
            good.append((item, keyer.key(item.patient_id)))
        except SubjectSecretError as exc:
            report.refuse(item.row, str(exc))
    now = time.time_ns() // 1000
    try:
        with store.engine.connect() as conn:
            conn = conn.execution_options(kgrid_write=True)
            with conn.begin():
                first = _first_calls(conn, site, sorted({key for _, key in good}))
                records = []
                for item, key in good:
                    start = first.get(key)
                    if start is None:
                        report.unknown_subjects += 1
                    else:
                        dates = (item.event_date, item.followup_date, item.competing_date, item.value_date)
                        early = [d for d in dates if d and d < start]
                        if early:
                            report.refuse(item.row, f"date {min(early)} is before the subject's first call ({start})")
                            continue
                    record = {
                        "event": item.event,
                        "event_date": item.event_date,
                        "followup_date": item.followup_date,
                        "competing_event": item.competing_event,
                        "competing_date": item.competing_date,
                        "value": item.value,
                        "value_date": item.value_date,
                    }
                    records.append(
                        {
                            "id": new_id(),
                            "site": site,
                            "subject_key": key,
                            "outcome": outcome,
                            **record,
                            "source": source,
                            "row_digest": _digest(record),
                            "imported_at_us": now,
                        }
                    )
                inserted = 0 if all_or_nothing and report.refused else _insert_new(conn, records)
    except StoreError:
        raise
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"capture store {store.url}: outcome import failed: {exc.__class__.__name__}") from exc
    report.inserted = inserted
    report.duplicates = 0 if all_or_nothing and report.refused else len(records) - inserted
    return report


def _insert_new(conn: sa.Connection, records: list[dict[str, Any]]) -> int:
    """Insert rows whose (site, subject, outcome, digest) is new; returns how many were new."""
    if not records:
        return 0
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    else:  # pragma: no cover - the store opens only these two
        raise StoreError(f"unsupported capture store dialect {name}")
    before = conn.execute(sa.select(sa.func.count()).select_from(outcomes)).scalar_one()
    statement = insert(outcomes).on_conflict_do_nothing(index_elements=["site", "subject_key", "outcome", "row_digest"])
    for start in range(0, len(records), 10_000):
        conn.execute(statement, records[start : start + 10_000])
    after = conn.execute(sa.select(sa.func.count()).select_from(outcomes)).scalar_one()
    return int(after - before)


# -- FHIR --------------------------------------------------------------------------------------

_FHIR_TYPES = ("Condition", "Procedure", "Observation")
MAX_BUNDLE_ENTRIES = 100_000


def _codings(resource: Mapping[str, Any]) -> set[tuple[str, str]]:
    code = resource.get("code")
    if not isinstance(code, dict) or not isinstance(code.get("coding", []), list):
        return set()
    return {(str(c.get("system", "")), str(c.get("code", ""))) for c in code.get("coding", []) if isinstance(c, dict)}


def _fhir_date(resource: Mapping[str, Any]) -> Any:
    for key in ("onsetDateTime", "performedDateTime", "effectiveDateTime", "recordedDate", "issued"):
        if resource.get(key):
            return resource[key]
    for key in ("performedPeriod", "effectivePeriod", "onsetPeriod"):
        period = resource.get(key)
        if isinstance(period, dict) and period.get("start"):
            return period["start"]
    return None


def fhir_bundle_rows(
    bundle: Any,
    *,
    codes: Iterable[tuple[str, str]],
    competing_codes: Iterable[tuple[str, str]] = (),
    value_codes: Iterable[tuple[str, str]] = (),
) -> list[OutcomeRow | tuple[int, str]]:
    """Outcome rows from a FHIR Bundle of Condition, Procedure and Observation resources.

    A resource coded with one of ``codes`` is the outcome event on its onset/performed/effective
    date; with one of ``competing_codes``, the competing event; an Observation with one of
    ``value_codes`` and a ``valueQuantity`` is a measured value. Each names its patient in
    ``subject.reference`` (``Patient/ID``). A resource that matches no declared code is an error,
    never silently dropped.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise OutcomeImportError("the body is not a FHIR Bundle (resourceType must be 'Bundle')")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise OutcomeImportError("Bundle.entry must be a list")
    if len(entries) > MAX_BUNDLE_ENTRIES:
        raise OutcomeImportError(f"the Bundle has {len(entries)} entries; at most {MAX_BUNDLE_ENTRIES}")
    event_codes, competing, values = set(codes), set(competing_codes), set(value_codes)
    out: list[OutcomeRow | tuple[int, str]] = []
    for number, entry in enumerate(entries, start=1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            out.append((number, "the entry has no resource"))
            continue
        kind = resource.get("resourceType")
        if kind not in _FHIR_TYPES:
            out.append((number, f"resourceType {str(kind)[:40]!r} is not one of {', '.join(_FHIR_TYPES)}"))
            continue
        subject = resource.get("subject")
        ref = subject.get("reference") if isinstance(subject, dict) else None
        if not isinstance(ref, str) or not ref.startswith("Patient/") or len(ref) <= len("Patient/"):
            out.append((number, f"{kind}.subject.reference must be 'Patient/<id>'"))
            continue
        pid = ref.removeprefix("Patient/")
        found = _codings(resource)
        when = _fhir_date(resource)
        if found & event_codes:
            out.append(_make_row(number, {"patient_id": pid, "event": 1, "event_date": when, "followup_date": when}))
        elif found & competing:
            out.append(_make_row(number, {"patient_id": pid, "competing_event": 1, "competing_date": when}))
        elif found & values and kind == "Observation":
            quantity = resource.get("valueQuantity")
            value = quantity.get("value") if isinstance(quantity, dict) else None
            out.append(_make_row(number, {"patient_id": pid, "value": value, "value_date": when}))
        else:
            shown = ", ".join(sorted(f"{s}|{c}" for s, c in found))[:200] or "none"
            out.append((number, f"{kind} codes ({shown}) match none declared for this outcome"))
    return out
