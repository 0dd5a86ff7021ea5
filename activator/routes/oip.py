"""The Open Inference Protocol v2 (Triton, KServe, MLServer), so their clients work against us.

One model per KO function, named ``{id}.{endpoint}``; its versions are the KO's served versions.
Each KO input is an input tensor of shape [N] (FP64 numbers, INT64 integers, BOOL, BYTES for
enums; a tensor input is [N, *shape]); each output an output tensor. Tensors come as JSON
``data`` or through the binary tensor data extension (``Inference-Header-Content-Length``), which
tritonclient uses by default. A batch with any bad row is refused whole (400, every bad row
named): the protocol has no per-row errors. Errors are problem+json with the protocol's
``error`` member added, which is what OIP clients read.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import time
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from activator.capture import run_captured
from activator.http import json_response, parse_json, read_body, state_of
from activator.problems import Problem
from activator.registry import Snapshot
from activator.versions import resolve_entry, servable, snapshot_of, version_headers
from kgrid_py import __version__
from kgrid_py.errors import InputError
from kgrid_py.ko import KnowledgeObject
from kgrid_py.metadata import FieldSpec, FunctionSpec, OutputSpec
from kgrid_py.shelf import ShelfEntry

__all__ = ["call_routes", "routes"]

_NUMERIC = {
    "FP64": "<f8",
    "FP32": "<f4",
    "FP16": "<f2",
    "INT64": "<i8",
    "INT32": "<i4",
    "INT16": "<i2",
    "INT8": "i1",
    "UINT64": "<u8",
    "UINT32": "<u4",
    "UINT16": "<u2",
    "UINT8": "u1",
}
_ACCEPTS = {
    "number": set(_NUMERIC),
    "integer": set(_NUMERIC),
    "boolean": {"BOOL"},
    "enum": {"BYTES"},
    "tensor": set(_NUMERIC) | {"BOOL"},
}
# A body larger than this runs in the pool whatever the function's measured cost (a call's cost may
# grow with its input).
INLINE_MAX_BODY = 65_536
_TENSOR_TYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "bool": "BOOL"}


def _oip_problem(status: int, message: str) -> Problem:
    return Problem(status, message, error=message)


def _input_datatype(spec: FieldSpec) -> str:
    if spec.type == "tensor":
        return _TENSOR_TYPES[spec.dtype or "float64"]
    return {"number": "FP64", "integer": "INT64", "boolean": "BOOL", "enum": "BYTES"}[spec.type]


def _output_datatype(spec: OutputSpec) -> str:
    return {"number": "FP64", "integer": "INT64", "boolean": "BOOL", "enum": "BYTES", "tensor": "FP64"}[spec.type]


def _shape(spec: FieldSpec | OutputSpec) -> list[int]:
    return [-1, *(spec.shape or [])] if spec.type == "tensor" else [-1]


def _infer_address(entry: ShelfEntry, endpoint: str) -> str:
    return f"/v2/models/{entry.ko_id}.{endpoint}/versions/{entry.version}/infer"


def _model(request: Request) -> tuple[Snapshot, ShelfEntry, KnowledgeObject, str]:
    """The KO and function a model name (and optional version) names; OIP errors otherwise."""
    snapshot = snapshot_of(request)
    name = request.path_params["name"]
    ko_id, dot, endpoint = name.partition(".")
    if not dot:
        models = [f"{ko.id}.{f}" for _, ko in snapshot.served() for f in ko.functions]
        raise Problem(
            404,
            f"no model {name!r}: models are named id.endpoint",
            error=f"no model {name!r}",
            available=sorted(set(models)),
        )
    try:
        entry = resolve_entry(snapshot, ko_id, request.path_params.get("version"))
        ko = servable(snapshot, entry, endpoint)
    except Problem as problem:
        problem.extensions.setdefault("error", problem.detail)
        raise
    if endpoint not in ko.functions:
        raise Problem(404, f"{ko.ref} has no endpoint {endpoint!r}", error=f"no model {name!r}", available=ko.functions)
    return snapshot, entry, ko, endpoint


async def server_metadata(request: Request) -> Response:
    return json_response({"name": "kgrid-py activator", "version": __version__, "extensions": ["binary_tensor_data"]})


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    ok = state_of(request).registry.ready
    return Response(status_code=200 if ok else 503)


async def model_metadata(request: Request) -> Response:
    snapshot, entry, ko, endpoint = _model(request)
    spec = ko.function(endpoint)
    versions = [e.version for e, _ in snapshot.served() if e.ko_id == ko.id]
    headers = version_headers(request, snapshot, entry, _infer_address, endpoint)
    return json_response(
        {
            "name": f"{ko.id}.{endpoint}",
            "versions": versions,
            "platform": "kgrid_onnx",
            "inputs": [{"name": f.name, "datatype": _input_datatype(f), "shape": _shape(f)} for f in spec.inputs],
            "outputs": [{"name": o.name, "datatype": _output_datatype(o), "shape": _shape(o)} for o in spec.outputs],
        },
        headers=headers,
    )


async def model_ready(request: Request) -> Response:
    snapshot, entry, _, endpoint = _model(request)
    return Response(status_code=200, headers=version_headers(request, snapshot, entry, _infer_address, endpoint))


# -- infer ---------------------------------------------------------------------------------------


def _split_body(request: Request, body: bytes) -> tuple[dict[str, Any], bytes]:
    header = request.headers.get("inference-header-content-length")
    if header is None:
        media = request.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
        if media not in ("application/json", "application/octet-stream", ""):
            raise Problem(
                415,
                f"send application/json (or binary tensors per the extension), not {media!r}",
                error=f"unsupported content type {media!r}",
            )
        head, rest = body, b""
    else:
        if not header.isdigit() or int(header) > len(body):
            raise _oip_problem(
                400, f"Inference-Header-Content-Length {header!r} does not fit the {len(body)}-byte body"
            )
        head, rest = body[: int(header)], body[int(header) :]
    try:
        request_json = parse_json(head)
    except Problem as problem:
        raise _oip_problem(400, problem.detail) from None
    if not isinstance(request_json, dict) or not isinstance(request_json.get("inputs"), list):
        raise _oip_problem(400, 'an inference request is a JSON object with an "inputs" list')
    return request_json, rest


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _decode_bytes(raw: bytes) -> list[str]:
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("truncated BYTES element")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ValueError("truncated BYTES element")
        out.append(raw[offset : offset + size].decode("utf-8"))
        offset += size
    return out


def _columns(
    spec: FunctionSpec, request_json: dict[str, Any], binary: bytes, max_rows: int
) -> tuple[dict[str, Any], int]:
    """Input tensors as the columns ``call_batch`` takes, checked against the function."""
    fields = {f.name: f for f in spec.inputs}
    columns: dict[str, Any] = {}
    rows: int | None = None
    offset = 0
    for tensor in request_json["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise _oip_problem(400, "each input is an object with name, shape, datatype and data")
        name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
        if not isinstance(datatype, str):  # a list or an object would not even be hashable
            raise _oip_problem(400, f"input {name!r} needs a datatype: a string such as FP64 or BYTES")
        field = fields.get(name)
        if field is None:
            raise _oip_problem(400, f"unexpected input {name!r}; inputs are {', '.join(fields)}")
        if name in columns:
            raise _oip_problem(400, f"input {name!r} is given twice: which one was meant is ambiguous")
        if datatype not in _ACCEPTS[field.type]:
            raise _oip_problem(400, f"input {name!r} has datatype {datatype!r}; expected {_input_datatype(field)}")
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _oip_problem(400, f"input {name!r} needs a shape: a list of non-negative integers")
        if shape[0] > max_rows:
            raise Problem(
                413,
                f"input {name!r} has {shape[0]} rows; this server scores at most {max_rows} per request",
                error=f"batch over {max_rows} rows",
                max_batch_rows=max_rows,
            )
        item_shape = list(field.shape or []) if field.type == "tensor" else []
        if shape[1:] != item_shape:
            raise _oip_problem(400, f"input {name!r} has shape {shape}; expected {[-1, *item_shape]}")
        count = math.prod(shape)
        parameters = tensor.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        try:
            if size is not None:
                if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                    raise ValueError(f"binary_data_size {size!r} runs past the body")
                raw = binary[offset : offset + size]
                offset += size
                if datatype == "BYTES":
                    values: Any = _decode_bytes(raw)
                elif datatype == "BOOL":
                    values = np.frombuffer(raw, dtype=np.bool_)
                else:
                    values = np.frombuffer(raw, dtype=_NUMERIC[datatype])
            elif "data" in tensor:
                values = _flatten(tensor["data"])
                if datatype in _NUMERIC:
                    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
                        raise ValueError(f"{datatype} data must be numbers")
                    values = np.asarray(values, dtype=np.float64)
            else:
                raise ValueError("no data and no binary_data_size")
        except (ValueError, UnicodeDecodeError) as exc:
            raise _oip_problem(400, f"input {name!r}: {exc}") from None
        if len(values) != count:
            raise _oip_problem(400, f"input {name!r}: shape {shape} needs {count} values, got {len(values)}")
        fractional = isinstance(values, np.ndarray) and values.dtype.kind == "f"
        if datatype.startswith(("INT", "UINT")) and fractional and not np.all(values == np.round(values)):
            raise _oip_problem(400, f"input {name!r}: {datatype} data must be whole numbers")
        if field.type == "tensor":
            values = np.asarray(values).reshape(shape)
        elif isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
            values = np.asarray(values, dtype=np.float64)  # no copy when it already is
        if rows is not None and shape[0] != rows:
            raise _oip_problem(400, f"input {name!r} has {shape[0]} rows; other inputs have {rows}")
        rows = shape[0]
        columns[name] = values
    if rows is None:
        raise _oip_problem(400, "no inputs given")
    return columns, rows


_OUTPUT_DTYPES = {"BOOL": np.bool_, "INT64": "<i8", "FP64": "<f8"}


def _encode(spec: OutputSpec, column: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    datatype = _output_datatype(spec)
    shape = list(column.shape)
    tensor: dict[str, Any] = {"name": spec.name, "datatype": datatype, "shape": shape}
    if datatype == "BYTES":
        labels = [str(v).encode() for v in column.ravel()]
        raw = b"".join(struct.pack("<I", len(b)) + b for b in labels) if binary else None
        data: Any = [b.decode() for b in labels]
    else:
        array = np.asarray(column, dtype=_OUTPUT_DTYPES[datatype])
        raw, data = (array.tobytes(), None) if binary else (None, array.ravel().tolist())
    if binary:
        tensor["parameters"] = {"binary_data_size": len(raw or b"")}
        return tensor, raw
    tensor["data"] = data
    return tensor, None


async def _run(
    request: Request, ko: KnowledgeObject, endpoint: str, columns: dict[str, Any], key: tuple[str, ...] | None
) -> Any:
    """``call_batch`` inline or on an inference thread; under capture, one record per row (channel oip) first.

    ``key`` (a single row with a small body) lets the dispatcher run it inline when its measured
    cost is tiny; a batch (None) is a pool job of its own, never holding up the loop or other calls.
    The protocol refuses a batch whole when any row is bad, so then every row's record says it
    was not answered."""
    state = state_of(request)
    run: Any = functools.partial(state.dispatcher.call, key) if key is not None else state.dispatcher.run_alone
    if state.capture is None:
        return await run(ko.call_batch, endpoint, columns)
    captured = await run(run_captured, ko, ko.call_batch, endpoint, columns)
    withheld = None
    if captured.ok and any(captured.value.errors):
        withheld = "not answered: the OIP request was refused for its other rows"
    await state.capture.record(captured, channel="oip", caller="anonymous", not_answered=withheld)
    return captured.unwrap()


async def infer(request: Request) -> Response:
    state = state_of(request)
    snapshot, entry, ko, endpoint = _model(request)
    spec = ko.function(endpoint)
    body = await read_body(request, state.settings.max_body_bytes)
    request_json, binary = _split_body(request, body)
    columns, rows = _columns(spec, request_json, binary, state.settings.max_batch_rows)
    wanted = request_json.get("outputs")
    outputs = {o.name: o for o in spec.outputs}
    parameters = request_json.get("parameters") if isinstance(request_json.get("parameters"), dict) else {}
    binary_all = bool(parameters.get("binary_data_output", False))
    chosen: list[tuple[OutputSpec, bool]] = []
    if wanted is None:
        chosen = [(o, binary_all) for o in spec.outputs]
    elif isinstance(wanted, list):
        for item in wanted:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or item["name"] not in outputs:
                raise _oip_problem(400, f"unknown output {item!r}; outputs are {', '.join(outputs)}")
            params = item.get("parameters") if isinstance(item.get("parameters"), dict) else {}
            chosen.append((outputs[item["name"]], bool(params.get("binary_data", binary_all))))
    else:
        raise _oip_problem(400, '"outputs" must be a list')
    key = ("oip", ko.id, ko.version, endpoint) if rows == 1 and len(body) <= INLINE_MAX_BODY else None
    inline = state.dispatcher.is_inline(key) if key is not None else None
    label = f"oip:{endpoint}"
    started = time.perf_counter()
    try:
        batch = await _run(request, ko, endpoint, columns, key)
    except InputError as exc:
        state.metrics.observe_call(ko.id, ko.version, label, time.perf_counter() - started, rows, 400, inline)
        raise _oip_problem(400, f"invalid input for {ko.ref} {endpoint}: {exc}") from None
    bad = [f"row {i}: {error}" for i, error in enumerate(batch.errors) if error]
    status = 400 if bad else 200
    state.metrics.observe_call(ko.id, ko.version, label, time.perf_counter() - started, rows, status, inline)
    if bad:
        raise _oip_problem(400, f"invalid input for {ko.ref} {endpoint}: " + "; ".join(bad[:20]))
    tensors, buffers = [], []
    for out_spec, as_binary in chosen:
        tensor, raw = _encode(out_spec, batch.columns[out_spec.name], as_binary)
        tensors.append(tensor)
        if raw is not None:
            buffers.append(raw)
    answer: dict[str, Any] = {"model_name": f"{ko.id}.{endpoint}", "model_version": ko.version, "outputs": tensors}
    if isinstance(request_json.get("id"), str):
        answer["id"] = request_json["id"]
    warnings = [f"row {i}: {w}" for i, row in enumerate(batch.warnings) for w in row]
    answer["parameters"] = {"content_digest": ko.content_digest, "request_id": request.scope.get("request_id", "")}
    if warnings:  # the first 20, like the errors: one warning per row would outgrow the request
        more = f"; and {len(warnings) - 20} more" if len(warnings) > 20 else ""
        answer["parameters"]["warnings"] = "; ".join(warnings[:20]) + more
    headers = version_headers(request, snapshot, entry, _infer_address, endpoint)
    if not buffers:
        return json_response(answer, headers=headers)
    head = json.dumps(answer, separators=(",", ":"), allow_nan=True).encode()
    headers["Inference-Header-Content-Length"] = str(len(head))
    return Response(head + b"".join(buffers), media_type="application/octet-stream", headers=headers)


routes = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{name}", model_metadata, methods=["GET"]),
    Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
    Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
]

# The infer routes: the hot path, so create_app matches them before the ~40 other routes (each
# route tried first costs a regex match; at the end of the list that was a third of a call).
call_routes = [
    Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
]
