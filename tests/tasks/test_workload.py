"""Built-in and user workloads resolve; bad names give a WorkloadError naming the problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from crest.exceptions import WorkloadError
from crest.tasks import Workload, builtin_workloads, get_workload


def test_builtins_are_listed() -> None:
    assert {"lenet300-mnist", "lenet5-mnist", "vgg-mnist", "tiny-digits"} <= set(builtin_workloads())


@pytest.mark.parametrize(
    ("name", "n_params", "n_train", "n_test", "shape"),
    [
        ("lenet300-mnist", 266_610, 4000, 1000, (784,)),
        ("lenet5-mnist", 431_080, 4000, 1000, (1, 28, 28)),
        ("vgg-mnist", 167_818, 4000, 1000, (1, 28, 28)),
        ("tiny-digits", 2_410, 1397, 400, (64,)),
    ],
)
def test_builtin_shapes(name: str, n_params: int, n_train: int, n_test: int, shape: tuple[int, ...]) -> None:
    wl = get_workload(name)
    model = wl.build_model()
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert len(wl.train_set) == n_train and len(wl.test_set) == n_test
    x, y = wl.train_set[0]
    assert tuple(x.shape) == shape and y.dtype == torch.int64
    out = model(torch.stack([wl.test_set[i][0] for i in range(3)]))
    assert tuple(out.shape) == (3, 10)
    labels = torch.stack([wl.test_set[i][1] for i in range(len(wl.test_set))])
    assert len(labels.unique()) == 10, "the split is shuffled: every class is in the test set"


def test_user_workload_from_module_function(tmp_path: Path) -> None:
    (tmp_path / "my_wl_mod.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import TensorDataset
            from crest.tasks import Workload

            def make():
                x = torch.randn(64, 4)
                y = (x[:, 0] > 0).long()
                return Workload(name="mine", build_model=lambda: torch.nn.Linear(4, 2),
                                train_set=TensorDataset(x, y), test_set=TensorDataset(x, y),
                                baseline_epochs=1, batch_size=16, lr=0.01)

            def wrong():
                return 42
            """
        )
    )
    wl = get_workload("my_wl_mod:make", search_path=[str(tmp_path)])
    assert isinstance(wl, Workload) and wl.name == "mine"
    with pytest.raises(WorkloadError, match="returned int"):
        get_workload("my_wl_mod:wrong", search_path=[str(tmp_path)])
    with pytest.raises(WorkloadError, match="no function 'nothing'"):
        get_workload("my_wl_mod:nothing", search_path=[str(tmp_path)])
    with pytest.raises(WorkloadError, match="cannot import module"):
        get_workload("no_such_module_xyz:make")
    with pytest.raises(WorkloadError, match="neither a built-in"):
        get_workload("lenet")
