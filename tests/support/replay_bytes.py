"""Rocket League replay framing, for tests that corrupt replays on purpose.

A replay is ``header_size u32, header_crc u32, header, body_size u32, body_crc u32, body``
(little-endian). The CRC is a CRC-32 with boxcars' parameters (poly 0x04c11db7, initial value
0x10340dfe, not reflected, output xor 0xffffffff). Re-sealing a mutated replay with valid CRCs
makes the parser decode the damaged bytes instead of stopping at the checksum.
"""

from __future__ import annotations

import struct

_POLY = 0x04C11DB7
_INIT = 0x10340DFE


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ _POLY if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
        table.append(crc)
    return table


_TABLE = _table()


def replay_crc(data: bytes) -> int:
    crc = _INIT
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc ^ 0xFFFFFFFF


def split(replay: bytes) -> tuple[bytes, bytes]:
    """(header, body) of a well-formed replay."""
    (header_size,) = struct.unpack_from("<I", replay, 0)
    header = replay[8 : 8 + header_size]
    (body_size,) = struct.unpack_from("<I", replay, 8 + header_size)
    body_start = 16 + header_size
    return header, replay[body_start : body_start + body_size]


def seal(header: bytes, body: bytes) -> bytes:
    """A replay whose sizes and CRCs are right for ``header`` and ``body``."""
    return (
        struct.pack("<II", len(header), replay_crc(header))
        + header
        + struct.pack("<II", len(body), replay_crc(body))
        + body
    )
