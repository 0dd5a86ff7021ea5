"""Map FHIR R4 data onto a KO function's inputs, following the inputs' ``fhir`` bindings.

    data = FhirData.from_resources([patient, observations_bundle, conditions_bundle])
    mapping = map_inputs(ko.function("four-variable"), data, now=hook_time)
    if mapping.complete:
        ko.call("four-variable", mapping.inputs)

Resources are parsed with the R4B models of ``fhir.resources``. Quantities go to the KO as
``{"value": v, "unit": ucum}`` so the library does the unit conversion; this module only checks
up front that the unit converts, so that an unusable observation is reported as such.
Every input gets a :class:`InputSource` (value, unit, date, resource) or a :class:`Gap` that
says exactly what is missing, stale or unusable.

Speed: ``FhirData(lazy=True)`` (what the CDS Hooks service uses) does not validate every resource
of a large prefetch. A Bundle is walked as JSON (its type and entries checked), the Patient is
validated at once, and Observations, Conditions and FamilyMemberHistories are kept as JSON until
a binding looks for them: only those whose code, status and subject match (and, for
Observations, only the most recent ones) are validated with fhir.resources and used from the
model. A malformed resource that no binding selects is therefore not reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.familymemberhistory import FamilyMemberHistory
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from kgrid_py.errors import KgridError
from kgrid_py.metadata import FieldSpec, FunctionSpec
from kgrid_py.units import UnitMismatch, conversion_factor, normalize_unit

__all__ = [
    "FhirData",
    "FhirDataError",
    "FhirMapping",
    "Gap",
    "InputSource",
    "bound_inputs",
    "map_inputs",
    "next_link",
    "prefetch_templates",
]

PAGE_SIZE = 100
"""Results per page that prefetch templates and searches ask for (``_count``)."""

UCUM = "http://unitsofmeasure.org"
SEX_FOR_CLINICAL_USE = (
    "http://hl7.org/fhir/StructureDefinition/patient-sexParameterForClinicalUse",
    "http://hl7.org/fhir/StructureDefinition/individual-sexParameterForClinicalUse",
    "http://hl7.org/fhir/StructureDefinition/patient-sexForClinicalUse",
)
# Sex-for-clinical-use codes (and the plain gender codes) that name a sex the equations know.
_SEX_CODES = {"female-typical": "female", "male-typical": "male", "female": "female", "male": "male"}
FINAL_STATUSES = ("final", "amended", "corrected")
ACTIVE_CONDITION = ("active", "recurrence", "relapse")
BUNDLE_TYPES = ("searchset", "collection", "batch-response", "transaction-response")
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
# First-degree relatives in v3 RoleCode (parents, siblings, children; step, in-law, half and
# adoptive relations have codes of their own and are not included).
FIRST_DEGREE = frozenset(
    [
        "FTH",
        "MTH",
        "NFTH",
        "NMTH",
        "PRN",
        "NPRN",
        "BRO",
        "SIS",
        "SIB",
        "NBRO",
        "NSIS",
        "NSIB",
        "TWIN",
        "TWINBRO",
        "TWINSIS",
        "FTWIN",
        "FTWINBRO",
        "FTWINSIS",
        "ITWIN",
        "ITWINBRO",
        "ITWINSIS",
        "CHILD",
        "NCHILD",
        "SON",
        "SONC",
        "DAU",
        "DAUC",
    ]
)
_LAZY_KINDS = ("Observation", "Condition", "FamilyMemberHistory")
GapReason = Literal["missing", "stale", "unusable", "cannot-compute", "unbound", "conflicting"]


class FhirDataError(KgridError, ValueError):
    """Raised when FHIR data is malformed: not a resource, invalid R4, or a Bundle of the wrong type."""


@dataclass(frozen=True)
class InputSource:
    """Where one input's value came from."""

    input: str
    value: Any
    unit: str | None = None
    effective: str | None = None
    resource: str | None = None
    code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "value": self.value,
            "unit": self.unit,
            "effective": self.effective,
            "resource": self.resource,
            "code": self.code,
        }


@dataclass(frozen=True)
class Gap:
    """An input that could not be filled from FHIR, and exactly why."""

    input: str
    reason: GapReason
    message: str

    def __str__(self) -> str:
        return f"{self.input}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"input": self.input, "reason": self.reason, "message": self.message}


@dataclass
class FhirMapping:
    """The inputs dict for ``ko.call``, where each value came from, and what could not be found."""

    inputs: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, InputSource] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.gaps


@dataclass
class FhirData:
    """One patient's FHIR data: the Patient, Observations and Conditions.

    ``observations``/``conditions`` are None when nobody looked for them (then an absent
    Condition is unknown, not false), and a list (perhaps empty) when they were searched.
    """

    patient: Patient | None = None
    observations: list[Observation] | None = None
    conditions: list[Condition] | None = None
    family_history: list[FamilyMemberHistory] | None = None
    lazy: bool = False
    raw: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def from_resources(cls, items: Iterable[Any]) -> FhirData:
        """Parse resources, Bundles or their JSON dicts; a searched-but-empty Bundle counts as searched."""
        data = cls()
        for item in items:
            data.add(item)
        return data

    def searched(self, kind: str) -> None:
        """Mark ``kind`` as searched: its absence now means 'none', not 'unknown'."""
        if kind == "Observation" and self.observations is None:
            self.observations = []
        elif kind == "Condition" and self.conditions is None:
            self.conditions = []
        elif kind == "FamilyMemberHistory" and self.family_history is None:
            self.family_history = []

    def add(self, item: Any) -> None:
        if self.lazy and isinstance(item, Mapping):
            self._add_raw(item)
            return
        resource = parse_resource(item)
        if isinstance(resource, Bundle):
            if resource.type not in BUNDLE_TYPES:
                raise FhirDataError(
                    f"a Bundle of type {resource.type!r} cannot carry patient data "
                    f"(expected one of {', '.join(BUNDLE_TYPES)})"
                )
            for kind in _bundle_search_kinds(resource):
                self.searched(kind)
            for entry in resource.entry or []:
                if entry.resource is not None:
                    self.add(entry.resource)
        elif isinstance(resource, Patient):
            self.patient = resource
        elif isinstance(resource, Observation):
            self.observations = [*(self.observations or []), resource]
        elif isinstance(resource, Condition):
            self.conditions = [*(self.conditions or []), resource]
        elif isinstance(resource, FamilyMemberHistory):
            self.family_history = [*(self.family_history or []), resource]
        # other resource types (OperationOutcome in a searchset, ...) carry nothing we use

    def _add_raw(self, item: Mapping[str, Any]) -> None:
        kind = item.get("resourceType")
        if not isinstance(kind, str):
            raise FhirDataError("a FHIR resource needs a 'resourceType'")
        if kind == "Bundle":
            btype = item.get("type")
            if btype not in BUNDLE_TYPES:
                raise FhirDataError(
                    f"a Bundle of type {btype!r} cannot carry patient data (expected one of {', '.join(BUNDLE_TYPES)})"
                )
            entries = item.get("entry") or []
            if not isinstance(entries, list):
                raise FhirDataError("invalid FHIR R4 Bundle: entry: must be an array")
            for kind_searched in _raw_search_kinds(item, entries):
                self.searched(kind_searched)
            for n, entry in enumerate(entries):
                if not isinstance(entry, Mapping):
                    raise FhirDataError(f"invalid FHIR R4 Bundle: entry.{n}: must be an object")
                resource = entry.get("resource")
                if resource is not None:
                    if not isinstance(resource, Mapping):
                        raise FhirDataError(f"invalid FHIR R4 Bundle: entry.{n}.resource: must be an object")
                    self._add_raw(resource)
        elif kind in _LAZY_KINDS:
            self.searched(kind)
            self.raw.setdefault(kind, []).append(dict(item))
        elif kind == "Patient":
            self.patient = parse_resource(item)
        # other resource types carry nothing we use

    def parsed(self, kind: str, wanted: set[str], codes_at: str = "code") -> list[Any]:
        """Validated resources of ``kind`` with one of ``wanted`` codes (JSON ones validated now)."""
        models = {
            "Observation": self.observations,
            "Condition": self.conditions,
            "FamilyMemberHistory": self.family_history,
        }
        found = list(models[kind] or [])
        for item in self.raw.get(kind, ()):
            if _raw_codes_at(item, codes_at) & wanted:
                found.append(parse_resource(item))
        return found


_MODELS: dict[str, Any] = {
    "Patient": Patient,
    "Observation": Observation,
    "Condition": Condition,
    "FamilyMemberHistory": FamilyMemberHistory,
    "Bundle": Bundle,
}


def parse_resource(item: Any) -> Any:
    """An R4B model for a resource dict (or the model itself); :class:`FhirDataError` otherwise."""
    if not isinstance(item, Mapping):
        if hasattr(item, "get_resource_type"):
            return item
        raise FhirDataError(f"expected a FHIR resource (a JSON object), got {type(item).__name__}")
    kind = item.get("resourceType")
    if not isinstance(kind, str):
        raise FhirDataError("a FHIR resource needs a 'resourceType'")
    model = _MODELS.get(kind)
    if model is None:
        return None
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        rid = item.get("id")
        raise FhirDataError(
            f"invalid FHIR R4 {kind}{'/' + str(rid) if rid else ''}: {where}: {first['msg']}"
            + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")
        ) from None


def _bundle_search_kinds(bundle: Bundle) -> set[str]:
    # A searchset answering "Observation?..." says so in its self link; an empty one is still an answer.
    kinds: set[str] = set()
    for link in bundle.link or []:
        if link.relation == "self" and link.url:
            path = str(link.url).split("?", 1)[0].rstrip("/")
            kinds.add(path.rsplit("/", 1)[-1])
    if bundle.type == "searchset" and not kinds:
        kinds.update(e.resource.get_resource_type() for e in bundle.entry or [] if e.resource is not None)
    return kinds


def _raw_search_kinds(bundle: Mapping[str, Any], entries: list[Any]) -> set[str]:
    kinds: set[str] = set()
    for link in bundle.get("link") or []:
        if isinstance(link, Mapping) and link.get("relation") == "self" and isinstance(link.get("url"), str):
            kinds.add(link["url"].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
    if bundle.get("type") == "searchset" and not kinds:
        for entry in entries:
            resource = entry.get("resource") if isinstance(entry, Mapping) else None
            if isinstance(resource, Mapping) and isinstance(resource.get("resourceType"), str):
                kinds.add(resource["resourceType"])
    return kinds


def _raw_codes(concept: Any) -> set[str]:
    if not isinstance(concept, Mapping) or not isinstance(concept.get("coding"), list):
        return set()
    return {f"{c.get('system')}|{c.get('code')}" for c in concept["coding"] if isinstance(c, Mapping)}


def _raw_codes_at(item: Mapping[str, Any], where: str) -> set[str]:
    if where == "condition.code":  # FamilyMemberHistory.condition[].code
        conditions = item.get("condition")
        if not isinstance(conditions, list):
            return set()
        return set().union(*(_raw_codes(c.get("code")) for c in conditions if isinstance(c, Mapping)))
    return _raw_codes(item.get(where))


_WHEN = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2}))?$")
_UNPARSED = object()


def _raw_when(value: Any) -> Any:
    if not isinstance(value, str) or not _WHEN.match(value):
        return _UNPARSED
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:  # well-formed but impossible, e.g. 2026-99-99: let model validation explain
        return _UNPARSED
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _raw_effective(item: Mapping[str, Any]) -> Any:
    """``_effective`` on JSON: a datetime, None, or _UNPARSED (validate the model to know)."""
    for key in ("effectiveDateTime", "effectiveInstant"):
        if item.get(key) is not None:
            return _raw_when(item[key])
    period = item.get("effectivePeriod")
    if period is not None:
        if not isinstance(period, Mapping):
            return _UNPARSED
        moment = period.get("end") or period.get("start")
        if moment is not None:
            return _raw_when(moment)
    if item.get("issued") is not None:
        return _raw_when(item["issued"])
    return None


# -- bindings -> prefetch ----------------------------------------------------------------------


def bound_inputs(spec: FunctionSpec) -> list[FieldSpec]:
    """The function's inputs that declare a FHIR binding."""
    return [f for f in spec.inputs if f.fhir is not None]


def prefetch_templates(spec: FunctionSpec) -> dict[str, str]:
    """CDS Hooks prefetch templates that fetch everything the bindings need.

    ``patient`` for age/sex; one ``<input>`` key per observation or condition input. Searches ask for
    :data:`PAGE_SIZE` results a page; Observations newest first (``_sort=-date``), so that the first
    page holds the latest value even when a server pages (the caller still follows ``next`` links and
    picks the newest by effective time, never by bundle order).
    """
    templates: dict[str, str] = {}
    for f in bound_inputs(spec):
        binding = f.fhir
        assert binding is not None
        if binding.kind in ("age", "sex", "us-core-race"):
            templates["patient"] = "Patient/{{context.patientId}}"
        elif binding.codes:
            codes = ",".join(f"{c.system}|{c.code}" for c in binding.codes)
            resource = {"observation": "Observation", "family-history": "FamilyMemberHistory"}.get(
                binding.kind, "Condition"
            )
            order = "&_sort=-date" if resource == "Observation" else ""
            templates[f.name] = f"{resource}?patient={{{{context.patientId}}}}&code={codes}{order}&_count={PAGE_SIZE}"
    return templates


def next_link(bundle: Any) -> str | None:
    """The URL of a searchset Bundle's next page (JSON or model), or None when it is the last page."""
    links = bundle.get("link") if isinstance(bundle, Mapping) else getattr(bundle, "link", None)
    for link in links or []:
        relation = link.get("relation") if isinstance(link, Mapping) else getattr(link, "relation", None)
        url = link.get("url") if isinstance(link, Mapping) else getattr(link, "url", None)
        if relation == "next" and isinstance(url, str) and url:
            return url
    return None


# -- mapping -----------------------------------------------------------------------------------


def map_inputs(spec: FunctionSpec, data: FhirData, now: datetime | None = None) -> FhirMapping:
    """Fill ``spec``'s inputs from ``data`` as of ``now`` (the hook's time; default: now, UTC)."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    mapping = FhirMapping()
    for f in spec.inputs:
        binding = f.fhir
        if binding is None:
            if f.required:
                mapping.gaps.append(
                    Gap(f.name, "unbound", f"not available from FHIR ({f.description}); no binding is declared")
                )
            continue
        try:
            if binding.kind == "age":
                source = _age(f, data, now)
            elif binding.kind == "sex":
                source = _sex(f, data)
            elif binding.kind == "observation":
                source = _observation(f, data, now)
            elif binding.kind == "us-core-race":
                source = _race(f, data)
            elif binding.kind == "family-history":
                source = _family_history(f, data)
            else:
                source = _condition(f, data)
        except _GapFound as found:
            if f.required or found.gap.reason in ("cannot-compute", "unusable", "conflicting"):
                mapping.gaps.append(found.gap)
            continue
        mapping.sources[f.name] = source
        mapping.inputs[f.name] = {"value": source.value, "unit": source.unit} if source.unit else source.value
    return mapping


class _GapFound(Exception):
    def __init__(self, gap: Gap) -> None:
        self.gap = gap


def _patient(f: FieldSpec, data: FhirData) -> Patient:
    if data.patient is None:
        raise _GapFound(Gap(f.name, "missing", "no Patient resource was provided"))
    return data.patient


def _ref(resource: Any) -> str | None:
    return f"{resource.get_resource_type()}/{resource.id}" if resource.id else resource.get_resource_type()


def _age(f: FieldSpec, data: FhirData, now: datetime) -> InputSource:
    patient = _patient(f, data)
    born = patient.birthDate
    if born is None:
        raise _GapFound(Gap(f.name, "missing", f"{_ref(patient)} has no birthDate"))
    if not isinstance(born, date):
        raise _GapFound(Gap(f.name, "unusable", f"{_ref(patient)} birthDate {born!s} is not a full date"))
    today = now.date()
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    if years < 0:
        raise _GapFound(Gap(f.name, "unusable", f"{_ref(patient)} birthDate {born} is after the hook's time"))
    return InputSource(f.name, years, f.unit or "a", born.isoformat(), _ref(patient), "Patient.birthDate")


def _sex(f: FieldSpec, data: FhirData) -> InputSource:
    patient = _patient(f, data)
    allowed = set(f.enum or ())
    for ext in patient.extension or []:
        if ext.url not in SEX_FOR_CLINICAL_USE:
            continue
        concept = ext.valueCodeableConcept
        for sub in ext.extension or []:
            if sub.url == "value" and sub.valueCodeableConcept is not None:
                concept = sub.valueCodeableConcept
        codes = [c.code for c in (concept.coding or [])] if concept is not None else []
        value = next((_SEX_CODES[c] for c in codes if c in _SEX_CODES), None)
        if value is None or value not in allowed:
            raise _GapFound(
                Gap(
                    f.name,
                    "cannot-compute",
                    f"sex for clinical use is {'/'.join(str(c) for c in codes) or 'not coded'}; "
                    f"the equation is defined only for {' or '.join(sorted(allowed))}",
                )
            )
        return InputSource(f.name, value, None, None, _ref(patient), "sex-for-clinical-use")
    gender = patient.gender
    if gender is None:
        raise _GapFound(Gap(f.name, "missing", f"{_ref(patient)} has no gender and no sex-for-clinical-use"))
    if gender not in allowed:
        raise _GapFound(
            Gap(
                f.name,
                "cannot-compute",
                f"Patient.gender is {gender!r}; the equation is defined only for {' or '.join(sorted(allowed))}, "
                "so it cannot be computed (record sex for clinical use to proceed)",
            )
        )
    return InputSource(f.name, gender, None, None, _ref(patient), "Patient.gender")


def _codes_of(concept: Any) -> set[str]:
    return {f"{c.system}|{c.code}" for c in (concept.coding or [])} if concept is not None else set()


def _subject_ok(resource: Any, data: FhirData) -> bool:
    if data.patient is None or not data.patient.id or resource.subject is None or not resource.subject.reference:
        return True
    return str(resource.subject.reference).rsplit("/", 1)[-1] == data.patient.id


def _raw_subject_ok(item: Mapping[str, Any], data: FhirData) -> bool:
    subject = item.get("subject")
    reference = subject.get("reference") if isinstance(subject, Mapping) else None
    if data.patient is None or not data.patient.id or not isinstance(reference, str) or not reference:
        return True
    return reference.rsplit("/", 1)[-1] == data.patient.id


def _effective(obs: Observation) -> datetime | None:
    moment: Any = obs.effectiveDateTime or obs.effectiveInstant
    if moment is None and obs.effectivePeriod is not None:
        moment = obs.effectivePeriod.end or obs.effectivePeriod.start
    if moment is None:
        moment = obs.issued
    if isinstance(moment, datetime):
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if isinstance(moment, date):
        return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    if isinstance(moment, str) and moment[:4].isdigit():  # partial date: the start of its span
        parts = [int(p) for p in moment.split("-")[:3]]
        return datetime(*(parts + [1] * (3 - len(parts))), tzinfo=UTC)  # type: ignore[misc]
    return None


def _observation(f: FieldSpec, data: FhirData, now: datetime) -> InputSource:
    binding = f.fhir
    assert binding is not None
    wanted = {f"{c.system}|{c.code}" for c in binding.codes}
    names = ", ".join(c.code for c in binding.codes)
    if data.observations is None:
        raise _GapFound(Gap(f.name, "missing", f"no Observations were provided (looked for LOINC {names})"))
    dated: list[tuple[datetime, Any]] = []
    for obs in data.observations:
        if obs.status not in FINAL_STATUSES or not (_codes_of(obs.code) & wanted) or not _subject_ok(obs, data):
            continue
        when = _effective(obs)
        if when is not None and when <= now + timedelta(days=1):
            dated.append((when, obs))
    for item in data.raw.get("Observation", ()):
        # JSON kept unvalidated: select on code, status, subject and date; validate only what is used
        if item.get("status") not in FINAL_STATUSES or not (_raw_codes(item.get("code")) & wanted):
            continue
        if not _raw_subject_ok(item, data):
            continue
        when = _raw_effective(item)
        entry: Any = item
        if when is _UNPARSED:
            entry = parse_resource(item)
            when = _effective(entry)
        if when is not None and when <= now + timedelta(days=1):
            dated.append((when, entry))
    if not dated:
        raise _GapFound(Gap(f.name, "missing", f"no final Observation with code {names}"))
    dated.sort(key=lambda pair: pair[0], reverse=True)
    latest, obs = dated[0]
    obs = parse_resource(obs)
    if binding.lookback_days is not None and latest < now - timedelta(days=binding.lookback_days):
        raise _GapFound(
            Gap(
                f.name,
                "stale",
                f"the most recent ({_ref(obs)}, {latest.date()}) is older than {binding.lookback_days} days",
            )
        )
    source = _observation_value(f, obs, latest)
    for when, other in dated[1:]:
        if when != latest:
            break
        other = parse_resource(other)
        try:
            rival = _observation_value(f, other, when)
        except _GapFound:
            continue
        if _comparable(f, rival) != _comparable(f, source):
            raise _GapFound(
                Gap(
                    f.name,
                    "conflicting",
                    f"{_ref(obs)} ({_show(source)}) and {_ref(other)} ({_show(rival)}) "
                    f"at the same time {latest.isoformat()} disagree",
                )
            )
    return source


def _show(source: InputSource) -> str:
    return f"{source.value} {source.unit or ''}".strip()


def _comparable(f: FieldSpec, source: InputSource) -> Any:
    if isinstance(source.value, float | int) and source.unit and f.unit:
        return round(source.value * _factor_to(f, source.unit), 6)
    return source.value


def _factor_to(f: FieldSpec, unit: str) -> float:
    """The factor from ``unit`` into ``f``'s declared unit, its accepted units included."""
    assert f.unit is not None
    return conversion_factor(unit, f.unit, [(u.unit, u.factor) for u in f.accepted_units])


def _quantity_unit(quantity: Any) -> str | None:
    """The UCUM unit of a valueQuantity: its ``code`` under the UCUM system.

    With no ``system`` at all, the ``code`` (else the human ``unit``) is taken as UCUM if it parses
    and converts (checked by the caller): European labs often send ``µmol/L`` that way. A quantity
    coded in another system is never read as UCUM.
    """
    if quantity.system == UCUM:
        return quantity.code or None
    if quantity.system is None:
        return quantity.code or quantity.unit or None
    return None


def _implied_units(binding: Any, obs: Observation) -> set[str]:
    """The UCUM units the Observation's bound codes imply (each code's declared ``unit``)."""
    present = _codes_of(obs.code)
    return {normalize_unit(c.unit) for c in binding.codes if c.unit and f"{c.system}|{c.code}" in present}


def _observation_value(f: FieldSpec, obs: Observation, when: datetime) -> InputSource:
    binding = f.fhir
    assert binding is not None
    ref = _ref(obs)
    code = next(iter(sorted(_codes_of(obs.code) & {f"{c.system}|{c.code}" for c in binding.codes})), None)
    stamp = when.isoformat()
    if f.type in ("number", "integer") and binding.answers and obs.valueCodeableConcept is not None:
        answers = _codes_of(obs.valueCodeableConcept)
        for answer in sorted(answers):
            if answer in binding.answers:
                number = float(binding.answers[answer])
                value = int(number) if f.type == "integer" and number.is_integer() else number
                return InputSource(f.name, value, None, stamp, ref, code)
        raise _GapFound(
            Gap(
                f.name,
                "unusable",
                f"{ref} answer {', '.join(sorted(answers)) or 'with no coding'} has no mapping to a value of "
                f"{f.name} (mapped answers: {', '.join(sorted(binding.answers))})",
            )
        )
    if f.type in ("number", "integer"):
        quantity = obs.valueQuantity
        if quantity is None or quantity.value is None:
            kind = next(
                (k for k in ("valueString", "valueCodeableConcept", "valueBoolean") if getattr(obs, k) is not None),
                None,
            )
            raise _GapFound(
                Gap(f.name, "unusable", f"{ref} has no numeric valueQuantity" + (f" (it has {kind})" if kind else ""))
            )
        value: Any = float(quantity.value) if isinstance(quantity.value, Decimal | float) else quantity.value
        if f.type == "integer" and float(value).is_integer():
            value = int(value)
        unit = _quantity_unit(quantity)
        implied = _implied_units(binding, obs)
        if f.unit and unit is None and quantity.code is None and quantity.unit is None and len(implied) == 1:
            unit = next(iter(implied))  # no unit at all: the code's property fixes it (14682-9 -> umol/L)
        if f.unit:
            if unit is None:
                shown_unit = quantity.unit if quantity.unit is None or len(quantity.unit) <= 64 else "(too long)"
                shown_system = (
                    quantity.system if quantity.system is None or len(quantity.system) <= 64 else "(too long)"
                )
                raise _GapFound(
                    Gap(
                        f.name,
                        "unusable",
                        f"{ref} value {value} has no UCUM unit code "
                        f"(unit {shown_unit!r}, system {shown_system!r}); expected {f.unit}",
                    )
                )
            try:
                unit = normalize_unit(unit)
                _factor_to(f, unit)
            except UnitMismatch as exc:
                if len(unit) > 64:
                    raise _GapFound(Gap(f.name, "unusable", f"{ref}: {exc}")) from None
                accepted = ", ".join([f.unit, *(u.unit for u in f.accepted_units)])
                raise _GapFound(
                    Gap(
                        f.name,
                        "unusable",
                        f"{ref} unit {unit!r} cannot be converted to {f.unit} (accepted: {accepted})",
                    )
                ) from None
            except ValueError:
                accepted = ", ".join([f.unit, *(u.unit for u in f.accepted_units)])
                raise _GapFound(
                    Gap(
                        f.name,
                        "unusable",
                        f"{ref} unit {unit!r} cannot be converted to {f.unit} (accepted: {accepted})",
                    )
                ) from None
        return InputSource(f.name, value, unit if f.unit else None, stamp, ref, code)
    if f.type == "boolean" and obs.valueBoolean is not None:
        return InputSource(f.name, bool(obs.valueBoolean), None, stamp, ref, code)
    answers = _codes_of(obs.valueCodeableConcept)
    for answer in sorted(answers):
        if answer in binding.answers:
            value = binding.answers[answer]
            if f.type == "boolean":
                return InputSource(f.name, value.lower() == "true", None, stamp, ref, code)
            return InputSource(f.name, value, None, stamp, ref, code)
    shown = ", ".join(sorted(answers)) or "no coded value"
    raise _GapFound(
        Gap(f.name, "unusable", f"{ref} answer {shown} maps to none of {', '.join(f.enum or ['true', 'false'])}")
    )


def _condition(f: FieldSpec, data: FhirData) -> InputSource:
    binding = f.fhir
    assert binding is not None
    wanted = {f"{c.system}|{c.code}" for c in binding.codes}
    if data.conditions is None:
        names = ", ".join(c.code for c in binding.codes)
        raise _GapFound(Gap(f.name, "missing", f"Conditions were not searched (codes {names})"))
    for cond in data.parsed("Condition", wanted):
        if not (_codes_of(cond.code) & wanted) or not _subject_ok(cond, data):
            continue
        clinical = {c.code for c in (cond.clinicalStatus.coding or [])} if cond.clinicalStatus else set()
        verification = {c.code for c in (cond.verificationStatus.coding or [])} if cond.verificationStatus else set()
        if verification & {"refuted", "entered-in-error"}:
            continue
        if clinical and not clinical & set(ACTIVE_CONDITION) and not binding.history:
            continue
        onset = cond.onsetDateTime or cond.recordedDate
        return InputSource(f.name, True, None, str(onset) if onset else None, _ref(cond), None)
    return InputSource(f.name, False, None, None, None, None)


def _family_history(f: FieldSpec, data: FhirData) -> InputSource:
    binding = f.fhir
    assert binding is not None
    wanted = {f"{c.system}|{c.code}" for c in binding.codes}
    if data.family_history is None:
        names = ", ".join(c.code for c in binding.codes)
        raise _GapFound(Gap(f.name, "missing", f"FamilyMemberHistory was not searched (condition codes {names})"))
    for history in data.parsed("FamilyMemberHistory", wanted, "condition.code"):
        if history.status == "entered-in-error" or not _patient_ok(history, data):
            continue
        relation = {c.code for c in (history.relationship.coding or [])} if history.relationship else set()
        if not relation & FIRST_DEGREE:
            continue
        if any(_codes_of(c.code) & wanted for c in history.condition or []):
            return InputSource(f.name, True, None, str(history.date) if history.date else None, _ref(history), None)
    return InputSource(f.name, False, None, None, None, None)


def _patient_ok(resource: Any, data: FhirData) -> bool:
    reference = resource.patient.reference if resource.patient is not None else None
    if data.patient is None or not data.patient.id or not reference:
        return True
    return str(reference).rsplit("/", 1)[-1] == data.patient.id


def _omb_categories(patient: Patient, url: str) -> list[str]:
    codes: list[str] = []
    for ext in patient.extension or []:
        if ext.url != url:
            continue
        for sub in ext.extension or []:
            if sub.url == "ombCategory" and sub.valueCoding is not None:
                codes.append(f"{sub.valueCoding.system}|{sub.valueCoding.code}")
    return codes


def _race(f: FieldSpec, data: FhirData) -> InputSource:
    binding = f.fhir
    assert binding is not None
    patient = _patient(f, data)
    ethnicity = [binding.answers[c] for c in _omb_categories(patient, US_CORE_ETHNICITY) if c in binding.answers]
    if ethnicity:
        return InputSource(f.name, ethnicity[0], None, None, _ref(patient), "us-core-ethnicity")
    races = _omb_categories(patient, US_CORE_RACE)
    if not races:
        raise _GapFound(Gap(f.name, "missing", f"{_ref(patient)} has no US Core race or ethnicity OMB category"))
    values = sorted({binding.answers[c] for c in races if c in binding.answers})
    if not values:
        raise _GapFound(
            Gap(f.name, "unusable", f"US Core race {', '.join(races)} maps to none of {', '.join(f.enum or [])}")
        )
    if len(values) > 1:
        raise _GapFound(
            Gap(
                f.name,
                "cannot-compute",
                f"US Core race has several OMB categories ({', '.join(values)}); the equation takes one",
            )
        )
    return InputSource(f.name, values[0], None, None, _ref(patient), "us-core-race")
