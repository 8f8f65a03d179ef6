"""Collecting replays from outside: ``rlimpact collect ballchasing GROUP_ID``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from tqdm import tqdm

from shared.settings import Settings

if TYPE_CHECKING:
    from services.ingestor.collector.collect import CollectReport

# Exit statuses, as the README documents them.
DONE, SOME_FAILED, UNUSABLE, OVER_BUDGET, UNAVAILABLE = 0, 1, 2, 3, 4


def register(commands: argparse._SubParsersAction) -> None:
    collect = commands.add_parser("collect", help="collect replays from an outside source")
    sources = collect.add_subparsers(dest="source", required=True)
    ballchasing = sources.add_parser(
        "ballchasing",
        help="download every replay of a Ballchasing.com group and its child groups",
        description="Download every replay of a Ballchasing.com group and its child groups into"
        " the pipeline, with the players' ranks as skill labels. Resumable: run it again after"
        " an interruption and it continues where it stopped.",
    )
    ballchasing.add_argument("group_id", help="the group's id, as in its ballchasing.com URL")
    ballchasing.add_argument("--token", help="API token (default: RLIMPACT_BALLCHASING_TOKEN)")
    ballchasing.add_argument(
        "--refresh",
        action="store_true",
        help="list groups again that an earlier run listed completely (to find new replays)",
    )
    ballchasing.add_argument(
        "--max-wait",
        type=float,
        metavar="SECONDS",
        help="stop instead of waiting longer than this for the request budget or a"
        " Retry-After (default: wait as long as needed)",
    )
    ballchasing.set_defaults(func=cmd_collect_ballchasing)


def cmd_collect_ballchasing(args: argparse.Namespace, settings: Settings) -> int:
    token = args.token or settings.ballchasing_token
    if not token:
        print(
            "rlimpact: no Ballchasing API token: pass --token or set RLIMPACT_BALLCHASING_TOKEN"
            " (create one at https://ballchasing.com/upload)",
            file=sys.stderr,
        )
        return UNUSABLE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ballchasing").setLevel(logging.INFO)
    return asyncio.run(_collect(settings, token, args.group_id, args.refresh, args.max_wait))


async def _collect(
    settings: Settings, token: str, root: str, refresh: bool, max_wait: float | None
) -> int:
    from services.ingestor.collector.client import (
        BallchasingAuthError,
        BallchasingClient,
        BallchasingError,
        BallchasingNotFound,
        BallchasingUnavailable,
        BudgetExhausted,
    )
    from services.ingestor.collector.collect import Collector, persisted_budget
    from shared.service import service_context

    async with service_context("cli", settings) as ctx:
        ages, record = await persisted_budget(ctx, token)
        async with BallchasingClient(
            settings, token, max_wait=max_wait, on_request=record
        ) as client:
            for kind, kind_ages in ages.items():
                client.seed(kind, kind_ages)
            collector = Collector(ctx, client)
            status = DONE
            try:
                with tqdm(desc="list", unit="replay", file=sys.stderr) as bar:
                    await collector.list_tree(root, refresh, on_listed=bar.update)
                todo = await collector.todo(root)
                for item in tqdm(todo, desc="collect", unit="replay", file=sys.stderr):
                    await collector.process(item)
            except BallchasingNotFound as error:
                print(f"rlimpact: no Ballchasing group {root!r} ({error})", file=sys.stderr)
                return UNUSABLE
            except BallchasingAuthError as error:
                print(f"rlimpact: Ballchasing refused the token: {error}", file=sys.stderr)
                return UNUSABLE
            except BallchasingError as error:
                print(f"rlimpact: unexpected answer from Ballchasing: {error}", file=sys.stderr)
                return UNUSABLE
            except BudgetExhausted as error:
                print(f"rlimpact: stopped: {error}", file=sys.stderr)
                status = OVER_BUDGET
            except BallchasingUnavailable as error:
                print(
                    f"rlimpact: stopped: Ballchasing is unavailable: {error};"
                    " run the same command again to continue",
                    file=sys.stderr,
                )
                status = UNAVAILABLE
            report = collector.report
            report.requests, report.waited_seconds = client.requests, client.waited_seconds
    _print_report(report)
    if status == DONE and report.failed:
        return SOME_FAILED
    return status


def _print_report(report: CollectReport) -> None:
    print(
        f"groups {report.groups}, replays listed {report.replays}"
        f" ({report.listed_new} new this run); already done {report.already_done}"
    )
    print(
        f"ingested {report.ingested_new} new replays, {report.duplicates} already known;"
        f" labels stored {report.labels_stored} ({report.labels_waiting} wait for the parser),"
        f" players without rank or MMR {report.unrated_players}"
    )
    print(
        f"requests {report.requests}, waited {report.waited_seconds:.1f} s for budget and"
        f" Retry-After; failed {len(report.failed)}, given up after earlier runs {report.given_up}"
    )
    for bc_id, reason in report.failed:
        print(f"  failed {bc_id}: {reason}")
