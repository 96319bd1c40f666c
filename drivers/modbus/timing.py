"""Serial line timing (Modbus over serial line, section 2.5.1.1): character time, inter-frame gap, wire time."""

from __future__ import annotations


def character_bits(bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> int:
    """Bits on the wire per byte: start bit, data bits, parity bit (unless N), stop bits."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def inter_frame_gap(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    """The silence between frames in seconds: 3.5 character times; a fixed 1.75 ms above 19,200 baud."""
    if baudrate > 19200:
        return 0.00175
    return 3.5 * character_bits(bytesize, parity, stopbits) / baudrate


def wire_seconds(frame_bytes: int, baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    """How long `frame_bytes` take on the line at this baud rate."""
    return frame_bytes * character_bits(bytesize, parity, stopbits) / baudrate
