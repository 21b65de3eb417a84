"""``crest.gpu`` imports and round-trips with only NumPy and the standard library."""

from __future__ import annotations

from tests.format._isolation import REPO, heavy_imports, run_blocked


def test_crest_gpu_imports_without_heavy_dependencies() -> None:
    out = run_blocked(
        """
        import numpy as np
        import crest.format
        import crest.gpu
        from crest.gpu import decode, encode, inspect, parse

        w = np.zeros((64, 64), np.float32)
        w[::3, ::5] = 0.5
        b = np.arange(8, dtype=np.float16)
        blob = encode({"w": w, "b": b}, index_bits=4, code_bits=5, metadata={"k": 1})
        out = decode(blob)
        assert out["w"].tobytes() == w.tobytes() and out["b"].tobytes() == b.tobytes()
        assert [t["encoding"] for t in inspect(blob)["tensors"]] == ["sparse", "sparse"]
        assert len(parse(blob)) == 2
        # crest.gpu re-exports the whole format (its decode is the device-aware one)
        missing = set(crest.format.__all__) - set(crest.gpu.__all__)
        assert not missing, missing
        for name in set(crest.format.__all__) - {"decode"}:
            assert getattr(crest.gpu, name) is getattr(crest.format, name), name
        # the GPU-side modules import too, and fail late with a clear reason
        import crest.gpu._api, crest.gpu._cuda, crest.gpu._xp  # noqa: E401
        from crest.gpu import DeviceTensor, GpuUnavailableError, sparse_matmul, to_device  # noqa: F401
        from crest.gpu._xp import decode_sparse_xp
        from crest.exceptions import GpuUnavailableError as Gue
        assert GpuUnavailableError is Gue
        probe = crest.gpu.probe_cupy()
        assert probe.module is None and "is not installed" in probe.reason, probe
        t = parse(blob)[0]
        assert decode_sparse_xp(t, np).tobytes() == w.tobytes()
        x = np.ones(64, np.float32)
        assert np.allclose(sparse_matmul(t, x), w @ x)
        assert isinstance(decode(blob, device="auto")["w"], np.ndarray)
        for device in ("cuda", "torch:cuda"):
            try:
                decode(blob, device=device)
            except GpuUnavailableError as e:
                assert "is not installed" in str(e), e
            else:
                raise SystemExit("cuda decode without CuPy did not raise")
        try:
            crest.gpu.CompressedLinear
        except ImportError:
            pass
        else:
            raise SystemExit("CompressedLinear loaded without torch")
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker does not work")
        loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
        assert not loaded, loaded
        print("OK", sorted(m for m in sys.modules if m.startswith("crest")))
        """
    )
    assert out.startswith("OK")
    assert "crest.gpu" in out


def test_library_modules_do_not_mention_heavy_imports() -> None:
    assert heavy_imports(REPO / "crest" / "gpu") == []


def test_the_node_check_imports_without_the_driver_s_dependencies() -> None:
    """The decoder check's Ray task imports ``crest.orchestrator._nodecheck``: the package
    imports lazily, so the check needs no Optuna, SQLAlchemy, torch or Ray of its own."""
    out = run_blocked(
        """
        from crest.orchestrator._nodecheck import check_node

        row = check_node([], node_id="n")
        assert row["passed"] and row["mode"] == "cpu", row
        loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
        assert not loaded, loaded
        print("OK", sorted(m for m in sys.modules if m.startswith("crest.orchestrator")))
        """
    )
    assert out.startswith("OK") and "crest.orchestrator._driver" not in out
