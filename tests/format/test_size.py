"""The fixed-width sparse form reaches Deep Compression's size on an fc6-sized layer."""

from __future__ import annotations

import numpy as np

from crest.format import decode, encode, inspect, parse


def test_fc6_layer_size_and_roundtrip() -> None:
    rows, cols = 9216, 4096
    rng = np.random.default_rng(2024)
    w = np.zeros(rows * cols, np.float32)
    nz = rng.random(w.size) < 0.09
    values = np.unique(rng.standard_normal(64).astype(np.float32))[:31]
    assert values.shape[0] == 31 and not (values == 0).any()
    w[nz] = values[rng.integers(0, 31, int(nz.sum()))]
    w = w.reshape(rows, cols)

    blob = encode({"fc6.weight": w}, index_bits=4, code_bits=5)
    (t,) = parse(blob)
    assert t.encoding == "sparse" and t.n_codes == 32
    n_entries = t.n_entries or 0
    # entries = nonzeros + fillers: each gap g needs g // 16 fillers
    pos = np.flatnonzero(w.reshape(-1))
    gaps = np.diff(pos, prepend=-1) - 1
    assert n_entries == pos.shape[0] + int((gaps // 16).sum())
    floor = n_entries * 9 / 8
    dense = w.nbytes  # 151 MB of fp32
    info = inspect(blob)
    assert info["file_bytes"] == len(blob)
    assert len(blob) <= 1.08 * floor, (len(blob), floor)
    assert dense / len(blob) >= 28, dense / len(blob)
    out = decode(blob)["fc6.weight"]
    assert out.shape == (rows, cols) and out.dtype == np.float32
    assert np.array_equal(out.view(np.uint32), w.view(np.uint32))
