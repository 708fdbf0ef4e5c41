"""The worker's Prometheus metrics, declared once."""

from prometheus_client import Counter, Gauge, Histogram

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
ALERTS = Counter("aidledger_worker_alerts_total", "Alert revisions raised, by rule", ["rule_id"])
REJECTIONS = Counter(
    "aidledger_worker_rejections_total", "Records dead-lettered by the worker, by code", ["code"]
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
    "aidledger_worker_consumer_lag_records", "Records behind the high watermark, per ledger partition", ["partition"]
)
PERSONS = Gauge("aidledger_worker_state_persons", "Person tokens held in the worker's live state")
RECOVERY_SECONDS = Histogram(
    "aidledger_worker_state_recovery_seconds", "Time to rebuild one partition's state from its changelog",
    buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
ASSIGNED = Gauge("aidledger_worker_assigned_partitions", "Ledger partitions assigned to this worker")
HOUSEHOLDS = Gauge("aidledger_worker_state_households", "Households held in the household stage's live state")
HOUSEHOLD_POSTINGS = Counter(
    "aidledger_worker_household_postings_total", "Postings the household stage accepted (payments and reversals)"
)
RULEBOOK_ACTIVATIONS = Counter(
    "aidledger_worker_rulebook_activations_total", "Rulebook activations put in force, per ledger partition read",
    ["version"],
)
