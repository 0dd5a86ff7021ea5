"""Apply a recalibration to a KO's ONNX graph as post-processing nodes on its risk outputs.

The parent graph stays as it is; each updated output's producer now writes ``<name>__parent``, and
new nodes compute the updated risk under the output's own name, so names, shapes, dtype and unit
are unchanged, and anything downstream in the graph (PLCOm2012's ``screening_recommended``
threshold) sees the updated risk. Parameters are float64 initializers, bit for bit the estimates.

- logistic: ``p' = sigmoid(a + b·(ln p - log1p(-p)))``
- time to event: ``p' = -expm1(-exp(a_h + b·ln(-log1p(-p))))``

ONNX has neither log1p nor expm1, so both use Kahan's formulas (as KFRE's own graph does):
log1p(x) = x·ln(u)/(u - 1) with u = 1 + x, and expm1(x) = (u - 1)·x/ln(u) with u = e^x, exact to a
few ulp, so risks of 1e-6 keep their relative precision.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kgrid_py.learning.recalibration import RecalibrationError, Update

__all__ = ["PARENT_SUFFIX", "update_graph"]

PARENT_SUFFIX = "__parent"


class _Builder:
    """Nodes and constants for one output, with names under a private prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, value: float) -> str:
        name = f"{self.prefix}c{len(self.constants)}"
        self.constants.append(numpy_helper.from_array(np.array(value, dtype=np.float64), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None) -> str:
        self.count += 1
        name = out or f"{self.prefix}t{self.count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=f"{self.prefix}n{self.count}"))
        return name

    def log1p(self, x: str) -> str:
        u = self.op("Add", x, self.const(1.0))
        general = self.op("Div", self.op("Mul", x, self.op("Log", u)), self.op("Sub", u, self.const(1.0)))
        return self.op("Where", self.op("Equal", u, self.const(1.0)), x, general)

    def expm1(self, x: str) -> str:
        u = self.op("Exp", x)
        general = self.op("Div", self.op("Mul", self.op("Sub", u, self.const(1.0)), x), self.op("Log", u))
        at_one = self.op("Where", self.op("Equal", u, self.const(1.0)), x, general)
        return self.op("Where", self.op("Equal", u, self.const(0.0)), self.op("Neg", self.const(1.0)), at_one)


def update_graph(model_bytes: bytes, update: Update, outputs: list[str]) -> bytes:
    """The parent ONNX with ``update`` applied to each of ``outputs`` (graph output names)."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    declared = {o.name: o for o in graph.output}
    for output in outputs:
        info = declared.get(output)
        if info is None:
            raise RecalibrationError(f"the graph has no output {output!r} to recalibrate")
        if info.type.tensor_type.elem_type != TensorProto.DOUBLE:
            raise RecalibrationError(f"graph output {output!r} is not float64; only float64 risks are updated")
        producers = [i for i, node in enumerate(graph.node) if output in node.output]
        if len(producers) != 1:
            raise RecalibrationError(f"graph output {output!r} has no single producing node")
        index = producers[0]
        producer = graph.node[index]
        parent_name = output + PARENT_SUFFIX
        producer.output[list(producer.output).index(output)] = parent_name
        builder = _Builder(f"recalibrate_{output}_")
        a, b = builder.const(update.intercept(output)), builder.const(update.slope)
        minus_p = builder.op("Neg", parent_name)
        log_survival = builder.log1p(minus_p)  # ln(1 - p)
        if update.kind == "logistic":
            odds = builder.op("Sub", builder.op("Log", parent_name), log_survival)
            eta = builder.op("Add", a, builder.op("Mul", b, odds))
            builder.op("Sigmoid", eta, out=output)
        else:
            cll = builder.op("Log", builder.op("Neg", log_survival))
            hazard = builder.op("Exp", builder.op("Add", a, builder.op("Mul", b, cll)))
            builder.op("Neg", builder.expm1(builder.op("Neg", hazard)), out=output)
        # Right after the producer: the new nodes come before anything that reads the output.
        rest = list(graph.node[index + 1 :])
        del graph.node[index + 1 :]
        graph.node.extend(builder.nodes)
        graph.node.extend(rest)
        graph.initializer.extend(builder.constants)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
