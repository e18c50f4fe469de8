"""TensorBoard event files (scalars), written directly: TFRecord framing + the Event protobuf.

tensorboardX did this before; importing any part of it runs its package __init__, which
imports PyTorch when that is installed (1.4 s per training process here, and most RL
researchers have PyTorch installed). Scalars need only a few protobuf fields, encoded here:

    Event   {1: wall_time double, 2: step int64, 3: file_version string, 5: summary Summary}
    Summary {1: value repeated Value}
    Value   {1: tag string, 2: simple_value float}

Each record: uint64 length, uint32 masked CRC32C(length), data, uint32 masked CRC32C(data).
Writes are synchronous (no background thread): a failed write raises OSError at the step
that failed (see trainer._Logger).
"""

from __future__ import annotations

import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as protobuf encodes it (negative: 10 bytes)
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def scalar_event(step: int, scalars: dict[str, float], wall_time: float | None = None) -> bytes:
    """One serialised Event holding `scalars` (tag -> value) at `step`."""
    values = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5)
                     + struct.pack("<f", float(value)))
        for tag, value in scalars.items())
    return (_field(1, 1) + struct.pack("<d", time.time() if wall_time is None else wall_time)
            + _field(2, 0) + _varint(int(step)) + _bytes_field(5, values))


def _version_event() -> bytes:
    return _field(1, 1) + struct.pack("<d", time.time()) + _bytes_field(3, b"brain.Event:2")


def record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc(header)) + data
            + struct.pack("<I", masked_crc(data)))


def read_records(path) -> list[bytes]:
    """The records of a TFRecord file, each checked against its CRCs (tests, tools)."""
    out = []
    with open(path, "rb") as f:
        blob = f.read()
    at = 0
    while at < len(blob):
        header = blob[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", blob[at + 8:at + 12])
        if crc != masked_crc(header):
            raise ValueError(f"{path}: bad length CRC at byte {at}")
        data = blob[at + 12:at + 12 + length]
        (crc,) = struct.unpack("<I", blob[at + 12 + length:at + 16 + length])
        if len(data) != length or crc != masked_crc(data):
            raise ValueError(f"{path}: bad data CRC at byte {at}")
        out.append(data)
        at += 16 + length
    return out


class EventsWriter:
    """An events.out.tfevents.* file under `directory` that TensorBoard reads."""

    def __init__(self, directory) -> None:
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.0")
        self.path = os.path.join(str(directory), name)
        self._file = open(self.path, "ab")
        self._file.write(record(_version_event()))
        self._file.flush()

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._file.write(record(scalar_event(step, scalars)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()
