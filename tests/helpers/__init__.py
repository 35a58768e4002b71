"""Shared test helpers: a reference model, byte-level corruptors, crash tools."""
