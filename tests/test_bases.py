"""The bases users bring, end to end: tiny SDXL and tiny SD 2.x (v-prediction) pipelines saved in diffusers layout
and passed as `--base`, as a user passes theirs.

What is checked on each: the conditioning the trainer feeds the UNet is the stock pipeline's own (SDXL: both
encoders' penultimate states, the pooled `text_embeds`, each image's time ids); training learns, with and without
the token's embedding and the two locks; resume is bit-identical; two concepts on disjoint slots fuse to the exact
sum of their deltas; and from the command line, train -> generate -> compose --save -> export, where stock
diffusers (`from_pretrained` on the saved folder, `load_lora_weights` + `load_textual_inversion` on the exports)
draws our images within 1e-4.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from test_train import StandIn, StopAt
from tiny_bases import build_tiny_sd2, build_tiny_sdxl

from bora_diffusion import AdapterConfig
from bora_diffusion.cli import main
from bora_diffusion.config import TrainConfig
from bora_diffusion.data import load_image
from bora_diffusion.formats import embedding_path, read_adapter
from bora_diffusion.inject import wrappers
from bora_diffusion.merge import compose
from bora_diffusion.pipeline import load_base
from bora_diffusion.text import PromptEncoder
from bora_diffusion.train import Trainer, train_concepts, training_scheduler

PIXEL_TOLERANCE = 1e-4
TOKEN = "zqwv"
PROMPT = f"a photo of {TOKEN} toy on a table"
LEARN = dict(steps=6, learning_rate=1e-2, checkpoint_every=3, seed=3, resolution=64)
LOCKED = dict(train_embedding=True, embedding_vectors=2, lock_weight=1.0, word_lock_weight=1.0)


@dataclass(frozen=True)
class Base:
    kind: str  # "sdxl" or "sd2"
    folder: Path  # the saved pipeline, what `--base` names
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline  # loaded through bora_diffusion.pipeline


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["sdxl", "sd2"])
def base(request, tmp_path_factory) -> Base:
    folder = tmp_path_factory.mktemp(request.param) / "base"
    {"sdxl": build_tiny_sdxl, "sd2": build_tiny_sd2}[request.param]().save_pretrained(folder)
    return Base(request.param, folder, load_base(str(folder)))


def fresh(base: Base):
    """A deep copy of the loaded base: training and composing change its UNet, text encoders and tokenizers."""
    return copy.deepcopy(base.pipe)


def stock(base: Base, folder: Path | None = None):
    """The base (or another saved pipeline) loaded by diffusers alone."""
    cls = StableDiffusionXLPipeline if base.kind == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder or base.folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe, prompt: str = PROMPT) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        prompt, num_inference_steps=3, height=64, width=64, generator=generator, output_type="np"
    ).images


def images(folder: Path, seed: int) -> list[Path]:
    """Three images, one of them wider than tall (so a crop and its time ids are exercised)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (height, width) in enumerate([(64, 64), (64, 96), (80, 64)]):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def stand_in(folder: Path, name: str, seed: int) -> StandIn:
    return StandIn(name, images(folder, seed), token=TOKEN)


def concept_folder(folder: Path, name: str, token: str, seed: int) -> Path:
    images(folder, seed)
    (folder / "concept.toml").write_text(
        f'token = "{token}"\nclass_word = "toy"\n\n[prompts]\ninstance_prompt = "a photo of {{token}} '
        '{class_word}"\n\n[train]\nmethod = "sbora_fa"\nrank = 4\nresolution = 64\n'
    )
    return folder


def unet_output(pipe, text: PromptEncoder) -> torch.Tensor:
    """The UNet's prediction on a fixed latent for PROMPT (its added conditioning included on SDXL)."""
    conditioning = text.encode([PROMPT])
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    added = None
    if conditioning.pooled is not None:
        added = {"text_embeds": conditioning.pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return pipe.unet(latents, 500, conditioning.states, added_cond_kwargs=added).sample


# --- conditioning ---------------------------------------------------------------------------------------


def test_prompt_conditioning_is_the_stock_pipelines_own(base):
    prompts = [PROMPT, "a drawing of a red circle"]
    ours = PromptEncoder(base.pipe).encode(prompts)
    if base.kind == "sdxl":
        states, _, pooled, _ = base.pipe.encode_prompt(
            prompts, device="cpu", do_classifier_free_guidance=False
        )
        assert ours.states.shape == (2, 77, 64)  # 32 + 32: both encoders side by side
        assert torch.equal(ours.pooled, pooled)
    else:
        states, _ = base.pipe.encode_prompt(prompts, "cpu", 1, do_classifier_free_guidance=False)
        assert ours.pooled is None
    assert torch.equal(ours.states, states)


def test_each_image_keeps_its_sdxl_time_ids(tmp_path):
    wide, tall = images(tmp_path, 0)[1:]
    pixels, time_ids = load_image(wide, 64)  # 64 x 96: kept at its height, 16 px cropped off each side
    assert pixels.shape == (3, 64, 64)
    assert time_ids.tolist() == [64, 96, 0, 16, 64, 64]  # original (h, w), crop (top, left), target (h, w)
    assert load_image(tall, 64)[1].tolist() == [80, 64, 8, 0, 64, 64]


def test_training_feeds_the_unet_the_pooled_text_and_time_ids(base, tmp_path):
    pipe = fresh(base)
    seen = []
    pipe.unet.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs), with_kwargs=True)
    concept = stand_in(tmp_path / "imgs", "thing", 0)
    config = TrainConfig(**{**LEARN, "steps": 1, "batch_size": 3})
    Trainer(
        pipe,
        concept,
        AdapterConfig(method="sbora_fa", rank=2),
        config,
        out_dir=tmp_path / "out",
        base_name="tiny",
    ).train()
    added = seen[0]["added_cond_kwargs"]
    if base.kind == "sd2":
        assert added is None
        return
    pooled = PromptEncoder(base.pipe).encode([concept.instance_prompt(concept.images[0])]).pooled  # (1, 32)
    assert torch.allclose(added["text_embeds"], pooled.expand(3, -1))  # every caption is the same here
    drawn = {tuple(row) for row in added["time_ids"].tolist()}
    assert drawn <= {(64, 64, 0, 0, 64, 64), (64, 96, 0, 16, 64, 64), (80, 64, 8, 0, 64, 64)}


def test_training_noises_with_the_ddpm_forward_process_of_the_bases_schedule(base):
    """SDXL ships Euler, whose `add_noise` is `x + sigma * noise` (sigma space, for sampling); an epsilon or v
    target needs `sqrt(a) x + sqrt(1 - a) noise` over the base's own betas, as diffusers' training scripts use."""
    sampler = base.pipe.scheduler
    schedule = training_scheduler(sampler)
    assert schedule.config.prediction_type == sampler.config.prediction_type  # v-prediction on SD 2.x
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 999])
    alpha_bar = sampler.alphas_cumprod[t].view(3, 1, 1, 1)  # (3, 1, 1, 1): the base's own schedule
    expected = alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * noise
    assert torch.allclose(schedule.add_noise(x, noise, t), expected, atol=1e-6)
    if base.kind == "sdxl":  # what training with the sampler itself would have fed the UNet
        assert not torch.allclose(sampler.add_noise(x, noise, t), expected, atol=1e-2)


# --- training ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["adapters", "token and locks"])
def test_training_learns_on_the_base(base, recipe, tmp_path):
    pipe = fresh(base)
    text = PromptEncoder(pipe)
    before = unet_output(pipe, text)
    settings = {**LEARN, **(LOCKED if recipe == "token and locks" else {})}
    trainer = Trainer(
        pipe,
        stand_in(tmp_path / "imgs", "thing", 0),
        AdapterConfig(method="sbora_fa", rank=2),
        TrainConfig(**settings),
        out_dir=tmp_path / "out",
        base_name="tiny",
    )
    path = trainer.train()
    assert (unet_output(pipe, text) - before).abs().max() > 1e-3  # the adapter moved the prediction
    info = read_adapter(path)
    assert info.unet_layout["addition_embed_type"] == ("text_time" if base.kind == "sdxl" else None)
    if recipe == "adapters":
        assert info.token_embeddings == []
        return
    widths = [encoder.get_input_embeddings().embedding_dim for encoder in text.encoders]
    assert [tuple(rows.shape) for rows in info.token_embeddings] == [(2, width) for width in widths]
    # The word lock holds what the UNet reads: on SDXL both encoders' states side by side (32 + 32).
    assert trainer.word_lock.reference.shape[-1] == base.pipe.unet.config.cross_attention_dim
    assert float(trainer.word_lock()) > 0  # the token moved, and the lock saw the words after it move
    with torch.no_grad():
        assert trainer.lock.layers and float(trainer.lock()) > 0


def test_a_resumed_run_ends_bit_identical(base, tmp_path):
    concept = stand_in(tmp_path / "imgs", "thing", 0)
    adapter = AdapterConfig(method="sbora_fa", rank=2)
    config = TrainConfig(**LEARN, **LOCKED, lr_schedule="cosine", warmup_steps=2)
    straight = Trainer(
        fresh(base), concept, adapter, config, out_dir=tmp_path / "a", base_name="tiny"
    ).train()
    with pytest.raises(KeyboardInterrupt):
        Trainer(
            fresh(base),
            concept,
            adapter,
            config,
            out_dir=tmp_path / "b",
            base_name="tiny",
            callbacks=[StopAt(5)],
        ).train()
    resumed = Trainer(fresh(base), concept, adapter, config, out_dir=tmp_path / "b", base_name="tiny").train(
        resume=True
    )
    a, b = read_adapter(straight), read_adapter(resumed)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert all(torch.equal(x, y) for x, y in zip(a.token_embeddings, b.token_embeddings, strict=True))
    assert len(a.token_embeddings) == (2 if base.kind == "sdxl" else 1)


def test_two_concepts_on_disjoint_slots_fuse_to_the_exact_sum(base, tmp_path):
    jobs = [
        (
            stand_in(tmp_path / name, name, seed),
            AdapterConfig(method="sbora_fa", rank=2),
            TrainConfig(**LEARN),
        )
        for seed, name in enumerate(["one", "two"])
    ]
    paths = train_concepts(fresh(base), jobs, out_dir=tmp_path / "out", base_name="tiny")
    live = fresh(base)
    compose(live.unet, [(path, 1.0) for path in paths])
    delta = {
        path: sum(layer.adapters[name].delta_weight(layer.original_weight) for name in layer.adapters)
        for path, layer in wrappers(live.unet)
    }
    assert all(float(d.abs().max()) > 0 for d in delta.values())  # both concepts learned on every layer
    fused = fresh(base)
    compose(fused.unet, [(path, 1.0) for path in paths], fuse=True)
    for path, layer in wrappers(fused.unet):
        base_weight = base.pipe.unet.get_submodule(path).weight
        assert torch.equal(layer.weight, base_weight + delta[path]), path


# --- the command line, against stock diffusers ------------------------------------------------------------


@pytest.fixture
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(tmp_path / "home"))


@pytest.mark.usefixtures("_home")
def test_train_generate_save_and_export_reach_stock_diffusers(base, tmp_path, capsys):
    out = tmp_path / "run"
    folder = concept_folder(tmp_path / "toy", "toy", TOKEN, 0)
    argv = ["--base", str(base.folder)]
    common = [*argv, "--steps", "4", "--lr", "1e-2", "--train-embedding", "--lock-weight", "1"]
    assert main(["train", str(folder), "--out", str(out), *common, "--quiet"]) == 0
    concept = out / "toy.safetensors"
    assert main(["inspect", str(concept)]) == 0
    encoders = "both text encoders (1 x 32 + 32" if base.kind == "sdxl" else "the text encoder (1 x 64"
    assert f"own text embedding, trained on {encoders} values)" in capsys.readouterr().out

    ours = fresh(base)
    compose(ours, [(concept, 1.0)])
    expected = draw(ours)
    assert np.abs(expected - draw(stock(base))).max() > 0.01  # the concept visibly changes the image

    assert (
        main(["generate", str(concept), *argv, "--prompt", PROMPT, "--seed", "0", "--out", str(out / "g")])
        == 0
    )
    assert Image.open(out / "g" / "grid.png").size[0] >= 64

    saved = out / "fused"
    assert main(["compose", str(concept), *argv, "--save", str(saved)]) == 0
    assert np.abs(draw(stock(base, saved)) - expected).max() < PIXEL_TOLERANCE

    for layout in ("diffusers", "kohya"):
        lora = out / f"toy_{layout}.safetensors"
        assert main(["export", str(concept), str(lora), "--layout", layout]) == 0
        pipe = stock(base)
        pipe.load_lora_weights(str(lora))
        embedding = safetensors.torch.load_file(embedding_path(lora))
        if base.kind == "sdxl":  # SDXL's embedding layout: one row set per text encoder
            assert sorted(embedding) == ["clip_g", "clip_l"]
            pipe.load_textual_inversion(
                embedding["clip_l"], token=TOKEN, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
            )
            pipe.load_textual_inversion(
                embedding["clip_g"], token=TOKEN, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
            )
        else:
            assert sorted(embedding) == ["emb_params"]
            pipe.load_textual_inversion(str(embedding_path(lora)), token=TOKEN)
        assert np.abs(draw(pipe) - expected).max() < PIXEL_TOLERANCE, layout
    capsys.readouterr()


@pytest.mark.parametrize(
    "options",
    [
        {"prior_weight": 1.0, "class_images": 2},
        {"snr_gamma": 5.0},
        {"mixed_precision": "bf16"},
        {"gradient_checkpointing": True},
        {"cache_latents": False, "gradient_accumulation": 2},
    ],
    ids=["prior", "min-snr", "bf16", "checkpointing", "uncached-accumulated"],
)
def test_training_options_work_on_the_base(base, options, tmp_path):
    """Each option trains as on SD 1.x; gradient checkpointing and uncached latents change nothing but cost."""
    concept = stand_in(tmp_path / "imgs", "thing", 0)
    adapter = AdapterConfig(method="sbora_fa", rank=2)
    settings = {**LEARN, "steps": 2, "checkpoint_every": 0}
    path = Trainer(
        fresh(base),
        concept,
        adapter,
        TrainConfig(**settings, **options),
        out_dir=tmp_path / "a",
        base_name="t",
    ).train()
    trained = read_adapter(path).tensors
    assert all(torch.isfinite(t).all() for t in trained.values())
    assert any(float(t.abs().max()) > 0 for k, t in trained.items() if not k.endswith(".index"))
    if "prior_weight" in options:
        assert len(list((tmp_path / "a" / "class_images" / "toy").glob("*.png"))) == 2
    if options.keys() & {"gradient_checkpointing", "cache_latents"}:
        plain = {k: v for k, v in options.items() if k == "gradient_accumulation"}
        reference = Trainer(
            fresh(base),
            concept,
            adapter,
            TrainConfig(**settings, **plain),
            out_dir=tmp_path / "b",
            base_name="t",
        ).train()
        expected = read_adapter(reference).tensors
        worst = max(float((trained[k] - expected[k]).abs().max()) for k in expected)
        # Checkpointing recomputes the same forward; uncached latents are encoded in batches of another shape
        # (float rounding that Adam's first steps, each about lr = 1e-2, carry through: measured 5e-5).
        assert worst < (1e-6 if "gradient_checkpointing" in options else 1e-3), worst


@pytest.mark.usefixtures("_home")
def test_evaluate_and_compare_run_on_the_base(base, tmp_path, capsys):
    """The evaluation and the method comparison draw on the base with its own conditioning and score each
    concept; `base_model` names the folder, as adapter files do."""
    one = concept_folder(tmp_path / "one", "one", "zqone", 0)
    two = concept_folder(tmp_path / "two", "two", "zqtwo", 1)
    quick = ["--base", str(base.folder), "--images", "1", "--steps", "2", "--no-other-words"]
    out = tmp_path / "run"
    assert main(["train", str(one), str(two), "--out", str(out), "--base", str(base.folder), "--steps", "2",
                 "--quiet"]) == 0  # fmt: skip
    pairs = [f"{out / 'one.safetensors'}={one}", f"{out / 'two.safetensors'}={two}"]
    assert main(["evaluate", *pairs, *quick, "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["base_model"] == "base"
    assert [c["name"] for c in report["concepts"]] == ["one", "two"]
    assert all(0 < c["alone"]["clip_i"] <= 1 and c["composed"] is not None for c in report["concepts"])

    methods = ["--method", "lora", "--method", "sbora_fa", "--train-steps", "2", "--quiet"]
    assert main(["compare", str(one), *methods, *quick, "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    assert [(r["method"], r["concept"]) for r in rows] == [("lora", "one"), ("sbora_fa", "one")]
    assert all(r["clip_i_alone"] is not None and r["trainable_params"] > 0 for r in rows)
    capsys.readouterr()


def test_the_method_self_check_runs_on_the_base(base, tmp_path, capsys):
    """`bora-diffusion methods --base` steps, fuses and restores each method on the base's own UNet (an SDXL
    UNet also takes the pooled text and time ids)."""
    assert main(["methods", "--base", str(base.folder), "--method", "sbora_fb", "--method", "bora_bidim",
                 "--rank", "2", "--out", str(tmp_path)]) == 0  # fmt: skip
    rows = [
        line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("sbora", "bora"))
    ]
    assert [row[0] for row in rows] == ["sbora_fb", "bora_bidim"]
    assert all(row[-1] == "bit-exact" for row in rows)
