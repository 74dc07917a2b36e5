"""Service functions: each owns its transaction, so that a state change, its audit entry and its
outbox row commit together or not at all."""
