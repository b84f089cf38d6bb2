#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the byte-format fuzz targets.

    python3 fuzz/seeds/make_seeds.py     # rewrites fuzz/seeds/{control_frame,data_frame,session_code,content}/

The seeds of the structured targets (sealed_frame, token, registry_sequence) are inputs the
fuzzer found and kept, chosen with `cargo fuzz fmt` (see docs/fuzzing.md); they are checked in
as they are and not written by this script.

Protobuf is encoded by hand (field numbers from proto/proto/remote_help.proto), so the seeds
need nothing but Python.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number, value):
    return varint(number << 3) + varint(value)


def field_bytes(number, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(number << 3 | 2) + varint(len(data)) + data


def frame(body):
    return struct.pack(">I", len(body)) + body


# ClientToRelay
def c2r(number, body=b""):
    return field_bytes(number, body)


hello = c2r(1, field_varint(1, 1) + field_bytes(2, "eyJh.eyJi.c2ln") + field_varint(3, 1) + field_bytes(4, "rhelp"))
create = c2r(2, field_varint(1, 2) + field_bytes(2, "ticket 42"))
join = c2r(3, field_bytes(1, "ABCDE-FGHJK"))
consent = c2r(4, field_varint(1, 1))
end = c2r(5)
ping = c2r(6, field_varint(1, 12345))
request_mode = c2r(7, field_varint(1, 3) + field_bytes(2, "need admin"))
confirm = c2r(8, field_varint(1, 1))
register = c2r(9)
unattended = c2r(10, field_bytes(1, "kiosk-1") + field_bytes(2, "patching"))
# A mode of -1: a 10-byte varint that re-encodes as 10 bytes; and a 5-byte one that
# prost reads as -1 too but re-encodes longer than it arrived.
negative_mode = c2r(2, field_varint(1, -1))
short_negative_mode = c2r(2, varint(1 << 3) + bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]))

# RelayToClient
profile = field_varint(1, 1) + field_bytes(2, "contoso") + field_bytes(3, "user-1") + field_bytes(4, "Ada")
device = field_bytes(1, "dev-1") + field_bytes(3, "windows") + field_varint(6, 1)
welcome = c2r(1, field_bytes(1, profile + field_bytes(11, device)) + field_bytes(2, "127.0.0.1:4433") + field_varint(3, 65536) + field_bytes(4, "0.1.0"))
created = c2r(2, field_bytes(1, "0" * 32) + field_bytes(2, "ABCDE-FGHJK") + field_varint(3, 1_750_000_000_000))
joined = c2r(3, field_bytes(1, profile) + field_varint(2, 1))
consent_request = c2r(4, field_bytes(1, "0" * 32) + field_bytes(2, profile) + field_varint(3, 2) + field_varint(5, 1_750_000_000_000))
started = c2r(5, field_bytes(1, "0" * 32) + field_varint(2, 2) + field_bytes(3, bytes([1, 2, 3, 4])) + field_varint(4, 1200) + field_bytes(6, profile))
ended = c2r(6, field_bytes(1, "0" * 32) + field_varint(2, 12) + field_bytes(3, "bye"))
error = c2r(7, field_varint(1, 9) + field_bytes(2, "no") + field_varint(3, 1))
pong = c2r(8, field_varint(1, 12345))
mode_changed = c2r(9, field_bytes(1, "0" * 32) + field_varint(2, 1) + field_varint(3, 1) + field_varint(3, 3))
registered = c2r(10, field_bytes(1, "kiosk-1"))


def write(target, name, data):
    folder = os.path.join(HERE, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def control():
    helper = [hello, create, ping, request_mode, confirm, end]
    sharer = [hello, join, consent, ping, end]
    agent = [hello, register, unattended, negative_mode, short_negative_mode]
    client = [welcome, created, joined, consent_request, started, mode_changed, pong, error, ended, registered]
    # [limit selector, chunking seed, stream...]; 255 selects the real 64 KiB limit.
    write("control_frame", "helper-whole", bytes([255, 0]) + b"".join(map(frame, helper)))
    write("control_frame", "sharer-chunked", bytes([255, 7]) + b"".join(map(frame, sharer)))
    write("control_frame", "agent-small-limit", bytes([8, 3]) + b"".join(map(frame, agent)))
    write("control_frame", "relay-to-client", bytes([255, 1]) + b"".join(map(frame, client)))
    write("control_frame", "too-large", bytes([2, 0]) + frame(welcome))
    write("control_frame", "truncated", bytes([255, 5]) + frame(hello) + frame(create)[:-3])
    write("control_frame", "not-protobuf", bytes([255, 0]) + frame(b"\xff\xff\xff"))


def data():
    # [limit selector, chunking seed, channel tag, stream...]
    sealed_like = bytes(range(8)) + bytes(range(40, 80))
    write("data_frame", "keys", bytes([255, 0, 4]) + frame(bytes(range(32))))
    write("data_frame", "screen-chunked", bytes([255, 9, 1]) + frame(sealed_like) + frame(sealed_like[::-1]))
    write("data_frame", "chat-truncated", bytes([255, 2, 3]) + frame(sealed_like)[:-5])
    write("data_frame", "input-too-large", bytes([3, 0, 2]) + frame(sealed_like))
    write("data_frame", "unknown-tag", bytes([255, 0, 0]) + frame(b"hi"))
    write("data_frame", "high-tag", bytes([255, 0, 200]) + frame(b""))


def codes():
    for name, text in [
        ("canonical", "ABCDE-FGHJK"),
        ("lower-spaced", "abcde fghjk"),
        ("lookalikes", "O1IL0-23456"),
        ("old-eight", "ABCD-EFGH"),
        ("bad-symbol", "ABCDE-FGHJU"),
        ("unicode-space", "ABCDE\u2003FGHJK"),
        ("non-ascii", "ABCDE-FGHJ\u00e9"),
        ("dashes", "-A-B-C-D-E-F-G-H-J-K-"),
    ]:
        write("session_code", name, text.encode())


def content():
    """Content profile v1 (PROTOCOL.md 8.8): `[channel selector, (u16 BE length, frame)...]`,
    selector 0 screen, 1 input, 2 chat; the frames are the worked examples of 8.8.7."""

    def framed(body):
        return struct.pack(">H", len(body)) + body

    def content_msg(number, body):
        return field_bytes(number, body)

    start = content_msg(1, field_varint(1, 1) + field_bytes(2, "rhelp/1"))
    click = content_msg(3, field_bytes(2, field_varint(2, 1)
                                          + varint(3 << 3 | 1) + struct.pack("<d", 0.5)
                                          + varint(4 << 3 | 1) + struct.pack("<d", 0.25)))
    key = content_msg(3, field_bytes(4, field_bytes(1, "KeyA") + field_varint(2, 1) + field_varint(3, 1)))
    png = bytes.fromhex("89504e470d0a1a0a")
    screen = content_msg(2, field_varint(1, 7) + field_varint(2, 1000000) + field_varint(3, 1280)
                         + field_varint(4, 720) + field_varint(5, 1) + field_bytes(6, png))
    chat = content_msg(4, field_bytes(1, "hi"))
    write("content", "input-examples", bytes([1]) + b"".join(map(framed, [start, click, key])))
    write("content", "screen-frame", bytes([0]) + framed(start) + framed(screen))
    write("content", "chat", bytes([2]) + framed(start) + framed(chat))
    write("content", "no-start", bytes([1]) + framed(click) + framed(start) + framed(start))


if __name__ == "__main__":
    control()
    data()
    codes()
    content()
