"""Outbound delivery: claim due messages, POST their sealed bytes, settle on a verified receipt or signed error."""
