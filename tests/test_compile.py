"""`--compile`: the UNet compiled in place for training and generation, the same adapter as eager within float
tolerance, resume across compiled runs, and one warning line (then eager) where the compiler cannot run.

The compiled tests use the `aot_eager` backend: dynamo traces the same graph (our autograd Functions included)
and AOTAutograd splits forward from backward as inductor would, without building C++ kernels, so a test takes
seconds instead of minutes. scripts/bench_compile.py measures inductor itself.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_train import FAST, StopAt, make_concept

from bora_diffusion import AdapterConfig, compiling
from bora_diffusion.cli import main
from bora_diffusion.config import TrainConfig
from bora_diffusion.formats import read_adapter
from bora_diffusion.generate import SamplingSettings, generate
from bora_diffusion.train import Trainer


@pytest.fixture
def traced(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def no_compiler(monkeypatch):
    """The compiler's probe fails as it does on a machine without a C++ compiler."""
    monkeypatch.setattr(
        compiling, "compile_problem", lambda backend=None: "InvalidCxxCompiler: no working C++ compiler found"
    )


def _train(pipe, concept, tmp_path, folder, callbacks=(), resume=False, **settings):
    config = TrainConfig(**{**FAST, **settings})
    adapter = AdapterConfig(method="sbora_fa", rank=2)
    trainer = Trainer(
        pipe, concept, adapter, config, out_dir=tmp_path / folder, base_name="tiny", callbacks=list(callbacks)
    )
    return read_adapter(trainer.train(resume=resume)).tensors


def test_compiled_training_resumes_to_the_eager_adapter_and_keeps_the_state_dict_keys(
    traced, _tiny_pipe_master, tmp_path
):
    # Steps 1-3 compiled, stopped after step 5 (checkpoint at 3), then resumed compiled from step 3 to 6: the
    # adapter equals an uninterrupted eager run's, so compiled steps compute eager's and resume reads their state.
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    eager = _train(copy.deepcopy(_tiny_pipe_master), concept, tmp_path, "eager")
    with pytest.raises(KeyboardInterrupt):
        _train(copy.deepcopy(_tiny_pipe_master), concept, tmp_path, "compiled", [StopAt(5)], compile=True)
    pipe = copy.deepcopy(_tiny_pipe_master)
    compiled = _train(pipe, concept, tmp_path, "compiled", resume=True, compile=True)
    assert eager.keys() == compiled.keys()  # no `_orig_mod.` prefix reached the file
    trained = [k for k in eager if not k.endswith(".index")]
    assert any(eager[k].abs().sum() > 0 for k in trained)
    for key in trained:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-6)
    assert pipe.unet._compiled_call_impl is None  # eager again after training
    assert not any("_orig_mod" in key for key in pipe.unet.state_dict())


def test_without_a_compiler_training_warns_once_and_runs_eager(
    no_compiler, _tiny_pipe_master, tmp_path, capsys
):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    eager = _train(copy.deepcopy(_tiny_pipe_master), concept, tmp_path, "eager", steps=2, checkpoint_every=0)
    capsys.readouterr()
    pipe = copy.deepcopy(_tiny_pipe_master)
    fallback = _train(pipe, concept, tmp_path, "fallback", steps=2, checkpoint_every=0, compile=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if "--compile" in line]
    assert lines == [
        "warning: --compile: torch.compile cannot run here (InvalidCxxCompiler: no working C++ compiler found); "
        "training goes on uncompiled. Install a C++ compiler (gcc or clang; MSVC on Windows) or leave out --compile"
    ]
    assert all(torch.equal(fallback[k], eager[k]) for k in eager)  # eager it was, bit for bit
    assert pipe.unet._compiled_call_impl is None


def test_compiled_generation_draws_the_eager_image(traced, tiny_pipe, tmp_path):
    settings = SamplingSettings(steps=2, batch_size=1)
    eager = generate(tiny_pipe, ["a photo of a toy"], [0], tmp_path / "eager", settings=settings)
    compiled = generate(
        tiny_pipe,
        ["a photo of a toy"],
        [0],
        tmp_path / "compiled",
        settings=SamplingSettings(steps=2, batch_size=1, compile=True),
    )
    import numpy as np
    from PIL import Image

    a, b = (np.asarray(Image.open(g.images[0]), dtype=np.int16) for g in (eager, compiled))
    assert np.abs(a - b).max() <= 1  # the same picture up to a rounding of the last 8-bit step
    assert tiny_pipe.unet._compiled_call_impl is None


def test_the_probe_names_what_is_missing(monkeypatch):
    compiling.compile_problem.cache_clear()

    def broken(*args, **kwargs):
        raise RuntimeError("Compiler: cc is not found\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    try:
        assert compiling.compile_problem("inductor") == "RuntimeError: Compiler: cc is not found"
    finally:
        compiling.compile_problem.cache_clear()


def test_generate_takes_compile_on_the_command_line(no_compiler, tmp_path, capsys):
    code = main(
        [
            "generate",
            "--prompt",
            "a red circle",
            "--seed",
            "0",
            "--steps",
            "1",
            "--compile",
            "--out",
            str(tmp_path / "g"),
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "generation goes on uncompiled" in err
    assert (tmp_path / "g" / "grid.png").is_file()
