"""Regional composition (bora_diffusion.regions) on the embedded base's tiny layout, tiny SD 2.x and tiny SDXL.

What is checked: live, the cross-attention output at a region's tokens is bit-identical when another concept's
adapter factors change and changes when its own do, and outside every region it is the global prompt's output
exactly; region masks land on every attention level's token grid (odd latent sizes included), a mask image as a
box does; one region over the whole image draws what plain generation with its prompt draws (live and fused);
the command line's --region refuses bad input in one `error:` line before the base loads, and resolves each
region's concepts from the tokens its prompt names.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import perturb
from PIL import Image

import bora_diffusion.pipeline
from bora_diffusion.cli import main
from bora_diffusion.config import AdapterConfig
from bora_diffusion.embedded import EMBEDDED_NAME, default_pipeline
from bora_diffusion.errors import ConfigError
from bora_diffusion.formats.native import save_adapter
from bora_diffusion.inject import inject, merge, unmerge
from bora_diffusion.regions import (
    Region,
    check_regions,
    concepts_named,
    cross_attentions,
    parse_region,
    regional_sampling,
    token_grid,
)

LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
SIDE = 64  # pixels


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def master(each_tiny_base):
    return each_tiny_base


def two_concepts(master):
    """A copy of the base with concepts `a` and `b` on the cross-attention keys and values, both moved off init."""
    pipe = copy.deepcopy(master[1])
    for seed, name in enumerate("ab"):
        inject(pipe.unet, AdapterConfig("sbora_fa", rank=2, targets="cross_kv", seed=seed), name=name)
        perturb(pipe.unet, name, seed=seed + 1, std=1.0)
    return pipe


def draw(pipe, prompt: str, regions=(), *, height: int = SIDE, width: int = SIDE, output_type: str = "np"):
    with regional_sampling(pipe, regions, height=height, width=width, guidance=3.0) as plan:
        images = pipe(
            prompt,
            num_inference_steps=2,
            guidance_scale=3.0,
            height=height,
            width=width,
            generator=torch.Generator().manual_seed(0),
            output_type=output_type,
        ).images
    return images, plan


def layer_inputs(pipe, regions) -> dict:
    """Each cross-attention layer's first (hidden_states, encoder_hidden_states) in a regional sampling step."""
    seen: dict = {}

    def keep(module, args, kwargs) -> None:
        seen.setdefault(module, (args[0], kwargs["encoder_hidden_states"]))

    handles = [
        layer.register_forward_pre_hook(keep, with_kwargs=True) for layer in cross_attentions(pipe.unet)
    ]
    try:
        draw(pipe, "a plain background", regions, output_type="latent")
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_live_regions_isolate_their_concepts_on_every_cross_attention_layer(master):
    pipe = two_concepts(master)
    regions = [
        Region("a red toy", box=LEFT, concepts=("a",)),
        Region("a blue toy", box=RIGHT, concepts=("b",)),
    ]
    inputs = layer_inputs(pipe, regions)
    assert len(inputs) == len(cross_attentions(pipe.unet)) > 1

    @torch.no_grad()
    def outputs() -> dict:
        with regional_sampling(pipe, regions, height=SIDE, width=SIDE, guidance=3.0) as plan:
            return {
                layer: (layer(h, encoder_hidden_states=e), plan.masks(h.shape[1]))
                for layer, (h, e) in inputs.items()
            }

    before = outputs()
    perturb(pipe.unet, "b", seed=7, std=1.0)  # concept 2's factors change
    after_b = outputs()
    perturb(pipe.unet, "a", seed=8, std=1.0)  # concept 1's factors change
    after_a = outputs()
    for layer, (out, masks) in before.items():
        inside = masks[0] == 1  # (T,): tokens region 1 covers whole
        assert inside.sum() >= masks.shape[1] // 2 - 1
        assert torch.equal(out[:, inside], after_b[layer][0][:, inside])  # bit for bit: no trace of concept 2
        assert not torch.equal(out[:, masks[1] == 1], after_b[layer][0][:, masks[1] == 1])
        assert (out[:, inside] - after_a[layer][0][:, inside]).abs().max() > 1e-4


def test_fused_regions_cannot_isolate_what_the_weights_hold(master):
    """Fused, every concept's delta is in to_k / to_v, and every text token has a value in every concept's input
    columns: region 1's output moves when concept 2's factors do (what live composition avoids)."""
    pipe = two_concepts(master)
    regions = [
        Region("a red toy", box=LEFT, concepts=("a",)),
        Region("a blue toy", box=RIGHT, concepts=("b",)),
    ]
    inputs = layer_inputs(pipe, regions)

    @torch.no_grad()
    def fused_outputs() -> dict:
        merge(pipe.unet)
        try:
            with regional_sampling(pipe, regions, height=SIDE, width=SIDE, guidance=3.0) as plan:
                return {
                    layer: (layer(h, encoder_hidden_states=e), plan.masks(h.shape[1])[0] == 1)
                    for layer, (h, e) in inputs.items()
                }
        finally:
            unmerge(pipe.unet)

    before = fused_outputs()
    perturb(pipe.unet, "b", seed=7, std=1.0)
    after = fused_outputs()
    for layer, (out, inside) in before.items():
        assert (out[:, inside] - after[layer][0][:, inside]).abs().max() > 1e-4


def test_outside_every_region_the_layer_follows_the_global_prompt(master):
    pipe = two_concepts(master)
    regions = [Region("a red toy", box=(0.0, 0.0, 0.5, 0.5), concepts=("a",))]
    inputs = layer_inputs(pipe, regions)
    with torch.no_grad():
        plain = {layer: layer(h, encoder_hidden_states=e) for layer, (h, e) in inputs.items()}
        with regional_sampling(pipe, regions, height=SIDE, width=SIDE, guidance=3.0) as plan:
            for layer, (h, e) in inputs.items():
                out = layer(h, encoder_hidden_states=e)
                outside = plan.masks(h.shape[1])[0] == 0
                inside = plan.masks(h.shape[1])[0] == 1
                assert outside.any() and inside.any()
                assert torch.equal(out[:, outside], plain[layer][:, outside])
                assert (out[:, inside] - plain[layer][:, inside]).abs().max() > 1e-4


@pytest.mark.parametrize("size", [(SIDE, SIDE), (72, 40)])
def test_masks_land_on_every_attention_levels_token_grid(master, size):
    pipe = copy.deepcopy(master[1])
    height, width = size
    regions = [Region("a red toy", box=LEFT), Region("a blue toy", box=RIGHT)]
    _, plan = draw(pipe, "a plain background", regions, height=height, width=width, output_type="latent")
    latent = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    levels = sorted(plan._masks, reverse=True)
    # SDXL's first level has no attention: its attention starts one halving down
    latent_top = (-(-latent[0] // 2), -(-latent[1] // 2)) if master[0] == "sdxl" else latent
    assert levels[0] == latent_top[0] * latent_top[1] and len(levels) >= 2  # every attended level was resized
    for tokens in levels:
        rows, cols = token_grid(tokens, *latent)
        left = plan.masks(tokens)[0].reshape(rows, cols)  # row-major, as the UNet flattens (h, w)
        expected = torch.zeros(cols)
        expected[: cols // 2] = 1
        if cols % 2:
            expected[cols // 2] = 0.5  # the middle column is half inside the left box
        assert torch.equal(left, expected.expand(rows, cols))
        assert torch.equal(plan.masks(tokens).sum(0), torch.ones(tokens))  # the two halves tile the image


def test_token_grid_follows_the_unets_rounding():
    assert [token_grid(n, 18, 10) for n in (180, 45, 15)] == [(18, 10), (9, 5), (5, 3)]
    with pytest.raises(ValueError):
        token_grid(50, 18, 10)


def test_a_mask_image_is_the_box_it_paints(tmp_path):
    plane = np.zeros((48, 80), dtype=np.uint8)
    plane[:, :40] = 255
    Image.fromarray(plane).save(tmp_path / "left.png")
    mask = parse_region(f"{tmp_path / 'left.png'}=a toy", "--region 1")
    box = parse_region("0,0,0.5,1=a toy", "--region 1")
    assert box.box == LEFT and mask.mask.shape == (48, 80)
    for rows, cols in [(16, 16), (8, 8), (5, 3), (1, 1)]:
        assert torch.allclose(mask.grid_mask(rows, cols), box.grid_mask(rows, cols), atol=1e-6)
    # overlapping masks share their tokens in proportion
    both = [mask, Region("a cup", mask=torch.ones(4, 4))]
    from bora_diffusion.regions import RegionalPlan

    weights = RegionalPlan(both, torch.zeros(2, 77, 8), (8, 8), guided=True).masks(64)
    assert torch.allclose(weights.sum(0), torch.ones(64)) and torch.allclose(
        weights[:, 0], torch.tensor([0.5, 0.5])
    )


@pytest.mark.parametrize("fuse", [False, True])
def test_one_region_over_the_whole_image_is_plain_generation_with_its_prompt(master, fuse):
    kind = master[0]
    pipe = two_concepts(master)
    if fuse:
        merge(pipe.unet)
    prompt = "a red toy on a table"
    region = [Region(prompt, box=(0.0, 0.0, 1.0, 1.0), concepts=("a", "b"))]
    regional, _ = draw(pipe, "a blue cup", region)
    if kind == "sdxl":
        # SDXL's added conditioning reads the global prompt's pooled embedding, which no region replaces
        embeds, negative, _, negative_pooled = pipe.encode_prompt(prompt, do_classifier_free_guidance=True)
        _, _, pooled, _ = pipe.encode_prompt("a blue cup", do_classifier_free_guidance=True)
        plain = pipe(
            prompt_embeds=embeds,
            negative_prompt_embeds=negative,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=negative_pooled,
            num_inference_steps=2,
            guidance_scale=3.0,
            height=SIDE,
            width=SIDE,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images
    else:
        plain, _ = draw(pipe, prompt)
    other, _ = draw(pipe, "a blue cup")
    assert np.abs(regional - plain).max() < 1e-5
    assert np.abs(regional - other).max() > 1e-3  # the region, not the global prompt, drew the image


def test_region_specs_and_their_errors(tmp_path):
    assert parse_region(" 0.5, 0 ,1,1 = a vlek ring", "--region 2").box == (0.5, 0.0, 1.0, 1.0)
    assert parse_region("0,0,1,1=a = b", "--region 1").prompt == "a = b"
    (tmp_path / "bad.png").write_text("not an image")
    Image.new("L", (8, 8)).save(tmp_path / "black.png")
    for text, message in [
        ("0,0,1.5,1=a", "--region 2: box 0,0,1.5,1 leaves the image"),
        ("0.5,0,0.5,1=a", "--region 2: box 0.5,0,0.5,1 is empty; x0 must be below x1"),
        ("0,0,1=a", "--region 2: box '0,0,1' is not four numbers"),
        ("0,0,1,1", "--region 2: '0,0,1,1' is not BOX=PROMPT"),
        ("0,0,1,1= ", "--region 2: the prompt is empty"),
        (f"{tmp_path / 'bad.png'}=a", "--region 2: mask"),
        (f"{tmp_path / 'black.png'}=a", "--region 2: mask"),
        (f"{tmp_path / 'none.png'}=a", "--region 2: mask"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_region(text, "--region 2")
        assert str(caught.value).startswith(message), str(caught.value)
    with pytest.raises(ConfigError, match="--region 2: box 0.4,0,1,1 overlaps --region 1's 0,0,0.5,1"):
        check_regions([parse_region("0,0,0.5,1=a", "--region 1"), parse_region("0.4,0,1,1=b", "--region 2")])
    check_regions([parse_region("0,0,0.5,1=a", "--region 1"), parse_region("0.5,0,1,1=b", "--region 2")])
    assert concepts_named("a Huzd circle beside a vlek-ring", {"c": "huzd", "r": "vlek", "s": "zorp"}) == (
        "c",
    )


@pytest.fixture
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(tmp_path / "home"))


@pytest.mark.usefixtures("_home")
def test_generate_refuses_a_bad_region_before_the_base_loads(tmp_path, monkeypatch, capsys):
    def no_base(*_, **__):
        raise AssertionError("the base model loaded before the bad region was refused")

    monkeypatch.setattr(bora_diffusion.pipeline, "load_base", no_base)
    out = str(tmp_path / "gen")
    for region, message in [
        (
            "0,0,1.2,1=a",
            "--region 2: box 0,0,1.2,1 leaves the image; give x0,y0,x1,y1 as fractions from 0 to 1",
        ),
        ("1,0,0,1=a", "--region 2: box 1,0,0,1 is empty"),
        ("0.25,0,1,1=a", "--region 2: box 0.25,0,1,1 overlaps --region 1's 0,0,0.5,1"),
        (f"{tmp_path}/missing.png=a", "--region 2: mask"),
    ]:
        argv = [
            "generate",
            "--prompt",
            "a scene",
            "--region",
            "0,0,0.5,1=a",
            "--region",
            region,
            "--out",
            out,
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


@pytest.mark.usefixtures("_home")
def test_generate_draws_regions_with_the_concepts_their_prompts_name(tmp_path, capsys):
    pipe = default_pipeline()
    files = []
    for seed, (name, token) in enumerate([("one", "qxa"), ("two", "qxb")]):
        config = AdapterConfig("sbora_fa", rank=2, targets="cross_kv", seed=seed)
        inject(pipe.unet, config, name=name)
        perturb(pipe.unet, name, seed=seed + 1)
        files.append(
            str(
                save_adapter(
                    tmp_path / f"{name}.safetensors",
                    pipe.unet,
                    name,
                    config,
                    base_name=EMBEDDED_NAME,
                    token=token,
                )
            )
        )
    out = tmp_path / "gen"
    argv = [
        "generate",
        *files,
        "--prompt",
        "a white background",
        "--steps",
        "2",
        "--seed",
        "0",
        "--out",
        str(out),
    ]
    regions = ["--region", "0,0,0.5,1=a qxa circle", "--region", "0.5,0,1,1=a qxb ring"]
    assert main(argv + regions) == 0
    printed = capsys.readouterr().out
    assert "1 images" in printed and "note:" not in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(r["box"], r["concepts"]) for r in manifest["regions"]] == [
        ([0, 0, 0.5, 1], ["one"]),
        ([0.5, 0, 1, 1], ["two"]),
    ]
    plain = tmp_path / "plain"
    assert main([*argv[:-1], str(plain)]) == 0
    assert "regions" not in json.loads((plain / "manifest.json").read_text())
    assert (
        np.asarray(Image.open(out / "p00-s0.png")).tolist()
        != np.asarray(Image.open(plain / "p00-s0.png")).tolist()
    )
    assert main([*argv, "--region", "0,0,1,1=a plain cup"]) == 0
    assert (
        "note: --region 1 names no loaded concept's token; live, it draws with the base alone"
        in capsys.readouterr().out
    )
