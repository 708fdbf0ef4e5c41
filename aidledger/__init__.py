"""The `aidledger` command: wires the stack together. Nothing imports it."""
