"""``rlimpact retry``: re-drive replays by hand (the reconciler's rules, ``shared/recovery.py``)."""

from __future__ import annotations

import argparse
import asyncio

from shared.settings import Settings


def register(commands: argparse._SubParsersAction) -> None:
    retry = commands.add_parser(
        "retry",
        help="drive stranded or failed replays on again (ids, --failed, --stuck)",
        description=(
            "Send again the event that moves each replay on from the stage it reached: "
            "replay.uploaded, frames.parsed or features.ready. A failed replay whose bytes are "
            "stored is parsed again. Scored replays are left alone."
        ),
    )
    retry.add_argument("replays", nargs="*", metavar="REPLAY", help="replay ids or id prefixes")
    retry.add_argument(
        "--failed", action="store_true", help="every failed replay whose bytes are stored"
    )
    retry.add_argument(
        "--stuck",
        action="store_true",
        help="every replay the reconciler would re-drive, however recently it moved",
    )
    retry.set_defaults(func=cmd_retry)


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    if not (args.replays or args.failed or args.stuck):
        raise SystemExit("rlimpact retry: name replays, or give --failed or --stuck")
    return asyncio.run(_retry(settings, args.replays, args.failed, args.stuck))


async def _retry(settings: Settings, refs: list[str], failed: bool, stuck: bool) -> int:
    from aiokafka.errors import KafkaError

    from shared.recovery import UnknownReplay, retry
    from shared.service import service_context
    from shared.storage import BlobStoreUnavailable, open_blob_store

    try:
        async with service_context("cli", settings) as ctx:
            store = open_blob_store(settings)
            outcomes = await retry(ctx, store, refs, failed=failed, stuck=stuck)
    except UnknownReplay as error:
        raise SystemExit(f"rlimpact retry: {error}") from None
    except (OSError, KafkaError, BlobStoreUnavailable) as error:
        raise SystemExit(
            f"rlimpact retry: cannot reach Postgres, Kafka or the blob store ({error});"
            " is the stack up ('rlimpact up')?"
        ) from None
    for outcome in outcomes:
        plan = outcome.plan
        if plan.topic is not None and not outcome.sent:
            print(f"{plan.replay_id[:16]}  moved on meanwhile: left alone")
        else:
            print(f"{plan.replay_id[:16]}  {plan.why}")
    sent = sum(outcome.sent for outcome in outcomes)
    print(f"{sent} replays re-driven, {len(outcomes) - sent} left alone")
    return 0
