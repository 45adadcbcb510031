"""A minimal zip reader for torch checkpoints: the central directory and single members.

Python's zipfile builds a rich ZipInfo per member, which costs a third of a second for a
checkpoint of 50,000 tensors. torch needs far less: names, sizes, offsets, and one member (data.pkl)
read whole. This reader parses exactly that, including zip64, and refuses what would make two
readers disagree (a member whose local header does not match the directory).
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, NamedTuple

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_SEARCH = 65_536 + _EOCD.size


class ZipError(Exception):
    pass


class Member(NamedTuple):
    name: str
    method: int  # 0 stored, 8 deflated
    compressed_size: int
    file_size: int
    header_offset: int


def _zip64_extra(extra: bytes, sizes: list[int]) -> list[int]:
    """Replace the 0xFFFFFFFF fields of (file_size, compressed_size, offset) from a zip64 extra."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        if tag == 1:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
            return [next(values, s) if s == 0xFFFFFFFF else s for s in sizes]
        pos += 4 + length
    return sizes


def read_directory(handle: BinaryIO, size: int) -> tuple[list[Member], int]:
    """The members of the archive, and where its central directory starts (every member's data
    must lie before it)."""
    start = max(0, size - _SEARCH)
    handle.seek(start)
    tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise ZipError("no end-of-directory record (the file may be truncated)")
    _, _disk, _cd_disk, _disk_entries, entries, cd_size, cd_offset, _comment = _EOCD.unpack_from(
        tail, at
    )
    if entries == 0xFFFF or cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:
        locator_at = at - _EOCD64_LOCATOR.size
        if locator_at < 0 or tail[locator_at : locator_at + 4] != b"PK\x06\x07":
            raise ZipError("zip64 archive without its locator")
        _, _, eocd64_offset, _ = _EOCD64_LOCATOR.unpack_from(tail, locator_at)
        handle.seek(eocd64_offset)
        record = handle.read(_EOCD64.size)
        if len(record) < _EOCD64.size or record[:4] != b"PK\x06\x06":
            raise ZipError("zip64 end-of-directory record is missing")
        fields = _EOCD64.unpack(record)
        entries, cd_size, cd_offset = fields[7], fields[8], fields[9]
    if cd_offset + cd_size > size:
        raise ZipError("the central directory lies past the end of the file (truncated?)")
    handle.seek(cd_offset)
    directory = handle.read(cd_size)
    members: list[Member] = []
    pos = 0
    unpack = _CENTRAL.unpack_from
    header_size = _CENTRAL.size
    for _ in range(entries):
        if pos + header_size > len(directory) or directory[pos : pos + 4] != b"PK\x01\x02":
            raise ZipError("damaged central directory")
        fields = unpack(directory, pos)
        method, compressed, file_size = fields[6], fields[10], fields[11]
        name_len, extra_len, comment_len = fields[12], fields[13], fields[14]
        offset = fields[18]
        name_at = pos + header_size
        raw_name = directory[name_at : name_at + name_len]
        if 0xFFFFFFFF in (compressed, file_size, offset):
            extra = directory[name_at + name_len : name_at + name_len + extra_len]
            file_size, compressed, offset = _zip64_extra(extra, [file_size, compressed, offset])
        flags = fields[5]
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        members.append(Member(name, method, compressed, file_size, offset))
        pos = name_at + name_len + extra_len + comment_len
    return members, cd_offset


def read_member(handle: BinaryIO, member: Member, limit: int) -> bytes:
    """The member's content, at most `limit` bytes (ZipError past it)."""
    if member.file_size > limit:
        raise ZipError(
            f"{member.name} claims {member.file_size:,} bytes, over the {limit:,}-byte limit"
        )
    handle.seek(member.header_offset)
    header = handle.read(_LOCAL.size)
    if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
        raise ZipError(f"{member.name}: its local header is missing")
    fields = _LOCAL.unpack(header)
    name_len, extra_len = fields[10], fields[11]
    local_name = handle.read(name_len)
    if local_name.decode("utf-8", "replace") != member.name:
        raise ZipError(f"{member.name}: its local header names another member")
    handle.seek(member.header_offset + _LOCAL.size + name_len + extra_len)
    if member.method == 0:
        data = handle.read(min(member.compressed_size, limit + 1))
        if len(data) < min(member.compressed_size, limit + 1):
            raise ZipError(f"{member.name}: the file ends inside it (truncated?)")
    elif member.method == 8:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(
                handle.read(min(member.compressed_size, limit + 1)), limit + 1
            )
        except zlib.error as exc:
            raise ZipError(f"{member.name}: damaged compressed data ({exc})") from None
    else:
        raise ZipError(f"{member.name}: compression method {member.method} is not supported")
    if len(data) > limit:
        raise ZipError(f"{member.name} inflates past the {limit:,}-byte limit")
    return data
