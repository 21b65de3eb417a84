"""Sizes and accuracies as a user types them, tick values, and the dashboard note's Markdown."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crest.exceptions import ConfigError
from crest.report import parse_accuracy, parse_size
from crest.report._dashboard import sweep_note
from crest.report._static import nice_log_ticks


@pytest.mark.parametrize(
    ("text", "size"),
    [("30000", 30_000), ("30KB", 30_000), ("30 kb", 30_000), ("1.5MB", 1_500_000), ("64KiB", 65_536),
     ("2MiB", 2 * 1024 * 1024), ("512B", 512), (".5KB", 500), ("1GB", 10**9)],
)
def test_sizes_use_decimal_kb_and_binary_kib(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "KB", "30XB", "-3KB", "3e4", "30 K B", "thirty"])
def test_a_bad_size_names_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match="--max-size: .* is not a size"):
        parse_size(text)


def test_accuracy_as_a_fraction_or_a_percentage() -> None:
    assert parse_accuracy("0.93") == pytest.approx(0.93)
    assert parse_accuracy("93%") == pytest.approx(0.93)
    assert parse_accuracy(" 99.5 % ".replace(" %", "%")) == pytest.approx(0.995)
    with pytest.raises(ConfigError, match="--min-accuracy: 'high' is not a number"):
        parse_accuracy("high")


def test_log_ticks_are_round_and_few() -> None:
    assert nice_log_ticks(11.5, 36.0) == [12.0, 15.0, 20.0, 25.0, 30.0]
    assert nice_log_ticks(1.0, 10_000.0) == [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10_000.0]
    assert nice_log_ticks(1.0, 1e6) == [1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0, 1e6]
    assert nice_log_ticks(5.0, 5.0) == []


def test_the_note_fences_the_yaml_so_comments_stay_comments() -> None:
    note = sweep_note("# a comment\nstudy: x   # ```trick```\n")
    assert "````yaml\n# a comment\nstudy: x   # ```trick```\n````\n" in note


def test_importing_crest_report_loads_no_plotting_library() -> None:
    code = (
        "import sys, crest.report; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'plotly', 'optuna_dashboard', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
