"""Shared fixtures: a tiny MLP and the tiny UNet, both with their inputs, and helpers to perturb adapters.

Offline by construction: the environment is set before diffusers, transformers or open_clip are imported.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
import torch
from torch import nn

from bora_diffusion.adapters import available, get
from bora_diffusion.inject import wrappers

# scripts/test.sh runs two pytest-xdist workers. Each gets its own data folder (read when the embedded default is
# first built, not at import), so that two workers never build it into one folder at the same time.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER and "BORA_DIFFUSION_HOME" in os.environ:
    os.environ["BORA_DIFFUSION_HOME"] = os.path.join(os.environ["BORA_DIFFUSION_HOME"], WORKER)

METHODS = available()
MLP_TARGETS = (r"^\d+$",)  # every Linear of an nn.Sequential


def pytest_collection_modifyitems(config, items):
    """The slow end-to-end tests first (a stable sort keeps the rest in file order): under scripts/test.sh's two
    workers (`--dist loadfile --no-loadscope-reorder`) they start at once and the rest of the suite runs beside
    them, instead of one of them starting last and running alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def end_to_end_threads() -> int:
    """Threads for an end-to-end training run: both cores, or one when another xdist worker has the other."""
    return 1 if WORKER else 2


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny models, whose threads would only spin on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["embedded", "sd2", "sdxl"])
def each_tiny_base(request):
    """(kind, pipeline) for the embedded base's tiny layout, tiny SD 2.x and tiny SDXL (tests/tiny_bases.py)."""
    from tiny_bases import build_tiny_sd2, build_tiny_sdxl

    from bora_diffusion.embedded import build_tiny_pipeline

    builders = {
        "embedded": lambda: build_tiny_pipeline(seed=0),
        "sd2": build_tiny_sd2,
        "sdxl": build_tiny_sdxl,
    }
    pipe = builders[request.param]()
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe


@pytest.fixture(scope="session")
def _tiny_pipe_master():
    from bora_diffusion.embedded import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def _tiny_unet_master(_tiny_pipe_master):
    return _tiny_pipe_master.unet.eval()


@pytest.fixture
def tiny_pipe(_tiny_pipe_master):
    """A fresh copy of the tiny pipeline for each test (the master is built once per session)."""
    return copy.deepcopy(_tiny_pipe_master)


class Case:
    """A model with a fixed input; `run()` is its forward on that input, `fresh()` an identical new case."""

    def __init__(self, model: nn.Module, inputs: dict, targets, fresh):
        self.model, self.inputs, self.targets, self.fresh = model, inputs, targets, fresh

    def run(self, model: nn.Module | None = None) -> torch.Tensor:
        model = self.model if model is None else model
        with torch.no_grad():
            out = model(**self.inputs)
        return out.sample if hasattr(out, "sample") else out


def make_mlp() -> Case:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 16))
    return Case(model, {"input": torch.randn(3, 7, 24)}, MLP_TARGETS, make_mlp)


def make_unet(master) -> Case:
    g = torch.Generator().manual_seed(0)
    inputs = {
        "sample": torch.randn(2, 4, 16, 16, generator=g),
        "timestep": torch.tensor([10, 500]),
        "encoder_hidden_states": torch.randn(2, 8, 32, generator=g),
    }
    return Case(copy.deepcopy(master), inputs, "attention", lambda: make_unet(master))


@pytest.fixture(params=["mlp", "unet"])
def case(request, _tiny_unet_master) -> Case:
    return make_mlp() if request.param == "mlp" else make_unet(_tiny_unet_master)


@pytest.fixture
def tiny_unet(_tiny_unet_master) -> Case:
    return make_unet(_tiny_unet_master)


def perturb(model: nn.Module, name: str, seed: int = 1, std: float = 0.2) -> None:
    """Move every parameter of concept `name` away from its init, so the adapter does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, wrapper in wrappers(model):
            for param in wrapper.adapters[name].parameters():
                param.add_(torch.randn(param.shape, generator=g) * std * (param.abs().mean() + 1.0))


def off_default_options(method: str) -> dict:
    """Each of the method's own options at a value other than its default (bora_block: blocks 2 of 4), so the
    matrix shows an option reaches the math, and the tiny layers fit it."""
    options = {}
    for option in get(method).options:
        if option.kind is bool:
            value = not option.default
        elif option.choices:
            value = next(c for c in option.choices if c != option.default)
        elif option.kind is int:
            value = (
                option.default // 2
                if option.default // 2 >= max(1, option.minimum or 1)
                else option.default + 1
            )
        else:
            value = option.default / 2
        options[option.name] = option.check(value)
    return options
