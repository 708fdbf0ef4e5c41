"""The straightforward Faust worker, kept only as the benchmark's baseline: one agent iterating
events one by one, a Faust Table keyed by person token holding that person's payments, one table
write (so one changelog record) per accepted event. Same decisions as the real worker (it calls
the same core), none of its batching. Not used by the stack.
"""

from __future__ import annotations

import time

import faust
from prometheus_client import Counter, start_http_server

from aidcore.ledger import Rulebook, decide_batch
from aidcore.reference import default_reference
from aidcore.settings import StackSettings
from schemas import codec
from schemas.topics import declared_topics
from streams.state import pack, unpack

EVENTS = Counter("aidledger_baseline_events_total", "Events the baseline agent decided")


def run_baseline(stack: StackSettings, metrics_port: int) -> None:
    start_http_server(metrics_port, addr=stack.metrics_addr)
    topics = declared_topics(stack)
    app = faust.App(
        f"aidledger-{stack.topic_prefix}-baseline",
        broker=f"kafka://{stack.kafka_bootstrap}",
        store="memory://",
        topic_partitions=stack.partitions,
        topic_allow_declare=True,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=6.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    ledger = app.topic(topics["ledger"].name, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", partitions=stack.partitions)
    alerts = app.topic(topics["alerts"].name + ".baseline", key_serializer="raw", value_serializer="raw",
                       partitions=stack.partitions)
    table = app.Table("persons", default=str, partitions=stack.partitions,
                      help="payments per person token (baseline)")
    rulebook, reference = Rulebook(), default_reference()

    @app.agent(ledger, concurrency=1)
    async def decide(stream):
        async for event in stream.events():
            d = codec.decode_disbursement(event.value)
            state = unpack(bytes.fromhex(table[d.person_token]))
            result = decide_batch({d.person_token: state}, [d], rulebook=rulebook, reference=reference,
                                  now_us=time.time_ns() // 1000)
            for person, payments in result.changed.items():
                table[person] = pack(payments).hex()
            for alert in result.alerts.values():
                await alerts.send(key=alert.subject_token.encode(), value=codec.encode_alert(alert))
            EVENTS.inc()

    from faust import Worker

    Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False).execute_from_commandline()
