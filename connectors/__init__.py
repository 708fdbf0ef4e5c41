"""The doors in: file intake into the PostgreSQL outbox, the relay from the outbox to Kafka, and
the synthetic dataset generator. Validation is the core's (`aidcore.intake`); encoding is the
codec's. A record is acknowledged only once it is durable in the outbox.
"""
