"""``read_header``: the header alone, validated, without reading a section or an entry."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from crest.format import (
    DEFAULT_CHUNK_ENTRIES,
    FORMAT_VERSION,
    FormatError,
    Header,
    TensorInfo,
    _bits,
    _codec,
    _container,
    encode,
    inspect,
    parse,
    read_header,
)
from tests.format._corpus import BLOB, BLOBS, sparse_array


def _large() -> bytes:
    rng = np.random.default_rng(7)
    w = sparse_array(rng, (2048, 2048), 0.1, 31, "float32")
    return encode({"fc.weight": w, "fc.bias": rng.standard_normal(2048).astype(np.float32)}, metadata={"k": [1]})


LARGE = _large()


def _header_end(blob: bytes) -> int:
    return _container.PREFIX_BYTES + int(struct.unpack_from("<Q", blob, 16)[0])


@pytest.mark.parametrize("which", list(BLOBS))
def test_header_agrees_with_inspect_and_parse(which: str) -> None:
    blob, _ = BLOBS[which]
    header = read_header(blob)
    full = inspect(blob)
    assert isinstance(header, Header) and header.version == FORMAT_VERSION == full["version"]
    assert header.metadata == full["metadata"]
    assert header.dense_bytes == full["dense_bytes"]
    fields = ("name", "dtype", "shape", "encoding", "index_bits", "code_bits", "n_entries", "n_codes", "chunk_entries")
    for info, t in zip(header.tensors, parse(blob), strict=True):
        assert isinstance(info, TensorInfo) and not isinstance(info, type(t))
        assert [getattr(info, f) for f in fields] == [getattr(t, f) for f in fields]
        assert (info.numel, info.nbytes) == (t.numel, t.nbytes)


def test_default_chunk_size_is_the_named_constant() -> None:
    info = read_header(encode({"x": np.array([0, 1, 0, 2], np.int8)})).tensors[0]
    assert info.encoding == "sparse" and info.chunk_entries == DEFAULT_CHUNK_ENTRIES == 1024


def test_bytes_likes_and_a_prefix_holding_the_header_are_read() -> None:
    want = read_header(LARGE)
    for blob in (bytearray(LARGE), memoryview(LARGE), memoryview(bytearray(LARGE)), memoryview(LARGE)[: _header_end(LARGE)]):
        assert read_header(blob) == want
    with pytest.raises(TypeError, match="bytes"):
        read_header("not bytes")  # type: ignore[arg-type]


def test_sections_are_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read_header touched the sections or the entries")

    monkeypatch.setattr(_container, "check_sections", refuse)
    monkeypatch.setattr(_bits, "unpack", refuse)
    monkeypatch.setattr(_codec, "_iter_entries", refuse)
    header = read_header(LARGE)
    assert [t.name for t in header.tensors] == ["fc.weight", "fc.bias"]
    assert header.tensors[0].n_entries > 400_000  # a large stream it did not walk


def test_truncated_or_corrupt_sections_do_not_matter() -> None:
    want = read_header(LARGE)
    end = _header_end(LARGE)
    corrupt = bytearray(LARGE)
    corrupt[-100:] = bytes(range(100))  # the last section's bytes and the padding after it
    cases = {
        "header only": LARGE[:end],
        "half the data": LARGE[: len(LARGE) // 2],
        "corrupt data": bytes(corrupt),
        "padding after the header": LARGE[:end] + b"\x01" + LARGE[end + 1 :],
    }
    for label, blob in cases.items():
        assert read_header(blob) == want, label
        with pytest.raises(FormatError):
            inspect(blob)


def _patch(blob: bytes, offset: int, new: bytes) -> bytes:
    return blob[:offset] + new + blob[offset + len(new) :]


@pytest.mark.parametrize(
    ("label", "blob", "needle"),
    [
        ("empty", b"", "truncated"),
        ("prefix cut", BLOB[:20], "truncated"),
        ("wrong magic", _patch(BLOB, 0, b"\x89PNG\r\n\x1a\n"), "magic"),
        ("wrong magic, short", b"GIF89a", "magic"),
        ("version 2", _patch(BLOB, 8, struct.pack("<I", 2)), "version"),
        ("header cut", BLOB[: _header_end(BLOB) - 1], "truncated"),
        ("header length huge", _patch(BLOB, 16, struct.pack("<Q", 2**63)), "exceeds"),
        ("header CRC", _patch(BLOB, 12, struct.pack("<I", 0)), "CRC"),
        ("header byte flipped", _patch(BLOB, 30, b"\x00"), "CRC"),
    ],
)
def test_bad_prefix_or_header_is_refused(label: str, blob: bytes, needle: str) -> None:
    with pytest.raises(FormatError, match=needle):
        read_header(blob)
