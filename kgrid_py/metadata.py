"""The knowledge-object metadata, as pydantic models.

``metadata.json`` is JSON-LD that KGrid tools can read (the KOIO 2.1 context and its ``dc:`` and
``koio:`` keys) plus kgrid-py's own fields, which the extra context entry maps into our vocabulary.
The JSON Schema in ``schemas/ko-metadata.schema.json`` is generated from these models.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kgrid_py.errors import NotFound
from kgrid_py.units import UnitMismatch, conversion_factor

__all__ = [
    "KOIO_CONTEXT",
    "Bounds",
    "CardIndicator",
    "CdsService",
    "Citation",
    "Code",
    "Constraint",
    "Creator",
    "FhirBinding",
    "FieldSpec",
    "FileEntry",
    "FunctionSpec",
    "Horizon",
    "InputSummary",
    "KOMetadata",
    "Lifecycle",
    "Lineage",
    "OutcomeSpec",
    "OutputSpec",
    "PerformanceRange",
    "Provenance",
    "Relation",
    "SuspectUnit",
    "UnitConversion",
]

KOIO_CONTEXT: list[Any] = [
    "https://kgrid.org/koio/2.1/context",
    {"@vocab": "https://kgrid-py.org/vocab#", "dc": "http://purl.org/dc/elements/1.1/"},
]

Lifecycle = Literal["draft", "active", "deprecated", "retired"]
FieldType = Literal["number", "integer", "boolean", "enum", "tensor"]
TensorDType = Literal["float32", "float64", "int64", "bool"]

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
ENDPOINT_PATTERN = r"^[a-z][a-z0-9-]*$"
KO_ID_PATTERN = r"^[a-z][a-z0-9-]*[a-z0-9]$"
SEMVER_PATTERN = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _inside_ko(path: str) -> str:
    """A path relative to the KO folder that cannot leave it (no root, drive or '..')."""
    parts = re.split(r"[\\/]", path)
    if path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path) or ".." in parts:
        raise ValueError(f"file path {path!r} must be relative and stay inside the KO")
    return path


class Creator(_Model):
    name: str
    affiliation: str | None = None
    orcid: str | None = None


class Citation(_Model):
    """A publication the KO implements or was validated in."""

    doi: str = Field(pattern=r"^10\.\d{4,9}/\S+$")
    text: str
    role: Literal["development", "validation", "refit", "threshold", "other"] = "development"


class Code(_Model):
    """A terminology code for a field, e.g. a LOINC code for a lab input."""

    system: str = Field(description="Code system URI, e.g. http://loinc.org")
    code: str
    display: str | None = None
    unit: str | None = Field(
        default=None,
        description="UCUM unit the code's property implies (LOINC example unit, e.g. umol/L for a "
        "[Moles/volume] code): used when an Observation's quantity has no unit at all. Absent for codes "
        "whose property fixes no unit (LOINC [Ratio]): such Observations must carry their unit.",
    )
    source: str | None = Field(
        default=None, description="Where the code and its meaning were checked (a URL), for audit"
    )


class Bounds(_Model):
    """An interval on a number; either end may be open (exclusive) or absent."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False

    def contains(self, value: float) -> bool:
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            return False
        return not (
            self.maximum is not None and (value >= self.maximum if self.exclusive_maximum else value > self.maximum)
        )

    def describe(self) -> str:
        lo = "" if self.minimum is None else f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
        hi = "" if self.maximum is None else f"{'<' if self.exclusive_maximum else '<='} {self.maximum:g}"
        return " and ".join(part for part in (lo, hi) if part) or "any value"


class UnitConversion(_Model):
    """A unit a field also accepts, with the factor that brings a value into the field's unit.

    Affine-free by design: every clinical unit we accept converts by multiplication. Give the
    conventional factor the source papers use (creatinine umol/L -> mg/dL is 1/88.4), so results
    match the published calculators exactly.
    """

    unit: str
    factor: float = Field(gt=0)


class SuspectUnit(_Model):
    """A value that, sent in ``given``, more likely is in ``likely``: the classic unit slip.

    A creatinine of 106 sent as a plain number (mg/dL) is almost surely 106 umol/L: declare
    ``{"above": 20, "likely": "umol/L"}`` and such a value is warned about (or, past the hard
    bounds, refused) with the likely unit and the converted value named. Thresholds are in
    ``given``; a unit that converts by the same factor counts as ``given``.
    """

    given: str | None = Field(default=None, description="Unit the value was sent in; null: the field's own unit")
    above: float | None = Field(default=None, description="Values above this (in 'given') look like 'likely'")
    below: float | None = Field(default=None, description="Values below this (in 'given') look like 'likely'")
    likely: str = Field(description="The unit such a value is probably in (the field must accept it)")
    note: str | None = Field(default=None, description="Why, e.g. the usual range in each unit")

    @model_validator(mode="after")
    def _one_side(self) -> SuspectUnit:
        if self.above is None and self.below is None:
            raise ValueError(f"suspect unit {self.likely!r} needs 'above' or 'below'")
        return self


class FhirBinding(_Model):
    """Where an input is found in FHIR R4 data, for EHR integrations (CDS Hooks).

    ``age``: from Patient.birthDate at the time of the hook. ``sex``: the sex-for-clinical-use
    extension when present, else Patient.gender. ``observation``: the most recent final
    Observation with one of ``codes`` inside ``lookback_days``, converted from its UCUM unit.
    ``condition``: true when an active Condition has one of ``codes`` (any non-refuted one when
    ``history``). ``family-history``: true when a FamilyMemberHistory of a first-degree relative
    has a condition with one of ``codes``. ``us-core-race``: the US Core ethnicity, then race,
    extension's OMB category, mapped through ``answers``.
    """

    kind: Literal["age", "sex", "observation", "condition", "family-history", "us-core-race"]
    codes: list[Code] = Field(default_factory=list)
    lookback_days: int | None = Field(default=None, gt=0)
    answers: dict[str, str] = Field(
        default_factory=dict, description="Coded answers (system|code) mapped to this input's enum values"
    )
    history: bool = Field(
        default=False, description="condition: count resolved, inactive or remission Conditions too (ever diagnosed)"
    )


class FieldSpec(_Model):
    """One input of a function."""

    name: str = Field(pattern=NAME_PATTERN)
    type: FieldType
    description: str
    unit: str | None = Field(default=None, description="UCUM unit of the value the model expects")
    accepted_units: list[UnitConversion] = Field(default_factory=list)
    required: bool = True
    default: Any = None
    enum: list[str] | None = None
    shape: list[int] | None = Field(default=None, description="Per-item shape of a tensor")
    dtype: TensorDType | None = None
    preprocessing: Literal["mni152-volume"] | None = Field(
        default=None,
        description="A library transform applied to a tensor input first (e.g. NIfTI to grid)",
    )
    hard_bounds: Bounds | None = Field(default=None, description="Outside these: an error")
    population_bounds: Bounds | None = Field(
        default=None, description="Outside these: a warning (outside the intended population)"
    )
    population_note: str | None = Field(
        default=None, description="Why values outside population_bounds are extrapolation"
    )
    suspect_units: list[SuspectUnit] = Field(
        default_factory=list, description="Values that look like another unit: warned about, naming it"
    )
    codes: list[Code] = Field(default_factory=list)
    graph_input: str | None = Field(
        default=None, description="ONNX graph input fed by this field (defaults to its name)"
    )
    fhir: FhirBinding | None = None

    @model_validator(mode="after")
    def _check_type_details(self) -> FieldSpec:
        if self.type == "enum" and not self.enum:
            raise ValueError(f"enum field {self.name!r} needs a non-empty 'enum' list")
        if self.type != "enum" and self.enum is not None:
            raise ValueError(f"only enum fields take 'enum' (field {self.name!r})")
        if self.type == "tensor" and (self.shape is None or self.dtype is None):
            raise ValueError(f"tensor field {self.name!r} needs 'shape' and 'dtype'")
        if self.required and self.default is not None:
            raise ValueError(f"field {self.name!r} is required, so it cannot have a default")
        if self.accepted_units and not self.unit:
            raise ValueError(f"field {self.name!r} lists accepted_units but has no unit")
        if self.suspect_units and self.type not in ("number", "integer"):
            raise ValueError(f"field {self.name!r}: only numbers take suspect_units")
        declared = [(u.unit, u.factor) for u in self.accepted_units]
        for suspect in self.suspect_units:
            for unit in (suspect.given, suspect.likely):
                if unit is not None and self.unit is not None:
                    try:
                        conversion_factor(unit, self.unit, declared)
                    except UnitMismatch:
                        raise ValueError(f"field {self.name!r}: suspect unit {unit!r} does not convert") from None
        return self

    @property
    def graph_name(self) -> str:
        return self.graph_input or self.name


class OutputSpec(_Model):
    """One output of a function."""

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["number", "integer", "boolean", "enum", "tensor"]
    description: str
    unit: str | None = None
    enum: list[str] | None = Field(default=None, description="Labels for an integer graph output (index -> label)")
    shape: list[int] | None = None
    graph_output: str | None = None
    select: int | None = Field(
        default=None, ge=0, description="Take this index of the graph output's last axis (one class of several)"
    )
    argmax: bool = Field(default=False, description="Report the index of the largest value on the last axis")
    plausible_bounds: Bounds | None = Field(
        default=None,
        description="Outside these: a warning on the result (implausible; usually an input in the wrong unit)",
    )
    plausibility_note: str | None = Field(
        default=None, description="Why values outside plausible_bounds are doubtful and what to check"
    )

    @model_validator(mode="after")
    def _check_enum(self) -> OutputSpec:
        if (self.type == "enum") != (self.enum is not None):
            raise ValueError(f"output {self.name!r}: 'enum' goes with type 'enum' only")
        if self.plausible_bounds is not None and self.type not in ("number", "integer"):
            raise ValueError(f"output {self.name!r}: only numbers take plausible_bounds")
        if self.select is not None and self.argmax:
            raise ValueError(f"output {self.name!r}: 'select' and 'argmax' exclude each other")
        return self

    @property
    def graph_name(self) -> str:
        return self.graph_output or self.name


class Constraint(_Model):
    """A rule across fields: when ``when`` matches, ``field`` must lie within ``bounds``."""

    when: dict[str, str | bool | float]
    field: str
    bounds: Bounds
    message: str


class Relation(_Model):
    """A rule between inputs: the sum of ``fields`` may not exceed ``at_most`` (years smoked plus
    years since quitting cannot exceed age). Checked after unit conversion."""

    fields: list[str] = Field(min_length=1)
    at_most: str
    message: str


class CardIndicator(_Model):
    """Thresholds on an output that raise a CDS card's indicator to warning or critical."""

    output: str
    warning: float | None = None
    critical: float | None = None
    reason: str | None = Field(default=None, description="Where the thresholds come from")


class CdsService(_Model):
    """How a function is offered as a CDS Hooks service."""

    hooks: list[Literal["patient-view", "order-select"]] = Field(min_length=1)
    title: str
    description: str
    indicators: list[CardIndicator] = Field(default_factory=list)


MetricName = Literal[
    "observed_expected",
    "calibration_intercept",
    "calibration_slope",
    "ici",
    "e50",
    "e90",
    "brier",
    "c_index",
    "auc",
    "bias",
    "p30",
    "rmse",
]


class Horizon(_Model):
    """A predicted risk and the follow-up it is for: output ``risk_5y`` predicts the outcome by day 1826."""

    output: str = Field(description="The output holding the predicted probability (0-1)")
    days: int = Field(gt=0, le=36525, description="Follow-up from the call at which the risk is judged")


class PerformanceRange(_Model):
    """Where a monitored metric should lie; leaving it raises an alert (report, gauge, exit code 3)."""

    metric: MetricName
    minimum: float | None = None
    maximum: float | None = None
    source: str | None = Field(default=None, description="Why these limits (a publication or a local decision)")

    @model_validator(mode="after")
    def _an_end(self) -> PerformanceRange:
        if self.minimum is None and self.maximum is None:
            raise ValueError(f"range for {self.metric!r} needs a minimum, a maximum or both")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"range for {self.metric!r} has minimum {self.minimum} > maximum {self.maximum}")
        return self


class InputSummary(_Model):
    """The development population of one input (or of the linear predictor), the reference for drift."""

    name: str = Field(description="An input name, or 'linear_predictor'")
    mean: float | None = None
    sd: float | None = Field(default=None, gt=0)
    deciles: list[float] | None = Field(
        default=None, min_length=9, max_length=9, description="The 9 cut points (10th..90th centile), for PSI"
    )
    levels: dict[str, float] | None = Field(
        default=None, description="Share of each level (enum or boolean inputs), summing to 1"
    )
    approximate: bool = Field(default=False, description="True where a value is derived, not published")
    source: str | None = None


class OutcomeSpec(_Model):
    """The outcome a function predicts, so monitoring can compare predictions with what happened."""

    name: str = Field(pattern=NAME_PATTERN, description="Outcome name used by outcome imports, e.g. kidney_failure")
    kind: Literal["time-to-event", "binary", "continuous"]
    definition: str
    horizons: list[Horizon] = Field(default_factory=list, description="time-to-event and binary: risk outputs")
    output: str | None = Field(default=None, description="continuous: the output compared with the measured value")
    unit: str | None = Field(default=None, description="continuous: UCUM unit of the measured value")
    competing_event: str | None = Field(
        default=None, description="A competing event (e.g. death): observed risk uses Aalen-Johansen, not KM"
    )
    codes: list[Code] = Field(default_factory=list, description="Codes that find the outcome in FHIR")
    competing_codes: list[Code] = Field(default_factory=list)
    ranges: list[PerformanceRange] = Field(default_factory=list)
    development: list[InputSummary] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list, description="Where the definition and ranges come from")

    @model_validator(mode="after")
    def _kind_fields(self) -> OutcomeSpec:
        if self.kind == "continuous" and (self.output is None or self.horizons):
            raise ValueError(f"continuous outcome {self.name!r} names one 'output' and no 'horizons'")
        if self.kind != "continuous" and (not self.horizons or self.output is not None):
            raise ValueError(f"{self.kind} outcome {self.name!r} needs 'horizons' and no 'output'")
        if self.kind == "binary" and len(self.horizons) != 1:
            raise ValueError(f"binary outcome {self.name!r} has exactly one horizon")
        return self


class FunctionSpec(_Model):
    """One callable endpoint of the KO: inputs, outputs and the ONNX model that computes them."""

    name: str = Field(pattern=ENDPOINT_PATTERN)
    title: str
    description: str
    model: str = Field(description="Path of the ONNX file, relative to the KO folder")
    inputs: list[FieldSpec]
    outputs: list[OutputSpec]
    constraints: list[Constraint] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)
    cds: CdsService | None = None
    removed_inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Inputs earlier versions took, with why they are gone (sending one is an error)",
    )
    result_warnings: list[str] = Field(
        default_factory=list, description="Warnings attached to every result of this function"
    )
    outcome: OutcomeSpec | None = Field(default=None, description="What the function predicts, for monitoring")

    @model_validator(mode="after")
    def _unique_names(self) -> FunctionSpec:
        for kind, names in (("input", [f.name for f in self.inputs]), ("output", [o.name for o in self.outputs])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"function {self.name!r} has duplicate {kind} names: {dupes}")
        known = {f.name for f in self.inputs}
        named = [[rule.field, *rule.when] for rule in self.constraints]
        named += [[*relation.fields, relation.at_most] for relation in self.relations]
        for name in (n for names in named for n in names):
            if name not in known:
                raise ValueError(f"a constraint or relation in {self.name!r} names unknown input {name!r}")
        if self.outcome is not None:
            outputs = {o.name for o in self.outputs}
            named = [h.output for h in self.outcome.horizons] + [self.outcome.output or ""]
            for name in (n for n in named if n and n not in outputs):
                raise ValueError(f"outcome of {self.name!r} names unknown output {name!r}")
            for summary in self.outcome.development:
                if summary.name != "linear_predictor" and summary.name not in known:
                    raise ValueError(f"outcome of {self.name!r} summarises unknown input {summary.name!r}")
        return self


class FileEntry(_Model):
    """A file of the KO and its sha256 digest, checked on every load."""

    path: str
    sha256: str = Field(pattern=SHA256_PATTERN)
    role: Literal["model", "tests", "model-card", "figure", "service", "source", "data"]

    @field_validator("path")
    @classmethod
    def _relative_inside(cls, path: str) -> str:
        return _inside_ko(path)


class Provenance(_Model):
    parent_version: str | None = Field(default=None, pattern=SEMVER_PATTERN)
    built_with: str = Field(description="How the model files were made, e.g. 'kgrid build'")
    source: str | None = Field(default=None, description="Source folder or module of the build")
    notes: str | None = None


class Lineage(_Model):
    """How this version was derived from its parent (``kgrid recalibrate``, ``kgrid federate``).

    ``parent_digest`` is the parent's content digest, checked on load when the parent is on the
    same shelf; ``record`` holds the estimates, covariance, data summary and rounds.
    """

    parent: str = Field(description="Parent KO reference, id@version")
    parent_digest: str = Field(pattern=SHA256_PATTERN)
    method: str = Field(description="none, intercept, slope, ... (see the record)")
    reason: str = Field(description="Why this method (closed test, or the curator's choice)")
    record: dict[str, Any] = Field(default_factory=dict)


class KOMetadata(_Model):
    """The whole ``metadata.json`` of one KO version."""

    context: list[Any] = Field(default_factory=lambda: list(KOIO_CONTEXT), alias="@context")
    jsonld_id: str = Field(alias="@id", description="KO id and version, e.g. kfre/1.0.0")
    jsonld_type: Literal["koio:KnowledgeObject"] = Field(default="koio:KnowledgeObject", alias="@type")
    kgrid: Literal["2"] = Field(default="2", alias="koio:kgrid")
    identifier: str = Field(alias="dc:identifier", pattern=KO_ID_PATTERN)
    version: str = Field(alias="dc:version", pattern=SEMVER_PATTERN)
    title: str = Field(alias="dc:title")
    description: str = Field(alias="dc:description")
    creators: list[Creator] = Field(alias="koio:contributors", min_length=1)
    license: str = Field(alias="dc:license")
    keywords: list[str] = Field(default_factory=list, alias="koio:keywords")
    status: Lifecycle = "draft"
    successor: str | None = Field(default=None, description="Reference that replaces a retired KO")
    citations: list[Citation] = Field(default_factory=list)
    intended_use: str
    intended_population: str
    provenance: Provenance
    files: list[FileEntry]
    functions: Annotated[list[FunctionSpec], Field(min_length=1)]
    tests: str | None = Field(default="tests.json", description="Test-vector file")
    thresholds: dict[str, Any] = Field(
        default_factory=dict, description="Named decision thresholds other tools may use"
    )
    lineage: list[Lineage] | None = Field(default=None, description="Updates from parent versions, oldest first")

    @field_validator("tests")
    @classmethod
    def _tests_inside(cls, path: str | None) -> str | None:
        return None if path is None else _inside_ko(path)

    @model_validator(mode="after")
    def _consistent(self) -> KOMetadata:
        expected_id = f"{self.identifier}/{self.version}"
        if self.jsonld_id != expected_id:
            raise ValueError(f"@id must be {expected_id!r}, found {self.jsonld_id!r}")
        names = [f.name for f in self.functions]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate function names: {names}")
        listed = {f.path for f in self.files}
        if len(listed) != len(self.files):
            raise ValueError("a file is listed twice in 'files'")
        for function in self.functions:
            if function.model not in listed:
                raise ValueError(f"function {function.name!r} runs {function.model!r}, which 'files' does not list")
        return self

    def function(self, name: str) -> FunctionSpec:
        for function in self.functions:
            if function.name == name:
                return function
        raise NotFound(
            f"{self.identifier}@{self.version} has no function {name!r}",
            available=[f.name for f in self.functions],
        )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
