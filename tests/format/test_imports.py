"""``crest.format`` imports with NumPy alone, and no crest module takes part in an import cycle."""

from __future__ import annotations

from tests.format._isolation import REPO, crest_modules, cycles, heavy_imports, import_graph, run_blocked


def test_crest_format_imports_and_round_trips_without_heavy_dependencies() -> None:
    out = run_blocked(
        """
        import numpy as np
        import crest.format
        from crest.format import decode, encode, from_transport, inspect, parse, read_header, to_transport

        w = np.zeros((64, 64), np.float32)
        w[::3, ::5] = 0.5
        blob = encode({"w": w, "b": np.arange(8, dtype=np.float16)}, index_bits=4, code_bits=5, metadata={"k": 1})
        assert decode(blob)["w"].tobytes() == w.tobytes()
        assert [t.encoding for t in read_header(blob).tensors] == ["sparse", "sparse"]
        assert inspect(blob)["transport_bytes"] == len(to_transport(blob))
        assert from_transport(to_transport(blob)) == blob and len(parse(blob)) == 2
        loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
        assert not loaded, loaded
        assert "crest.gpu" not in sys.modules, "crest.format must not need crest.gpu"
        print("OK", sorted(m for m in sys.modules if m.startswith("crest")))
        """
    )
    assert out.startswith("OK") and "crest.format._huffman" in out


def test_format_modules_do_not_mention_heavy_imports() -> None:
    assert heavy_imports(REPO / "crest" / "format") == []


def test_no_crest_module_takes_part_in_an_import_cycle() -> None:
    graph = import_graph()
    found = cycles(graph)
    files = crest_modules()
    lines = [
        f"{a} -> {b} ({files[a].relative_to(REPO)}:{graph[a][b]})"
        for component in found
        for a in component
        for b in component
        if b in graph[a]
    ]
    assert not found, "import cycles among crest modules:\n" + "\n".join(lines)


def test_the_import_graph_sees_lazy_and_relative_imports() -> None:
    graph = import_graph()
    assert "crest.format._codec" in graph["crest.format._huffman"]  # from crest.format import _codec
    assert "crest.gpu._torch" in graph["crest.gpu"]  # inside __getattr__
    assert "crest.format" in graph["crest.storage._store"]  # inside a method
    assert "crest.format._huffman" not in graph["crest.format._codec"]
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}, "e": {"e": 1}}) == [
        ["a", "b", "c"],
        ["e"],
    ]
