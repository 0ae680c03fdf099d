"""Commands that use only the public API: the load/smoke client and the dead-letter replay."""
