"""The pure core of the aid ledger.

Owns every decision: how a raw input record becomes a validated disbursement (or a named
rejection), how a NIK becomes a token, what a person's ledger state is, and which events are
redeliveries, modified resubmissions or duplicates. It imports only the standard library: no
Kafka, no database, no clock, no environment. Time, keys and reference data are passed in.
"""
