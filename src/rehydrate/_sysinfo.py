"""Figures the kernel keeps about this process and this machine (Linux /proc)."""

from __future__ import annotations

from typing import Optional


def proc_kb_field(path: str, field: str) -> Optional[int]:
    """``field`` (a "Name:   N kB" line) of a /proc file, in bytes, or None
    where the file or the field does not exist."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
