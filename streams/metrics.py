"""The worker's Prometheus metrics, declared once, and the two helpers that give labels their
bounded values. Counters are incremented per batch or per alert and dead letter, never per event."""

from prometheus_client import Counter, Gauge, Histogram

UNKNOWN_REGENCY = "unknown"

EVENTS_IN = Counter(
    "aidledger_worker_events_total", "Ledger records read by the worker, by outcome", ["outcome"]
)
ACCEPTED_BY = Counter(
    "aidledger_worker_accepted_events_total", "Accepted disbursements by source type and programme",
    ["source_type", "programme_code"],
)
ACCEPTED_IDR = Counter(
    "aidledger_worker_accepted_idr_total", "Rupiah in accepted disbursements", ["programme_code"]
)
ALERTS = Counter(
    "aidledger_worker_alerts_total", "Alert revisions raised, by rule and regency (first four digits of the region code)",
    ["rule_id", "regency_code"],
)
DEAD_LETTERS = Counter(
    "aidledger_worker_dead_letters_total", "Records dead-lettered by the worker, by outcome code", ["code"]
)
BATCH_SECONDS = Histogram(
    "aidledger_worker_batch_seconds", "Time to decide and persist one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
INGEST_TO_DECISION = Histogram(
    "aidledger_ingest_to_decision_seconds", "From intake of an event to the worker's decision on it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
LAG = Gauge(
    "aidledger_worker_consumer_lag_records",
    "Records behind the high watermark, per partition of the ledger topic (person stage) and households topic"
    " (household stage)", ["topic", "partition"],
)
PERSONS = Gauge("aidledger_worker_state_persons", "Person tokens held in the worker's live state")
RECOVERY_SECONDS = Histogram(
    "aidledger_worker_state_recovery_seconds", "Time to rebuild one partition's state from its changelog",
    buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
ASSIGNED = Gauge("aidledger_worker_assigned_partitions", "Ledger partitions assigned to this worker")
HOUSEHOLDS = Gauge("aidledger_worker_state_households", "Households held in the household stage's live state")
STATE_BYTES = Gauge(
    "aidledger_worker_state_bytes",
    "Bytes of the worker's live state's own objects (packed records, their buckets and dicts), by stage;"
    " read every few seconds", ["stage"],
)
STATE_BYTES.labels("person"), STATE_BYTES.labels("household")  # shown as 0 before the first read
HOUSEHOLD_POSTINGS = Counter(
    "aidledger_worker_household_postings_total", "Postings the household stage accepted (payments and reversals)"
)
UNEVALUATED = Counter(
    "aidledger_worker_unevaluated_payments_total",
    "Payments accepted but not evaluated by the rules: their person or household already had more than the"
    " reference data's period_payments_max in the period (a placeholder NIK or KK)", ["stage"],
)
REWINDS = Counter(
    "aidledger_worker_rewinds_total",
    "Partitions set back to their committed offset because records fetched for them could not be handled then"
    " (the flow stopped for a rebalance, or the partition was not active); they are read again",
)
RULEBOOK_ACTIVATIONS = Counter(
    "aidledger_worker_rulebook_activations_total", "Rulebook activations put in force, per ledger partition read",
    ["version"],
)


def regency_of(region_code: str, regencies) -> str:
    """The regency label of an alert: a regency of the reference data, else `unknown`, so a
    malformed region code can never grow the number of series."""
    regency = region_code[:4]
    return regency if regency in regencies else UNKNOWN_REGENCY


def report_lag(consumer, tp, next_offset: int) -> None:
    """Lag of one partition after a batch: the fetch's high watermark (right on Tansu, unlike
    ListOffsets) less the next offset to read."""
    hw = consumer.highwater(tp)
    if hw is not None:
        LAG.labels(tp.topic, str(tp.partition)).set(max(0, hw - next_offset))
