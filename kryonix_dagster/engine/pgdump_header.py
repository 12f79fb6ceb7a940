"""Make pg_dump's custom-format output byte-identical for unchanged data.

The archive header stores the time the dump was taken (seven integers). Everything else
of a custom-format dump of unchanged data is the same from run to run, so replacing that
time with a fixed valid date lets restic deduplicate the whole stream: a second backup of
an unchanged database adds almost nothing. The real time is in the session manifest.
pg_restore uses the header time only for display. Unknown header versions pass unchanged.
"""
from __future__ import annotations

MAGIC = b"PGDMP"
# 2000-01-01 00:00:00 as struct tm fields: sec, min, hour, mday, mon (0-based), year-1900, isdst
FIXED_TIME = (0, 0, 0, 1, 0, 100, 0)


def _encode_int(value: int, int_size: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(int_size, "little")


def normalize_dump_header(head: bytes) -> bytes:
    """Return `head` (the first bytes of a custom-format archive) with a fixed creation date."""
    if len(head) < 11 or head[:5] != MAGIC:
        return head
    vmaj, vmin, int_size = head[5], head[6], head[8]
    if vmaj != 1 or not 4 <= vmin <= 16 or int_size not in (4, 8):
        return head
    start = 11 + (1 if vmin >= 15 else 1 + int_size)  # after the compression field
    end = start + 7 * (1 + int_size)
    if len(head) < end:
        return head
    fixed = b"".join(_encode_int(v, int_size) for v in FIXED_TIME)
    return head[:start] + fixed + head[end:]
