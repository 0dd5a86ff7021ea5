"""One site's monitoring section in its own process: ``python -m kgrid_py.learning.monitor_worker``.

:func:`kgrid_py.learning.monitor.monitor` starts one per site on a large SQLite store (reading
SQLite costs a Python object per value under the GIL, so only processes compute sites at once).
Reads one JSON request on stdin (store URL, KO id, version, function spec, site, since), writes
the section as JSON on stdout; on failure, one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from kgrid_py.learning.monitor import site_section
from kgrid_py.learning.store import CaptureStore
from kgrid_py.learning.workers import serve
from kgrid_py.metadata import FunctionSpec


def section(request: dict[str, Any]) -> bytes:
    function = FunctionSpec.model_validate(request["function"])
    with CaptureStore.open(request["url"]) as store:
        found = site_section(
            store, request["ko_id"], request["version"], function, request["site"], request["since_us"]
        )
    return json.dumps(found).encode()


if __name__ == "__main__":
    sys.exit(serve(section))
