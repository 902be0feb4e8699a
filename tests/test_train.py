"""Training on the tiny pipeline: it learns, resumes bit for bit, stops on a NaN loss, trains several concepts
on disjoint slots, and weighs timesteps by Min-SNR-gamma when asked."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bora_diffusion import AdapterConfig
from bora_diffusion.callbacks import Callback
from bora_diffusion.config import TrainConfig
from bora_diffusion.errors import ConfigError
from bora_diffusion.formats import read_adapter
from bora_diffusion.train import Trainer, TrainingDiverged, min_snr_weights, train_concepts


@dataclass
class StandIn:
    """The part of a Concept that training reads."""

    name: str
    images: list[Path]
    token: str = "<zq-thing>"
    class_word: str = "toy"
    class_prompt: str = "a photo of a toy"

    def instance_prompt(self, image: Path) -> str:
        return f"a photo of {self.token} {self.class_word}"


def make_concept(folder: Path, name: str, seed: int) -> StandIn:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(3):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return StandIn(name, paths)


FAST = dict(steps=6, learning_rate=1e-2, checkpoint_every=3, seed=3)


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", ["sbora_fa", "bora_block", "bora_bidim"])  # bora_bidim: forward_whole
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(
    tiny_pipe, _tiny_pipe_master, tmp_path, method
):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    adapter = AdapterConfig(method=method, rank=2)
    config = TrainConfig(gradient_accumulation=2, lr_schedule="cosine", warmup_steps=2, **FAST)
    straight = Trainer(tiny_pipe, concept, adapter, config, out_dir=tmp_path / "a", base_name="tiny").train()

    with pytest.raises(KeyboardInterrupt):
        Trainer(
            copy.deepcopy(_tiny_pipe_master),
            concept,
            adapter,
            config,
            out_dir=tmp_path / "b",
            base_name="tiny",
            callbacks=[StopAt(5)],
        ).train()
    assert [p.name for p in (tmp_path / "b/checkpoints/thing").iterdir()] == ["step-000003"]
    resumed = Trainer(
        copy.deepcopy(_tiny_pipe_master), concept, adapter, config, out_dir=tmp_path / "b", base_name="tiny"
    ).train(resume=True)

    a, b = read_adapter(straight).tensors, read_adapter(resumed).tensors
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if not k.endswith(".index"))  # it did train


def test_training_lowers_the_loss_and_records_the_concept(tiny_pipe, tmp_path):
    concept = make_concept(tmp_path / "imgs", "thing", 1)
    losses = []

    class Record(Callback):
        def on_step_end(self, state):
            losses.append(state.loss)

    config = TrainConfig(steps=40, learning_rate=3e-2, seed=0)
    path = Trainer(
        tiny_pipe,
        concept,
        AdapterConfig(method="lora", rank=4),
        config,
        out_dir=tmp_path / "out",
        base_name="tiny",
        callbacks=[Record()],
    ).train()
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    info = read_adapter(path)
    assert (info.token, info.class_word, info.base_name) == ("<zq-thing>", "toy", "tiny")
    assert info.training == config.to_dict()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_put_min_snr_gamma_on_the_clean_images_error(prediction_type):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(  # Stable Diffusion's schedule, as the embedded base's
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction_type
    )
    # SNR from the betas themselves, not from the scheduler's alphas_cumprod that the code reads.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)
    snr = alpha_bar / (1 - alpha_bar)
    timesteps = torch.tensor([0, 10, 100, 146, 147, 500, 999])
    weights = min_snr_weights(scheduler, timesteps, 5.0).double()
    # A prediction's squared error is the clean image's times SNR (epsilon) or SNR + 1 (v); weighted, the
    # clean image's error counts min(SNR, 5).
    scale = snr[timesteps] + (1 if prediction_type == "v_prediction" else 0)
    # rtol: the scheduler keeps alpha_bar in float32, where 1 - alpha_bar(0) has four digits left.
    torch.testing.assert_close(weights * scale, snr[timesteps].clamp(max=5.0), rtol=1e-4, atol=0)
    if prediction_type == "epsilon":  # noisy timesteps keep their full weight, the nearly clean ones lose it
        assert weights[4:].tolist() == [1.0, 1.0, 1.0] and weights[0] < 0.01


def test_snr_gamma_weighs_the_training_loss(tiny_pipe, _tiny_pipe_master, tmp_path):
    concept = make_concept(tmp_path / "imgs", "thing", 1)

    def first_loss(pipe, snr_gamma):
        losses = []

        class Record(Callback):
            def on_step_end(self, state):
                losses.append(state.loss)

        config = TrainConfig(steps=1, seed=0, snr_gamma=snr_gamma)
        out = tmp_path / f"out-{snr_gamma}"
        Trainer(
            pipe,
            concept,
            AdapterConfig(method="lora"),
            config,
            out_dir=out,
            base_name="t",
            callbacks=[Record()],
        ).train()
        return losses[0]

    plain = first_loss(tiny_pipe, None)
    # Every weight is 1 while gamma exceeds every timestep's SNR (the largest is about 1e3): the same loss.
    assert first_loss(copy.deepcopy(_tiny_pipe_master), 1e6) == pytest.approx(plain, rel=1e-5)
    # A tiny gamma weighs every timestep below 1 (the noisiest's SNR is about 5e-3).
    assert first_loss(copy.deepcopy(_tiny_pipe_master), 1e-3) < 0.5 * plain
    with pytest.raises(ConfigError, match="snr_gamma must be positive"):
        TrainConfig(snr_gamma=0.0)


def test_the_command_line_hands_snr_gamma_to_training(tmp_path, monkeypatch, capsys):
    from bora_diffusion.cli import TRAIN_FLAGS, build_parser, main
    from bora_diffusion.concept import TrainDefaults

    args = build_parser().parse_args(["train", "concepts/kettle", "--out", "x", "--snr-gamma", "5"])
    assert TrainDefaults().train_config(**{key: getattr(args, key) for key in TRAIN_FLAGS}).snr_gamma == 5.0
    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(tmp_path / "home"))
    assert main(["train", "concepts/kettle", "--out", str(tmp_path / "run"), "--snr-gamma", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "snr_gamma must be positive" in err
    assert not (tmp_path / "run" / "kettle.safetensors").exists()


def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tiny_pipe, tmp_path):
    concept = make_concept(tmp_path / "imgs", "thing", 2)
    config = TrainConfig(steps=20, learning_rate=1e30, max_grad_norm=None, checkpoint_every=1, seed=0)
    with pytest.raises(
        TrainingDiverged, match=r"loss became (nan|inf) at step \d+; the last good checkpoint is"
    ):
        Trainer(
            tiny_pipe, concept, AdapterConfig(method="lora"), config, out_dir=tmp_path / "out", base_name="t"
        ).train()
    assert not (tmp_path / "out/thing.safetensors").exists()
    assert list((tmp_path / "out/checkpoints/thing").glob("step-*"))
    assert not list((tmp_path / "out/checkpoints/thing").glob(".tmp-*"))


def test_several_concepts_train_on_disjoint_slots(tiny_pipe, tmp_path):
    concepts = [make_concept(tmp_path / n, n, i) for i, n in enumerate(["kettle", "robot"])]
    config = TrainConfig(steps=2, seed=0)
    paths = train_concepts(
        tiny_pipe,
        [(c, AdapterConfig(method="sbora_fb", rank=4), config) for c in concepts],
        out_dir=tmp_path / "out",
        base_name="tiny",
    )
    first, second = (read_adapter(p).slots() for p in paths)
    assert first.keys() == second.keys()
    for layer in first:
        assert set(first[layer].tolist()).isdisjoint(second[layer].tolist()), layer
    assert (tmp_path / "out/slots.json").exists()


def test_resume_refuses_other_settings(tiny_pipe, _tiny_pipe_master, tmp_path):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    adapter = AdapterConfig(method="lora", rank=2)
    Trainer(tiny_pipe, concept, adapter, TrainConfig(**FAST), out_dir=tmp_path / "out", base_name="t").train()
    other = TrainConfig(**{**FAST, "learning_rate": 5e-3})
    with pytest.raises(Exception, match="other training settings"):
        Trainer(
            copy.deepcopy(_tiny_pipe_master), concept, adapter, other, out_dir=tmp_path / "out", base_name="t"
        ).train(resume=True)


class StopAfter(Callback):
    """Asks the trainer to stop after `step`, as the app's stop button does."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        state.stop = state.step == self.step


def test_a_stop_request_saves_the_adapter_and_a_checkpoint_that_resumes_exactly(
    tiny_pipe, _tiny_pipe_master, tmp_path
):
    concept = make_concept(tmp_path / "imgs", "thing", 0)
    adapter = AdapterConfig(method="lora", rank=2)
    config = TrainConfig(**{**FAST, "checkpoint_every": 0})
    straight = Trainer(tiny_pipe, concept, adapter, config, out_dir=tmp_path / "a", base_name="tiny").train()

    def trainer(**kwargs):
        pipe = copy.deepcopy(_tiny_pipe_master)
        return Trainer(pipe, concept, adapter, config, out_dir=tmp_path / "b", base_name="tiny", **kwargs)

    stopped = trainer(callbacks=[StopAfter(4)]).train()
    assert read_adapter(stopped).training["stopped_at"] == 4
    assert [p.name for p in (tmp_path / "b/checkpoints/thing").iterdir()] == ["step-000004"]
    resumed = trainer().train(resume=True)
    a, b = read_adapter(straight), read_adapter(resumed)
    assert "stopped_at" not in b.training
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
