"""Fault tolerance: the chaos suite's scenarios, one after another on one fresh stack, as a table.

    .venv/bin/python bench/chaos.py [--scenarios NAME ...] [--no-baseline] [--replays 50]
                                    [--data-dir .rlimpact/bench-chaos]

Starts Kafka and Postgres (``deploy/stack.sh``) and the services under their supervisor
(``rlimpact supervise``), on the integration tests' ports (``RLIMPACT_TEST_PORT_OFFSET``), in
a fresh ``--data-dir``. Then, first with no fault (the baseline row, unless
``--no-baseline``), then for each scenario of ``tests/chaos/scenarios.py``: ``--replays`` new
replays in flight (good ones and a few unparseable ones) and one fault. Last, on a second
fresh stack that runs two instances of the parser, the featurizer and the scorer and keeps its
blobs in a MinIO bucket, one instance of each of them is killed mid-stream. Per run it prints:

- lost: parseable replays without one ``scores`` row and one committed ``scores.emitted``
  event per player and model (or failed);
- doubled: replays with a committed event more than once;
- stranded: replays neither ``scored`` nor ``failed`` when the wait ended;
- misfailed: unparseable replays not ``failed`` with the parser's reason;
- down: services without a live process or an up ``/metrics`` afterwards;
- crashes: restarts by the supervisor besides those of the services the run killed (services
  that exited by themselves, say on an outage); not a check, a symptom;
- drain s: from the end of the fault (the server started again, the killed service back)
  until every replay of the run was final; run s: from its first file to the end of checks.

Exit status 0 when every run held, 1 otherwise. The checks are the suite's own
(``tests/chaos/test_chaos.py``); this prints them all instead of stopping at the first.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # tests/ (the scenarios) is not an installed package

from tests.chaos.replays import plan_batches  # noqa: E402
from tests.chaos.scenarios import (  # noqa: E402
    BASELINE,
    BLOB_BUCKET,
    SCALE,
    SCALED,
    SCENARIOS,
    Outcome,
    Scenario,
    run_scenario,
)
from tests.chaos.stack import ChaosStack, kill_all  # noqa: E402

COLUMNS = (
    "run", "replays", "lost", "doubled", "stranded", "misfailed", "down", "crashes", "drain s",
    "run s",
)  # fmt: skip


def row(outcome: Outcome) -> list[str]:
    drain = "—" if outcome.drain_seconds is None else f"{outcome.drain_seconds:.1f}"
    counts = (outcome.lost, outcome.doubled, outcome.stranded, outcome.misfailed, outcome.down)
    return [
        outcome.scenario,
        str(outcome.replays),
        *(str(len(items)) for items in counts),
        str(outcome.crashes),
        drain,
        f"{outcome.seconds:.0f}",
    ]


def table(outcomes: list[Outcome]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(row(outcome)) + " |" for outcome in outcomes]
    return "\n".join(lines)


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (
        " (modified)" if git("status", "--porcelain") else ""
    )


async def bench(args: argparse.Namespace) -> list[Outcome]:
    """The single-instance scenarios on one stack, then the scaled one on a stack of its own
    (two instances per replay stage, blobs in MinIO)."""
    wanted = set(args.scenarios or [s.name for s in (*SCENARIOS, SCALED)])
    scenarios = [
        *([BASELINE] if args.baseline else []),
        *(s for s in SCENARIOS if s.name in wanted),
    ]
    data_dir = args.data_dir.resolve()
    outcomes = await run_on(ChaosStack.fresh(data_dir), scenarios, args.replays)
    if SCALED.name in wanted:
        scaled = ChaosStack.fresh(
            data_dir.with_name(data_dir.name + "-scaled"), scale=SCALE, blob_bucket=BLOB_BUCKET
        )
        outcomes += await run_on(scaled, [SCALED], args.replays)
    return outcomes


async def run_on(stack: ChaosStack, scenarios: list[Scenario], replays: int) -> list[Outcome]:
    outcomes = []
    try:
        names = [scenario.name for scenario in scenarios]
        batches = await plan_batches(names, stack.settings, stack.data_dir / "inputs", replays)
        await stack.start()
        for scenario in scenarios:
            print(f"{scenario.name}: {len(batches[scenario.name])} replays ...", flush=True)
            outcome = await run_scenario(stack, scenario, batches[scenario.name])
            print(outcome.describe(), flush=True)
            outcomes.append(outcome)
    finally:
        if leftovers := stack.stop():
            print("still running after the stack stopped (now killed):", *leftovers, sep="\n")
            kill_all(leftovers)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [scenario.name for scenario in (*SCENARIOS, SCALED)]
    parser.add_argument("--scenarios", nargs="+", choices=names, help="default: all")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--replays", type=int, default=50, help="per run")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".rlimpact" / "bench-chaos")
    args = parser.parse_args()
    started = datetime.now(UTC)
    outcomes = asyncio.run(bench(args))
    print(f"\n{started:%Y-%m-%d %H:%M} UTC, commit {commit()}, {args.replays} replays per run\n")
    print(table(outcomes))
    return 0 if outcomes and all(outcome.ok for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
