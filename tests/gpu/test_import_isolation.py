"""``crest.gpu`` imports and round-trips with only NumPy and the standard library."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ["ray", "optuna", "sqlalchemy", "pydantic", "cupy", "torch", "alembic", "typer"]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = set(sys.argv[1].split(","))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]

    import numpy as np
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
    # the GPU-side modules import too, and fail late with a clear reason
    import crest.gpu._api, crest.gpu._cuda, crest.gpu._xp  # noqa: E401
    from crest.gpu import DeviceTensor, GpuUnavailableError, sparse_matmul, to_device  # noqa: F401
    from crest.gpu._xp import decode_sparse_xp
    from crest.exceptions import GpuUnavailableError as Gue
    assert GpuUnavailableError is Gue
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


def test_crest_gpu_imports_without_heavy_dependencies() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(BLOCKED)],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK")
    assert "crest.gpu" in proc.stdout


def test_library_modules_do_not_mention_heavy_imports() -> None:
    for path in (REPO / "crest" / "gpu").glob("*.py"):
        text = path.read_text()
        for name in BLOCKED:
            assert f"import {name}" not in text and f"from {name}" not in text, (path, name)
        assert "pickle" not in text, path
