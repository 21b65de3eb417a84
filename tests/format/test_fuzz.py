"""Malformed input: decode, inspect and parse raise FormatError and nothing else.

Blobs are truncated, mutated at random (seeded), and rebuilt from hand-crafted headers
with valid CRCs (so the semantic checks, not the checksums, must catch the lie).
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from crest.format import FormatError, decode, encode, inspect, parse, read_header
from tests.format._corpus import BLOB, BLOBS, ORIGINAL, SMALL_BLOB, bits

PREFIX = struct.Struct("<8sIIQ")


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """The header dict and the data area of a well-formed blob."""
    _, _, _, n = PREFIX.unpack_from(blob, 0)
    header = json.loads(blob[24 : 24 + n])
    return header, blob[-(-(24 + n) // 64) * 64 :]


def build(header: Any, data: bytes, *, version: int = 1, raw_json: bytes | None = None) -> bytes:
    """A blob from a header (any JSON value) and a data area, with a valid header CRC."""
    if raw_json is None:
        raw_json = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text = raw_json
    head = PREFIX.pack(b"\x89CREST\r\n", version, zlib.crc32(text), len(text)) + text
    return head + bytes(-len(head) % 64) + data


def restamp(header: dict[str, Any], data: bytes) -> None:
    """Recompute every section CRC from the data area (after crafted section edits)."""
    for t in header["tensors"]:
        for sec in t["sections"].values():
            sec["crc32"] = zlib.crc32(data[sec["offset"] : sec["offset"] + sec["length"]])


def section(header: dict[str, Any], name: str, sec: str) -> tuple[int, int]:
    t = next(t for t in header["tensors"] if t["name"] == name)
    return t["sections"][sec]["offset"], t["sections"][sec]["length"]


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def check(blob: bytes, original: dict[str, np.ndarray] | None) -> bool:
    """Every reader raises FormatError, or the result is exactly the original tensors.

    With ``original=None`` (a crafted header may describe another valid file, e.g. a
    renamed tensor), an accepted blob must decode to what its header declares.

    Returns:
        True when the readers rejected the blob.
    """
    rejected = []
    for fn in (decode, inspect, parse):
        try:
            result = fn(blob)
        except FormatError as exc:
            assert str(exc)
            if fn is decode and "max_output_bytes" in str(exc):
                # a valid file declaring a huge (all-zero) tensor: only decode refuses it
                assert inspect(blob)["dense_bytes"] > 8 * 2**30
                return True
            rejected.append(True)
            continue
        rejected.append(False)
        if fn is parse:  # an accepted file's header reads alike on its own
            assert [t.name for t in read_header(blob).tensors] == [t.name for t in result]
        if fn is decode and original is None:
            declared = inspect(blob)["tensors"]
            assert [t["name"] for t in declared] == list(result)
            for t, arr in zip(declared, result.values()):
                assert list(arr.shape) == t["shape"] and arr.dtype.name == t["dtype"]
        elif fn is decode:
            assert list(result) == list(original)
            for k, v in original.items():
                assert result[k].shape == np.shape(v) and result[k].dtype == np.asarray(v).dtype
                assert np.array_equal(bits(result[k]), bits(np.asarray(v)))
    assert len(set(rejected)) == 1, f"readers disagree: decode/inspect/parse rejected {rejected}"
    return rejected[0]


def test_the_fixtures_are_valid() -> None:
    for blob, original in BLOBS.values():
        assert not check(blob, original)
    encodings = [t["encoding"] for t in inspect(BLOB)["tensors"]]
    assert encodings == ["sparse", "dense", "sparse", "sparse", "sparse"]
    assert inspect(BLOB)["tensors"][0]["n_chunks"] > 3


def _boundaries(blob: bytes) -> list[int]:
    header, data = split(blob)
    start = len(blob) - len(data)
    points = {24, start}
    for t in header["tensors"]:
        for sec in t["sections"].values():
            points.update({start + sec["offset"], start + sec["offset"] + sec["length"]})
    return sorted(points)


@pytest.mark.parametrize("which", list(BLOBS))
def test_every_truncation_is_rejected(which: str) -> None:
    blob, original = BLOBS[which]
    rng = np.random.default_rng(1)
    cuts = set(range(0, min(101, len(blob))))
    for b in _boundaries(blob):
        cuts.update(range(max(0, b - 3), min(len(blob), b + 4)))
    cuts.update(int(c) for c in rng.integers(0, len(blob), 300))
    cuts.update(range(len(blob) - 70, len(blob)))
    for cut in sorted(cuts):
        if cut >= len(blob):
            continue
        assert check(blob[:cut], original), f"truncation at {cut} accepted"
    # appended bytes are rejected too
    assert check(blob + bytes(64), original)
    assert check(blob + b"\x00", original)


@pytest.mark.parametrize("which", list(BLOBS))
def test_random_mutations(which: str) -> None:
    blob, original = BLOBS[which]
    rng = np.random.default_rng(2 if which == "model" else 3)
    arr = np.frombuffer(blob, np.uint8)
    accepted = 0
    for i in range(2000):
        mutated = arr.copy()
        k = 1 if i % 2 == 0 else int(rng.integers(2, 9))
        where = rng.integers(0, len(blob), k)
        mutated[where] = rng.integers(0, 256, k)
        if mutated.tobytes() == blob:
            continue
        accepted += not check(mutated.tobytes(), original)
    # every byte is covered by a CRC or must be zero padding: nothing mutated gets through
    assert accepted == 0


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _leaves(v, (*path, k))] + [path]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _leaves(v, (*path, i))] + [path]
    return [path]


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return obj


ODD_VALUES: list[Any] = [
    -1, 0, 1, 2, 3, 31, 32, 63, 64, 65, 2**31, 2**32, 2**63, 2**64 + 1, -(2**63), 10**30,
    True, False, None, 1.0, 0.5, 1e300, "x", "", "float32", "sparse", "dense", [], [0], [2**40, 2**40],
    {}, {"offset": 0}, [-1], [1.5],
]


@pytest.mark.parametrize("which", list(BLOBS))
def test_random_header_field_lies_with_valid_crc(which: str) -> None:
    blob, original = BLOBS[which]
    header, data = split(blob)
    paths = [p for p in _leaves(header) if p[:1] != ("metadata",)]
    rng = np.random.default_rng(4)
    for _ in range(1500):
        path = paths[int(rng.integers(len(paths)))]
        value = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
        crafted = _set(copy.deepcopy(header), path, copy.deepcopy(value))
        check(build(crafted, data), None)
    # dropping or adding keys anywhere
    for path in paths:
        if path and isinstance(path[-1], str):
            crafted = copy.deepcopy(header)
            parent = crafted
            for key in path[:-1]:
                parent = parent[key]
            del parent[path[-1]]
            assert check(build(crafted, data), original), f"missing {path} accepted"
            parent = crafted
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = copy.deepcopy(_get(header, path))
            parent["extra"] = 1
            assert check(build(crafted, data), original), f"extra key next to {path} accepted"


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


Craft = Callable[[dict[str, Any], bytes], tuple[Any, bytes]]


def _w(h: dict[str, Any]) -> dict[str, Any]:
    return h["tensors"][0]  # conv.weight, sparse


def _b(h: dict[str, Any]) -> dict[str, Any]:
    return h["tensors"][1]  # conv.bias, dense


def _shift_section(h: dict[str, Any], d: bytes, delta: int) -> tuple[Any, bytes]:
    _w(h)["sections"]["index"]["offset"] += delta
    return h, d


def _code_out_of_range(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    off, _ = section(h, "conv.weight", "code")
    # n_codes is 6 (5 values + zero); code_bits 3 allows 7: write code 7 into entry 0
    d = patch(d, off, bytes([d[off] | 0b111]))
    restamp(h, d)
    return h, d


def _chunk_base(row: int, value: int | None = None, delta: int = 0) -> Craft:
    def craft(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
        off, _ = section(h, "conv.weight", "chunks")
        at = off + row * 24
        base = struct.unpack_from("<Q", d, at)[0]
        new = value if value is not None else base + delta
        d = patch(d, at, struct.pack("<Q", new % 2**64))
        restamp(h, d)
        return h, d

    return craft


def _chunk_base_repeat(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    off, _ = section(h, "conv.weight", "chunks")
    d = patch(d, off + 2 * 24, d[off + 24 : off + 32])  # base of chunk 2 := base of chunk 1
    restamp(h, d)
    return h, d


def _chunk_bitoffset(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    off, _ = section(h, "conv.weight", "chunks")
    d = patch(d, off + 24 + 8, struct.pack("<Q", 8))
    restamp(h, d)
    return h, d


def _codebook_zero(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    off, _ = section(h, "conv.weight", "codebook")
    d = patch(d, off, struct.pack("<f", 1.0))
    restamp(h, d)
    return h, d


def _last_gap_too_far(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    # shrink the shape so the last entries write past the end
    _w(h)["shape"] = [40, 49]
    return h, d


def _stream_padding(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    off, length = section(h, "conv.weight", "index")
    d = patch(d, off + length - 1, b"\x80")
    restamp(h, d)
    return h, d


def _bool_two(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    t = h["tensors"][2]
    t.clear()
    t.update({"name": "mask", "dtype": "bool", "shape": [4], "encoding": "dense",
              "sections": {"data": {"offset": 0, "length": 4, "crc32": 0}}})
    h["tensors"] = [t]
    d = bytes([0, 1, 2, 1]) + bytes(60)
    restamp(h, d)
    return h, d


def _gap_between_sections(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    off, length = section(h, "conv.bias", "data")
    return h, patch(d, off + length, b"\x01")


def _set_field(path: tuple[Any, ...], value: Any) -> Craft:
    def craft(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
        return _set(h, path, value), d

    return craft


def _dup_name(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    h["tensors"][1]["name"] = "conv.weight"
    return h, d


def _huge_sparse(h: dict[str, Any], d: bytes) -> tuple[Any, bytes]:
    _w(h)["shape"] = [2**30, 2**30]
    return h, d


CRAFTED: dict[str, Craft] = {
    "dense shape lies": _set_field(("tensors", 1, "shape"), [8]),
    "dense length lies": _set_field(("tensors", 1, "sections", "data", "length"), 32),
    "dense dtype lies": _set_field(("tensors", 1, "dtype"), "float64"),
    "huge dense shape": _set_field(("tensors", 1, "shape"), [2**62, 2**62]),
    "zero dim next to a huge one": _set_field(("tensors", 4, "shape"), [0, 2**62]),
    "huge sparse dims": _set_field(("tensors", 0, "shape"), [2**31, 2**31]),
    "huge ndim": _set_field(("tensors", 1, "shape"), [1] * 100),
    "negative dim": _set_field(("tensors", 1, "shape"), [-7]),
    "bool dim": _set_field(("tensors", 1, "shape"), [True] * 7),
    "float dim": _set_field(("tensors", 1, "shape"), [7.0]),
    "shape not a list": _set_field(("tensors", 1, "shape"), 7),
    "bad dtype": _set_field(("tensors", 1, "dtype"), "float128"),
    "byteorder dtype": _set_field(("tensors", 1, "dtype"), "<f4"),
    "object dtype": _set_field(("tensors", 1, "dtype"), "object"),
    "unknown encoding": _set_field(("tensors", 1, "encoding"), "lowrank"),
    "empty name": _set_field(("tensors", 1, "name"), ""),
    "name not str": _set_field(("tensors", 1, "name"), 5),
    "duplicate names": _dup_name,
    "offset + 64": lambda h, d: _shift_section(h, d, 64),
    "offset - 64 (overlap)": lambda h, d: _shift_section(h, d, -64),
    "offset unaligned": lambda h, d: _shift_section(h, d, 1),
    "offset past end": lambda h, d: _shift_section(h, d, 10**9),
    "offset negative": _set_field(("tensors", 0, "sections", "codebook", "offset"), -64),
    "offset bool": _set_field(("tensors", 0, "sections", "codebook", "offset"), False),
    "crc too big": _set_field(("tensors", 0, "sections", "codebook", "crc32"), 2**32),
    "n_entries + 1": lambda h, d: (_set(h, ("tensors", 0, "n_entries"), _w(h)["n_entries"] + 1), d),
    "n_entries - 1": lambda h, d: (_set(h, ("tensors", 0, "n_entries"), _w(h)["n_entries"] - 1), d),
    "n_entries > numel": _set_field(("tensors", 0, "n_entries"), 2001),
    "n_entries huge": _set_field(("tensors", 0, "n_entries"), 2**60),
    "n_codes 0": _set_field(("tensors", 0, "n_codes"), 0),
    "n_codes > 2**code_bits": _set_field(("tensors", 0, "n_codes"), 9),
    "index_bits 0": _set_field(("tensors", 0, "index_bits"), 0),
    "index_bits 17": _set_field(("tensors", 0, "index_bits"), 17),
    "code_bits bool": _set_field(("tensors", 0, "code_bits"), True),
    "chunk_entries not pow2": _set_field(("tensors", 0, "chunk_entries"), 48),
    "chunk_entries 16": _set_field(("tensors", 0, "chunk_entries"), 16),
    "chunk_entries 64": _set_field(("tensors", 0, "chunk_entries"), 64),
    "index_bits lies": _set_field(("tensors", 0, "index_bits"), 2),
    "code out of range": _code_out_of_range,
    "chunk base equal to previous": _chunk_base_repeat,
    "chunk base + 1": _chunk_base(1, delta=1),
    "chunk base - 1": _chunk_base(3, delta=-1),
    "chunk 0 base 5": _chunk_base(0, value=5),
    "chunk base huge": _chunk_base(1, value=2**64 - 1),
    "chunk base past numel": _chunk_base(1, value=2001),
    "chunk bit offset": _chunk_bitoffset,
    "codebook[0] nonzero": _codebook_zero,
    "positions past the end": _last_gap_too_far,
    "stream padding bits": _stream_padding,
    "dense bool 2": _bool_two,
    "padding between sections": _gap_between_sections,
    "format name": _set_field(("format",), "safetensors"),
    "header version 2": _set_field(("version",), 2),
    "version bool": _set_field(("version",), True),
    "metadata list": _set_field(("metadata",), []),
    "tensors dict": _set_field(("tensors",), {}),
    "header a list": lambda h, d: ([h], d),
    "sections extra": _set_field(("tensors", 1, "sections", "more"), {"offset": 0, "length": 0, "crc32": 0}),
    "section fields extra": _set_field(("tensors", 1, "sections", "data", "align"), 64),
    "sparse fields on dense": _set_field(("tensors", 1, "index_bits"), 4),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_header_is_rejected(name: str) -> None:
    header, data = split(BLOB)
    crafted, new_data = CRAFTED[name](copy.deepcopy(header), data)
    blob = build(crafted, new_data)
    assert check(blob, ORIGINAL), f"{name}: accepted"


def test_huge_declared_output_needs_max_output_bytes() -> None:
    header, data = split(BLOB)
    crafted, new_data = _huge_sparse(copy.deepcopy(header), data)
    blob = build(crafted, new_data)
    with pytest.raises(FormatError, match="max_output_bytes"):
        decode(blob)
    huge_zero = encode({"z": np.zeros(10, np.float32)})
    h, d = split(huge_zero)
    h["tensors"][0]["shape"] = [2**29, 2**29]
    blob = build(h, d)
    assert inspect(blob)["tensors"][0]["dense_bytes"] == 4 * 2**58  # a valid, all-zero file
    with pytest.raises(FormatError, match="max_output_bytes"):
        decode(blob)


@pytest.mark.parametrize(
    ("label", "blob"),
    [
        ("empty", b""),
        ("magic only", b"\x89CREST\r\n"),
        ("wrong magic", b"\x89PNG\r\n\x1a\n" + bytes(100)),
        ("version 2", build({}, b"", version=2)),
        ("version 0", build({}, b"", version=0)),
        ("bad json", build(None, b"", raw_json=b"{not json")),
        ("not utf-8", build(None, b"", raw_json=b'{"format": "\xff\xfe"}')),
        ("nan", build(None, b"", raw_json=b'{"format":"crest","version":1,"metadata":{"a":NaN},"tensors":[]}')),
        ("inf float", build(None, b"", raw_json=b'{"format":"crest","version":1,"metadata":{"a":1e999},"tensors":[]}')),
        ("duplicate key", build(None, b"", raw_json=b'{"format":"crest","format":"crest","version":1,"metadata":{},"tensors":[]}')),
        ("deep nesting", build(None, b"", raw_json=b'{"format":"crest","version":1,"metadata":' + b"[" * 100_000 + b"]" * 100_000 + b',"tensors":[]}')),
        ("nesting 70", build(None, b"", raw_json=b'{"format":"crest","version":1,"metadata":{"a":' + b"[" * 70 + b"]" * 70 + b'},"tensors":[]}')),
        ("huge int", build(None, b"", raw_json=b'{"format":"crest","version":1,"metadata":{},"tensors":[' + b"9" * 5000 + b"]}")),
        ("header a string", build("crest", b"")),
    ],
)
def test_bad_prefix_and_json(label: str, blob: bytes) -> None:
    for fn in (decode, inspect, parse, read_header):
        with pytest.raises(FormatError):
            fn(blob)


def test_header_length_lies() -> None:
    header, data = split(SMALL_BLOB)
    good = build(header, data)
    assert good == SMALL_BLOB
    for n in [len(good), len(good) - 23, 2**31, 2**63, 2**64 - 1, 64 * 2**20 + 1]:
        blob = bytearray(good)
        struct.pack_into("<Q", blob, 16, n)
        with pytest.raises(FormatError):
            decode(bytes(blob))
    blob = bytearray(good)
    struct.pack_into("<I", blob, 12, 0)  # header CRC
    with pytest.raises(FormatError, match="CRC"):
        decode(bytes(blob))


def test_section_crc_mismatch_names_the_section() -> None:
    header, data = split(SMALL_BLOB)
    off, _ = section(header, "x", "code")
    blob = build(header, patch(data, off, bytes([data[off] ^ 1])))
    with pytest.raises(FormatError, match="'code'.*CRC"):
        decode(blob)


def test_valid_minimal_files() -> None:
    assert decode(build({"format": "crest", "version": 1, "metadata": {}, "tensors": []}, b"")) == {}
    assert decode(encode({})) == {}


@pytest.mark.parametrize("chunk", [32767, 32768, 32769])
def test_chunk_base_lies_across_decode_batches(chunk: int) -> None:
    # > 2**20 entries: the reference decoder works in batches of 2**20 entries, and a
    # chunk-base lie at or next to a batch boundary must still be caught
    x = np.zeros(2_400_000, np.int8)
    x[::2] = 1
    x[::6] = 2  # entries (gap 1, code) after the first: chunk bases step by 64
    blob = encode({"x": x}, index_bits=1, code_bits=2, chunk_entries=32)
    header, data = split(blob)
    assert header["tensors"][0]["n_entries"] > 2**20
    off, _ = section(header, "x", "chunks")
    at = off + chunk * 24
    base = struct.unpack_from("<Q", data, at)[0]
    assert base == chunk * 64 - 1  # entry i writes position 2i
    crafted = patch(data, at, struct.pack("<Q", base + 1))
    restamp(header, crafted)
    for fn in (decode, inspect, parse):
        with pytest.raises(FormatError, match=f"chunk {chunk}"):
            fn(build(header, crafted))
    assert np.array_equal(decode(blob)["x"], x)
