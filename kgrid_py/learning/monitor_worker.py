"""One site's monitoring section in its own process: ``python -m kgrid_py.learning.monitor_worker``.

:func:`kgrid_py.learning.monitor.monitor` starts one per site on a large SQLite store (reading
SQLite costs a Python object per value under the GIL, so only processes compute sites at once).
Reads one JSON request on stdin (store URL, KO id, version, function spec, site, since), writes
the section as JSON on stdout; on failure, one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys

from kgrid_py.learning.monitor import site_section
from kgrid_py.learning.store import CaptureStore
from kgrid_py.metadata import FunctionSpec


def main() -> int:
    try:
        request = json.loads(sys.stdin.buffer.read())
        function = FunctionSpec.model_validate(request["function"])
        with CaptureStore.open(request["url"]) as store:
            section = site_section(
                store, request["ko_id"], request["version"], function, request["site"], request["since_us"]
            )
        sys.stdout.write(json.dumps(section))
    except Exception as exc:  # reported to the parent, which raises MonitorError with this line
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
