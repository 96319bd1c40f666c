"""Payload parsing, validation and quarantine between the broker and the store."""
