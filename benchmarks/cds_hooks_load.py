"""CDS Hooks load benchmark: a ``patient-view`` call with a 200-resource prefetch against the same KO
called directly over HTTP (the KGrid route), on one real ``kgrid serve --cds-no-auth`` process.

Closed loop over loopback, one connection (``--concurrency``), N requests per round; rounds
alternate between the two endpoints and the median round (by rate) is reported with p50/p99.
The prefetch is one KFRE patient: the Patient, 100 eGFR and 99 UACR Observations spread over
eight years (mixed mg/g and mg/mmol), i.e. what ``Observation?patient=..&code=..`` returns for a
patient with a long record. The direct call sends the inputs that prefetch maps to.

    .venv/bin/python benchmarks/cds_hooks_load.py [--requests 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import Outcome, _wait_ready, closed_loop

REPO = Path(__file__).resolve().parent.parent
SERVICE = "/cds-services/kfre-1.0.0-four-variable"
DIRECT = "/kfre/1.0.0/four-variable"
LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"


def _obs(n: int, code: str, value: float, unit: str, when: datetime) -> dict:
    return {
        "resourceType": "Observation",
        "id": f"{code}-{n}",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": when.isoformat(timespec="seconds"),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def hook_body(now: datetime) -> dict:
    egfr = [_obs(n, "98979-8", 30 + n % 7, "mL/min/{1.73_m2}", now - timedelta(days=3 + 29 * n)) for n in range(100)]
    uacr = [
        _obs(
            n,
            "9318-7" if n % 2 else "14959-1",
            50 + n % 11 if n % 2 else 5.0 + n % 3,
            "mg/g" if n % 2 else "mg/mmol",
            now - timedelta(days=5 + 29 * n),
        )
        for n in range(99)
    ]

    def bundle(kind: str, items: list[dict]) -> dict:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(items),
            "link": [{"relation": "self", "url": f"http://fhir.example/{kind}?patient=p1"}],
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in items],
        }

    return {
        "hook": "patient-view",
        "hookInstance": "bench-0001",
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1961-04-02"},
            "egfr": bundle("Observation", egfr),
            "uacr": bundle("Observation", uacr),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--port", type=int, default=18766)
    args = parser.parse_args()

    now = datetime.now(UTC)
    hook = hook_body(now)
    resources = 1 + sum(len(b["entry"]) for k, b in hook["prefetch"].items() if k != "patient")
    hook_bytes = json.dumps(hook).encode()
    command = [sys.executable, "-c", "from kgrid_py.cli import main; main()", "serve", str(REPO / "knowledge_objects")]
    command += ["--port", str(args.port), "--cds-no-auth", "--no-access-log", "--no-watch"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(args.port, server)

        async def one(path: str, body: bytes) -> dict:
            from http_load import Connection

            connection = await Connection.open("127.0.0.1", args.port)
            try:
                status, answer = await connection.post(path, body)
            finally:
                connection.close()
            assert status == 200, (path, status, answer[:300])
            return json.loads(answer)

        async def measure() -> tuple[dict, dict, dict[str, Outcome]]:
            card = (await one(SERVICE, hook_bytes))["cards"][0]
            assert "cannot compute" not in card["summary"], card
            # the inputs the card says it used, sent straight to the KO route
            born = datetime(1961, 4, 2, tzinfo=UTC)
            age = now.year - born.year - ((now.month, now.day) < (born.month, born.day))
            direct = {"age": age, "sex": "female", "egfr": 30, "uacr": {"value": 5.0, "unit": "mg/mmol"}}
            direct_bytes = json.dumps(direct).encode()
            result = await one(DIRECT, direct_bytes)
            for name, value in result["result"].items():  # the card shows the same result
                assert f"{name} {value * 100:.1f} %" in card["summary"], (card["summary"], result)
            for path, body in ((SERVICE, hook_bytes), (DIRECT, direct_bytes)):  # warm up
                await closed_loop("127.0.0.1", args.port, path, body, total=100, concurrency=args.concurrency)
            rounds: dict[str, list[Outcome]] = {"cds": [], "direct": []}
            for _ in range(args.rounds):
                for name, path, body in (("cds", SERVICE, hook_bytes), ("direct", DIRECT, direct_bytes)):
                    rounds[name].append(
                        await closed_loop(
                            "127.0.0.1", args.port, path, body, total=args.requests, concurrency=args.concurrency
                        )
                    )
            best = {}
            for name, outcomes in rounds.items():
                outcomes.sort(key=lambda o: o.rate)
                best[name] = outcomes[len(outcomes) // 2]
            return card, result, best

        card, result, best = asyncio.run(measure())
    finally:
        server.terminate()
        server.wait(timeout=10)

    print(
        f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"concurrency {args.concurrency}, {args.requests} requests x {args.rounds} rounds (median round), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"# prefetch: {resources} resources, {len(hook_bytes) / 1024:.0f} KiB; card: {card['summary']}")
    print(f"# direct result: {result.get('result', result)}")
    print("| endpoint | requests/s | p50 ms | p99 ms | failures |")
    print("|---|---|---|---|---|")
    labels = {"cds": f"POST {SERVICE} (patient-view, {resources} resources)", "direct": f"POST {DIRECT} (KGrid route)"}
    for name, outcome in best.items():
        print(
            f"| {labels[name]} | {outcome.rate:.0f} | {outcome.percentile(0.5) * 1000:.1f} | "
            f"{outcome.percentile(0.99) * 1000:.1f} | {outcome.failures} |"
        )


if __name__ == "__main__":
    main()
