"""Kafka on aiokafka: topic setup, a typed producer, and the consume loop every service runs.

Delivery is at-least-once: offsets are committed only after the handler returned, i.e. after
its results are durable. Handlers are idempotent (keyed by content hash and model id), so a
redelivery after a crash changes nothing. A dependency that is down (Postgres, Kafka, the
blob store) is waited for, with backoff, on the same message (:mod:`shared.retry`); only a
message that is itself bad is dead-lettered.

One module per concern: ``topics`` (creating and growing topics), ``clients`` (started
clients, the event producer), ``consume`` (the consume loop, retries, lag), ``transactions``
(exactly once), ``dead_letters`` (``events.invalid``) and ``reading`` (a topic's committed
records since a time). Import the names from here.
"""

from shared.kafka.clients import QUIET_CLIENT, EventProducer, event_producer, started
from shared.kafka.consume import HANDLER_ATTEMPTS, commit, consume, record_lag
from shared.kafka.dead_letters import FailReplay, dead_letter, replay_named_in
from shared.kafka.reading import TRANSACTIONS_END_SECONDS, committed_records_since
from shared.kafka.topics import COMPACTED_CONFIGS, ensure_topics, partitions_to_add
from shared.kafka.transactions import Emission, consume_in_transactions, next_offsets

__all__ = [
    "COMPACTED_CONFIGS",
    "HANDLER_ATTEMPTS",
    "QUIET_CLIENT",
    "TRANSACTIONS_END_SECONDS",
    "Emission",
    "EventProducer",
    "FailReplay",
    "commit",
    "committed_records_since",
    "consume",
    "consume_in_transactions",
    "dead_letter",
    "ensure_topics",
    "event_producer",
    "next_offsets",
    "partitions_to_add",
    "record_lag",
    "replay_named_in",
    "started",
]
