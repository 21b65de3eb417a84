"""Per-layer k-means weight sharing with linear initialisation (Deep Compression)."""

from __future__ import annotations

import numpy as np

__all__ = ["kmeans_1d", "share_weights", "cluster_weights"]


def kmeans_1d(
    values: np.ndarray, k: int, *, iterations: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars, centroids initialised linearly over [min, max].

    Args:
        values: 1-D float array (n,).
        k: number of clusters (>= 1).
        iterations: at most this many Lloyd steps (stops early when stable).

    Returns:
        (centroids [k'] float64 sorted, labels [n] int64) with k' <= k: empty
        clusters are dropped, so every centroid is used.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    lo, hi = float(x.min()), float(x.max())
    centroids = np.linspace(lo, hi, num=max(k, 1))
    order = np.argsort(x, kind="stable")
    xs = x[order]
    csum = np.concatenate([[0.0], np.cumsum(xs)])
    labels_sorted = np.zeros(x.size, dtype=np.int64)
    for _ in range(iterations):
        # sorted data: each cluster is a contiguous run; boundaries at centroid midpoints
        mids = (centroids[1:] + centroids[:-1]) / 2
        bounds = np.searchsorted(xs, mids, side="right")
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [x.size]])
        counts = ends - starts
        sums = csum[ends] - csum[starts]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(new, centroids):
            break
        centroids = np.sort(new)
    mids = (centroids[1:] + centroids[:-1]) / 2
    labels_sorted = np.searchsorted(mids, xs, side="left")
    used = np.unique(labels_sorted)
    remap = np.full(len(centroids), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    labels = np.empty(x.size, dtype=np.int64)
    labels[order] = remap[labels_sorted]
    return centroids[used], labels


def cluster_weights(
    weight: np.ndarray, bits: int, *, iterations: int = 25
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means weight sharing with its codebook: at most ``2**bits - 1`` nonzero values.

    Args:
        weight: float array of any shape.
        bits: code width, 1..16.
        iterations: Lloyd steps at most.

    Returns:
        (shared float32 array of ``weight``'s shape, labels int64 of the same shape
        with 0 for a zero weight and ``j >= 1`` for ``codebook[j]``, codebook float32
        [k + 1] with ``codebook[0] == 0`` and no other zero).
    """
    w = np.asarray(weight, dtype=np.float32)
    labels = np.zeros(w.shape, dtype=np.int64)
    nz = w != 0
    if not nz.any():
        return np.zeros_like(w), labels, np.zeros(1, dtype=np.float32)
    centroids, lab = kmeans_1d(w[nz], (1 << bits) - 1, iterations=iterations)
    shared = centroids.astype(np.float32)
    # a centroid that rounds to 0.0 would merge with the pruned weights; nudge it
    tiny = np.float32(np.finfo(np.float32).tiny)
    shared[shared == 0] = tiny
    codebook = np.concatenate([np.zeros(1, dtype=np.float32), shared])
    labels[nz] = lab + 1
    return codebook[labels], labels, codebook


def share_weights(weight: np.ndarray, bits: int, *, iterations: int = 25) -> np.ndarray:
    """Replace a layer's nonzero weights by at most ``2**bits - 1`` shared values.

    Zeros (pruned weights) stay zero; the shared values are float32 k-means centroids,
    none of them zero, so the layer encodes with ``code_bits = bits`` (code 0 is zero).

    Args:
        weight: float array of any shape.
        bits: code width, 1..16.

    Returns:
        float32 array of ``weight``'s shape.
    """
    return cluster_weights(weight, bits, iterations=iterations)[0]
