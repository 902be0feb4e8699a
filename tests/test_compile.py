"""The opt-in torch.compile (bora_diffusion.compiling): one setting everywhere, the fallback where inductor cannot
run, and compiled training giving the uncompiled adapter, with the same keys, resumable."""

from __future__ import annotations

import copy

import pytest
import torch
from test_train import FAST, StopAt, make_concept

from bora_diffusion import AdapterConfig, compiling
from bora_diffusion.cli.flags import TRAIN_FLAGS
from bora_diffusion.cli.parser import build_parser
from bora_diffusion.concept.training import train_problems, train_settings
from bora_diffusion.config import TrainConfig
from bora_diffusion.formats import read_adapter
from bora_diffusion.settings import settings_of
from bora_diffusion.train import Trainer


@pytest.fixture
def no_compiler(monkeypatch):
    """torch.compile as it fails without a C++ compiler: the probe raises, as inductor does."""

    def broken(x):
        raise RuntimeError("InductorError: CalledProcessError: 'g++' not found")

    compiling.compile_problem.cache_clear()
    monkeypatch.setattr(compiling, "_probe", broken)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # the probe's call then raises, uncompiled
    yield
    compiling.compile_problem.cache_clear()


def test_compile_is_one_setting_with_a_flag_a_toml_key_and_off_by_default():
    (described,) = [s for s in settings_of(TrainConfig) if s.name == "compile"]
    assert (described.kind, described.default, described.cli_flag) == (bool, False, "--compile")
    assert "compile" in TRAIN_FLAGS and "compile" in train_settings()
    assert train_problems({"compile": True}) == [] and train_problems({"compile": "yes"})
    parser = build_parser()
    assert parser.parse_args(["train", "c", "--out", "o", "--compile"]).compile is True
    assert parser.parse_args(["generate", "--prompt", "p", "--out", "o", "--compile"]).compile is True
    assert parser.parse_args(["generate", "--prompt", "p", "--out", "o"]).compile is False
    assert TrainConfig(compile=True).to_dict()["compile"] is True


def test_without_a_compiler_the_unet_runs_uncompiled_after_one_line(no_compiler, tiny_pipe, capsys):
    unet = tiny_pipe.unet
    assert compiling.compile_unet(unet) is unet
    assert compiling.compile_pipeline(tiny_pipe) is False
    assert getattr(unet, "_compiled_call_impl", None) is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("warning: --compile: ") for line in err)  # one per call
    assert "'g++' not found" in err[0] and "install a C++ compiler" in err[0]
    assert compiling.compile_problem("cpu") == compiling.compile_problem("cpu")  # probed once, cached


def test_training_with_compile_and_no_compiler_gives_the_uncompiled_adapter(
    no_compiler, tiny_pipe, _tiny_pipe_master, tmp_path, capsys
):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    adapter = AdapterConfig(method="sbora_fa", rank=2)
    plain = Trainer(tiny_pipe, concept, adapter, TrainConfig(**FAST), out_dir=tmp_path / "a", base_name="t")
    compiled = Trainer(copy.deepcopy(_tiny_pipe_master), concept, adapter, TrainConfig(compile=True, **FAST),
                       out_dir=tmp_path / "b", base_name="t")  # fmt: skip
    a, b = read_adapter(plain.train()).tensors, read_adapter(compiled.train()).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert capsys.readouterr().err.count("warning: --compile:") == 1


@pytest.mark.slow  # 81 s here on 2 busy cores: two compiled runs (each traces forward and backward) and one plain
def test_compiled_training_matches_uncompiled_keeps_its_keys_and_resumes(
    tiny_pipe, _tiny_pipe_master, tmp_path, monkeypatch
):
    """Under dynamo and AOTAutograd (the `aot_eager` backend: inductor's graph capture without its C++ codegen,
    seconds here where inductor's takes minutes), the adapter matches the uncompiled run's within 1e-5; a
    compiled run stopped and resumed compiled ends within 1e-5 too, and no key gets an `_orig_mod.` prefix."""
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    adapter = AdapterConfig(method="sbora_fa", rank=2)
    config = TrainConfig(compile=True, **FAST)
    plain = Trainer(tiny_pipe, concept, adapter, TrainConfig(**FAST), out_dir=tmp_path / "a", base_name="t")
    a = read_adapter(plain.train()).tensors
    with pytest.raises(KeyboardInterrupt):
        Trainer(copy.deepcopy(_tiny_pipe_master), concept, adapter, config, out_dir=tmp_path / "b",
                base_name="t", callbacks=[StopAt(5)]).train()  # fmt: skip
    state = torch.load(tmp_path / "b/checkpoints/thing/step-000003/state.pt", weights_only=True)
    assert not any("_orig_mod" in key for key in state["adapter"])
    resumed = Trainer(copy.deepcopy(_tiny_pipe_master), concept, adapter, config, out_dir=tmp_path / "b",
                      base_name="t").train(resume=True)  # fmt: skip
    info = read_adapter(resumed)
    b = info.tensors
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-5, worst
    assert any(a[k].abs().sum() > 0 for k in a if not k.endswith(".index"))  # it did train
    assert info.training["compile"] is True
