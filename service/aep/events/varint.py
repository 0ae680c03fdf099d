"""Protobuf's base-128 varint, for the bytes this service frames by hand.

Used for the file store's length-delimited records and the hand-serialised
responses (aep.ingest.responses).
"""

from __future__ import annotations


def encode_varint(value: int) -> bytes:
    """`value` (not negative) as a varint: 7 bits a byte, low bits first."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
