"""One site's combined outcomes read in its own process: ``python -m kgrid_py.learning.outcomes_worker``.

:func:`kgrid_py.learning.store_evidence.evidence_from_store` starts one on a large SQLite store, so
the outcomes are read while the calls are (each value read from SQLite costs a Python object under
the GIL, so two threads do not read faster than one). Reads one JSON request on stdin (store URL,
outcome, site, columns) and writes the table :func:`combined_outcomes` makes as an Arrow IPC
stream on stdout (exact: the parent gets the same values it would have read itself); on failure,
one line on stderr and exit status 1. The store must exist: a reader never creates one.
"""

from __future__ import annotations

import sys
from typing import Any

import pyarrow as pa

from kgrid_py.learning.monitor import combined_outcomes, outcomes_table
from kgrid_py.learning.store_evidence import open_existing
from kgrid_py.learning.workers import serve


def outcomes(request: dict[str, Any]) -> bytes:
    with open_existing(request["url"]) as store:
        table = combined_outcomes(outcomes_table(store, request["outcome"], request["site"], request["columns"]))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


if __name__ == "__main__":
    sys.exit(serve(outcomes))
