"""The Faust stream worker: the app, its topics, the ledger agent and its changelog-backed state.

Thin shells only: decode (schemas.codec), decide (aidcore.ledger.decide_batch), perform the
effects (produce alerts, dead letters and state deltas, then let Faust commit). No rule lives here.
"""
