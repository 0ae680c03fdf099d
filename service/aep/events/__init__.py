"""The stored event: its schema, validation, server ids and wire helpers."""
