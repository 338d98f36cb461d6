"""Hostile audio made in the tests: FLAC streams of constant subframes, written directly.

libsndfile's and FFmpeg's encoders both cut FLAC into ~4,096-frame blocks and
must be fed every sample (minutes for 4 hours of 8 channels). An attacker writes
the stream directly: each block of 65,535 frames is a 16-byte header and CRC plus
3 bytes per channel (a CONSTANT subframe: type byte and a 16-bit value), so
4 hours of 16 kHz mono is ~53 KB and 4 hours of 8 channels at 48 kHz ~380 KB,
both valid FLAC that libFLAC decodes in full. The layout is the FLAC format
specification's (RFC 9639); only constant subframes and fixed-size blocks are
written.
"""

from __future__ import annotations

import struct

MAX_BLOCK = 65535


def _crc_table(poly: int, width: int) -> list[int]:
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for byte in range(256):
        crc = byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & top else crc << 1
        table.append(crc & mask)
    return table


_CRC8, _CRC16 = _crc_table(0x07, 8), _crc_table(0x8005, 16)


def _crc8(data: bytes) -> int:
    crc = 0
    for b in data:
        crc = _CRC8[crc ^ b]
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ b]
    return crc


def _utf8_number(n: int) -> bytes:
    """FLAC codes the frame number like UTF-8 (up to 36 bits); chr() does it up to 0x10FFFF."""
    return chr(n).encode("utf-8", "surrogatepass")


def constant_flac(
    seconds: float, rate: int, channels: int, *, value: int = 8000, declared_frames: int | None = None
) -> bytes:
    """A 16-bit FLAC of ``seconds`` of one constant ``value`` on every channel.

    ``declared_frames`` is what STREAMINFO claims (default: the truth; 0: unknown, as a
    streaming encoder writes it; any other figure: a lie).
    """
    blocks = max(1, int(seconds * rate) // MAX_BLOCK)
    total = blocks * MAX_BLOCK
    declared = total if declared_frames is None else declared_frames
    subframes = b"".join(b"\x00" + struct.pack(">h", value) for _ in range(channels))  # CONSTANT, 16 bits
    frame_size = 4 + 3 + 2 + 1 + len(subframes) + 2
    info = (
        struct.pack(">HH", MAX_BLOCK, MAX_BLOCK)
        + frame_size.to_bytes(3, "big") * 2
        + ((rate << 44) | ((channels - 1) << 41) | (15 << 36) | declared).to_bytes(8, "big")
        + bytes(16)  # MD5 of the samples: zero means "not computed"
    )
    out = [b"fLaC", bytes([0x80]) + len(info).to_bytes(3, "big"), info]  # last metadata block: STREAMINFO
    # Sync + fixed blocking; 16-bit block size from the end of the header; rate from STREAMINFO;
    # independent channels, 16 bits per sample.
    fixed = bytes([0xFF, 0xF8, 0x70, ((channels - 1) << 4) | (0b100 << 1)])
    for number in range(blocks):
        header = fixed + _utf8_number(number) + struct.pack(">H", MAX_BLOCK - 1)
        frame = header + bytes([_crc8(header)]) + subframes
        out.append(frame + struct.pack(">H", _crc16(frame)))
    return b"".join(out)
