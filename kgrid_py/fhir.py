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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from kgrid_py.errors import KgridError
from kgrid_py.metadata import FieldSpec, FunctionSpec
from kgrid_py.units import UnitMismatch, conversion_factor

__all__ = [
    "FhirData",
    "FhirDataError",
    "FhirMapping",
    "Gap",
    "InputSource",
    "bound_inputs",
    "map_inputs",
    "prefetch_templates",
]

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

    @classmethod
    def from_resources(cls, items: Iterable[Any]) -> FhirData:
        """Parse resources, Bundles or their JSON dicts; a searched-but-empty Bundle counts as searched."""
        data = cls()
        for item in items:
            data.add(item)
        return data

    def add(self, item: Any) -> None:
        resource = parse_resource(item)
        if isinstance(resource, Bundle):
            if resource.type not in BUNDLE_TYPES:
                raise FhirDataError(
                    f"a Bundle of type {resource.type!r} cannot carry patient data "
                    f"(expected one of {', '.join(BUNDLE_TYPES)})"
                )
            kinds = _bundle_search_kinds(resource)
            if "Observation" in kinds and self.observations is None:
                self.observations = []
            if "Condition" in kinds and self.conditions is None:
                self.conditions = []
            for entry in resource.entry or []:
                if entry.resource is not None:
                    self.add(entry.resource)
        elif isinstance(resource, Patient):
            self.patient = resource
        elif isinstance(resource, Observation):
            self.observations = [*(self.observations or []), resource]
        elif isinstance(resource, Condition):
            self.conditions = [*(self.conditions or []), resource]
        # other resource types (OperationOutcome in a searchset, ...) carry nothing we use


_MODELS: dict[str, Any] = {"Patient": Patient, "Observation": Observation, "Condition": Condition, "Bundle": Bundle}


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


# -- bindings -> prefetch ----------------------------------------------------------------------


def bound_inputs(spec: FunctionSpec) -> list[FieldSpec]:
    """The function's inputs that declare a FHIR binding."""
    return [f for f in spec.inputs if f.fhir is not None]


def prefetch_templates(spec: FunctionSpec) -> dict[str, str]:
    """CDS Hooks prefetch templates that fetch everything the bindings need.

    ``patient`` for age/sex; one ``<input>`` key per observation or condition input.
    """
    templates: dict[str, str] = {}
    for f in bound_inputs(spec):
        binding = f.fhir
        assert binding is not None
        if binding.kind in ("age", "sex"):
            templates["patient"] = "Patient/{{context.patientId}}"
        elif binding.codes:
            codes = ",".join(f"{c.system}|{c.code}" for c in binding.codes)
            resource = "Observation" if binding.kind == "observation" else "Condition"
            templates[f.name] = f"{resource}?patient={{{{context.patientId}}}}&code={codes}"
    return templates


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
    dated: list[tuple[datetime, Observation]] = []
    for obs in data.observations:
        if obs.status not in FINAL_STATUSES or not (_codes_of(obs.code) & wanted) or not _subject_ok(obs, data):
            continue
        when = _effective(obs)
        if when is not None and when <= now + timedelta(days=1):
            dated.append((when, obs))
    if not dated:
        raise _GapFound(Gap(f.name, "missing", f"no final Observation with code {names}"))
    dated.sort(key=lambda pair: pair[0], reverse=True)
    latest, obs = dated[0]
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
        return round(
            source.value * conversion_factor(source.unit, f.unit, [(u.unit, u.factor) for u in f.accepted_units]), 6
        )
    return source.value


def _observation_value(f: FieldSpec, obs: Observation, when: datetime) -> InputSource:
    binding = f.fhir
    assert binding is not None
    ref = _ref(obs)
    code = next(iter(sorted(_codes_of(obs.code) & {f"{c.system}|{c.code}" for c in binding.codes})), None)
    stamp = when.isoformat()
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
        unit = quantity.code if quantity.system == UCUM else None
        if f.unit:
            if unit is None:
                raise _GapFound(
                    Gap(
                        f.name,
                        "unusable",
                        f"{ref} value {value} has no UCUM unit code "
                        f"(unit {quantity.unit!r}, system {quantity.system!r}); expected {f.unit}",
                    )
                )
            try:
                conversion_factor(unit, f.unit, [(u.unit, u.factor) for u in f.accepted_units])
            except (UnitMismatch, ValueError):
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
    for cond in data.conditions:
        if not (_codes_of(cond.code) & wanted) or not _subject_ok(cond, data):
            continue
        clinical = {c.code for c in (cond.clinicalStatus.coding or [])} if cond.clinicalStatus else set()
        verification = {c.code for c in (cond.verificationStatus.coding or [])} if cond.verificationStatus else set()
        if verification & {"refuted", "entered-in-error"} or (clinical and not clinical & set(ACTIVE_CONDITION)):
            continue
        onset = cond.onsetDateTime or cond.recordedDate
        return InputSource(f.name, True, None, str(onset) if onset else None, _ref(cond), None)
    return InputSource(f.name, False, None, None, None, None)
