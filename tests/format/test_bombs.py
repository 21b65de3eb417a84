"""Malformed input is cheap to refuse: small files declaring huge outputs fail in a fresh
interpreter within generous bounds of time and memory, long before what they declare."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from crest.exceptions import FormatError
from crest.format import _container, _huffman, encode, from_transport, read_header, to_transport
from tests.format import _bombs

_FORMAT = "from crest.format import decode, from_transport, read_header, parse"


def _refused(c: _bombs.Cost, what: str) -> None:
    assert c.error == "FormatError", (what, c)
    assert c.cheap(), f"{what}: refusing took {c.seconds:.2f} s and {c.rss_growth_mb:.0f} MB more RSS ({c.message})"


def test_a_tiny_transport_declaring_512_mib_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    bomb = _bombs.constant_transport()
    assert len(bomb.data) < 400 and bomb.file_bytes > 512 * 2**20
    c = _bombs.cost(_FORMAT, "from_transport(DATA)", data=bomb.data, tmp_path=tmp_path)
    _refused(c, "constant-stream transport")
    assert "max_output_bytes" in c.message


def test_the_default_transport_cap_is_what_the_input_justifies(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.ones(1_000_000, bool)  # two constant streams: a tiny transport, a 250 kB file
    blob = encode({"x": x}, index_bits=1, code_bits=1)
    tr = to_transport(blob)
    assert from_transport(tr) == blob  # within the 16 MiB allowance
    assert _huffman.transport_output_cap(len(tr)) == 16 * 2**20
    assert _huffman.transport_output_cap(10**9) == 8 * 2**30
    monkeypatch.setattr(_huffman, "TRANSPORT_ALLOWANCE", 0)  # only 64 bytes per transport byte now
    with pytest.raises(FormatError, match="pass max_output_bytes"):
        from_transport(tr)
    assert from_transport(tr, max_output_bytes=len(blob)) == blob  # the caller opts in


def test_huffman_streams_claiming_more_symbols_than_their_bits_hold(tmp_path: Path) -> None:
    n = 1_000_000  # a 2.5 MB crest file: within the cap, so the stream record itself must be refused
    sections, pos = {}, 0
    for name, length in (("codebook", 8), ("index", (n * 10 + 63) // 64 * 8), ("code", (n * 10 + 63) // 64 * 8),
                         ("chunks", -(-n // 1024) * 24)):
        sections[name] = {"offset": _container.align(pos), "length": length, "crc32": 0}
        pos = _container.align(pos) + length
    entry = {"name": "w", "dtype": "float32", "shape": [n], "encoding": "sparse", "index_bits": 10, "code_bits": 10,
             "n_entries": n, "n_codes": 2, "chunk_entries": 1024, "sections": sections}
    header = json.dumps({"format": "crest", "version": 1, "metadata": {}, "tensors": [entry]},
                        separators=(",", ":")).encode()
    file_bytes = _container.align(24 + len(header)) + _container.align(pos)
    # a two-symbol dense table (lengths 1, 1) and a payload of 8 bits for a million symbols
    record = bytes([_huffman.MODE_HUFFMAN_DENSE]) + struct.pack("<H", 1) + _huffman._fixed_bytes(np.array([1, 1]), 5)
    short = record + struct.pack("<Q", 8) + bytes(-(-((n // 1024) * 11) // 8)) + b"\x55"
    honest_count = record + struct.pack("<Q", n) + bytes(-(-((n // 1024) * 11) // 8)) + b"\x55"  # bits missing
    body = np.array([0, 1], np.float32).tobytes()
    for label, stream in (("payload shorter than the symbols", short), ("payload bytes missing", honest_count)):
        data = _bombs.transport(header, body + stream + stream, file_bytes, b"\0" * 32)
        _refused(_bombs.cost(_FORMAT, "from_transport(DATA)", data=data, tmp_path=tmp_path), label)


def test_a_huge_dense_tensor_over_a_tiny_section_is_refused(tmp_path: Path) -> None:
    blob = _bombs.huge_dense_artifact(2**28)
    assert len(blob) < 1000 and read_header(blob).dense_bytes == 2**30
    for call in ("decode(DATA)", "parse(DATA)"):
        _refused(_bombs.cost(_FORMAT, call, data=blob, tmp_path=tmp_path), call)


@pytest.mark.parametrize("count", [10**6, 60_000])
def test_a_header_claiming_very_many_tensors_is_refused(tmp_path: Path, count: int) -> None:
    """10**6 tensors overflow the header limit; 60,000 fit in it but exceed the tensor limit."""
    blob = _bombs.many_tensors_header(count)
    for call in ("read_header(DATA)", "decode(DATA)"):
        _refused(_bombs.cost(_FORMAT, call, data=blob, tmp_path=tmp_path), f"{count} tensors, {call}")
    with pytest.raises(FormatError, match="limit"):
        read_header(blob)


def test_a_transport_with_a_huge_deflated_header_is_refused(tmp_path: Path) -> None:
    header = _container.raw_header(_bombs.many_tensors_header(60_000))  # ~7 MB that deflates to little
    data = _bombs.transport(header, b"", 24 + len(header) + 64 * 60_000, b"\0" * 32)
    assert len(data) < 1_000_000
    _refused(_bombs.cost(_FORMAT, "from_transport(DATA)", data=data, tmp_path=tmp_path), "deflated header")


def test_encode_refuses_more_tensors_than_a_reader_takes() -> None:
    tensors = {f"t{i}": np.zeros(1, np.float32) for i in range(_container.MAX_TENSORS + 1)}
    with pytest.raises(ValueError, match="at most"):
        encode(tensors)
