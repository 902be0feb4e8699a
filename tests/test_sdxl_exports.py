"""SDXL exports in the layout sd-scripts writes (SGM module names), checked against sd-scripts' naming derived here
from SDXL's block structure, and against stock diffusers `StableDiffusionXLPipeline.load_lora_weights`; imports of
both SDXL namings.

The base is the tiny SDXL of tiny_bases.py: SDXL's block layout in miniature (three levels, the first without
attention, two resnets per down level, transformer depth (1, 1, 2), the mid block as deep as the last level).
The adapters target every Linear of the transformers, as sd-scripts' LoRA does on SDXL (Transformer2DModel).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from conftest import perturb
from diffusers import StableDiffusionXLPipeline
from peft.tuners.lora import LoraLayer
from tiny_bases import build_tiny_sdxl

from bora_diffusion import AdapterConfig
from bora_diffusion.cli import main
from bora_diffusion.formats import (
    export_diffusers,
    export_kohya,
    import_lora,
    load_adapter,
    read_adapter,
    save_adapter,
)
from bora_diffusion.inject import inject, wrappers
from bora_diffusion.merge import compose

BASE = "tiny-sdxl"
RANK, ALPHA = 4, 6.0  # s = 1.5: alpha / rank must survive the export
PIXEL_TOLERANCE = 1e-4
# Every Linear of a Transformer2DModel (SDXL projects in and out with Linears): what sd-scripts' LoRA adapts.
TRANSFORMER_LINEARS = (
    r"attentions\.\d+\.(proj_in|proj_out)$",
    r"transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2)$",
)
METHODS = ("lora", "sbora_fa")

# --- sd-scripts' SDXL naming, from the SGM block structure (independent of bora_diffusion's mapping) ---------

# The tiny SDXL as SGM describes a UNet: num_res_blocks per level, which levels have a SpatialTransformer
# (SDXL: attention_resolutions [4, 2] -> levels 1 and 2), and each level's transformer depth.
NUM_RES_BLOCKS = 2
LEVEL_ATTENTION = (False, True, True)
TRANSFORMER_DEPTH = (1, 1, 2)  # the mid block takes the last level's


def sd_scripts_name(module: str) -> str:
    """sd-scripts' LoRA name of a module: `lora_unet_` + its name with `.` -> `_`."""
    return "lora_unet_" + module.replace(".", "_")


def sgm_spatial_transformers() -> dict[str, int]:
    """SGM module name -> transformer_blocks count, for every SpatialTransformer of the UNet, numbered as SGM's
    UNetModel builds input_blocks (conv_in, then per level its res blocks and a downsample but on the last),
    middle_block (res, transformer, res) and output_blocks (per level, deepest first, num_res_blocks + 1)."""
    found: dict[str, int] = {}
    index = 0  # input_blocks.0 is conv_in
    levels = len(LEVEL_ATTENTION)
    for level in range(levels):
        for _ in range(NUM_RES_BLOCKS):
            index += 1
            if LEVEL_ATTENTION[level]:
                found[f"input_blocks.{index}.1"] = TRANSFORMER_DEPTH[level]  # [ResBlock, SpatialTransformer]
        if level != levels - 1:
            index += 1  # [Downsample]
    found["middle_block.1"] = TRANSFORMER_DEPTH[-1]
    index = 0
    for level in reversed(range(levels)):
        for _ in range(NUM_RES_BLOCKS + 1):
            if LEVEL_ATTENTION[level]:
                found[f"output_blocks.{index}.1"] = TRANSFORMER_DEPTH[level]
            index += 1
    return found


def sd_scripts_names() -> set[str]:
    """The `lora_unet_...` names sd-scripts' networks.lora gives the Linears of every Transformer2DModel."""
    names = set()
    for module, depth in sgm_spatial_transformers().items():
        linears = ["proj_in", "proj_out"]
        for block in range(depth):
            for attn in ("attn1", "attn2"):
                linears += [
                    f"transformer_blocks.{block}.{attn}.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")
                ]
            linears += [f"transformer_blocks.{block}.ff.net.0.proj", f"transformer_blocks.{block}.ff.net.2"]
        names |= {sd_scripts_name(f"{module}.{linear}") for linear in linears}
    return names


def test_the_expected_names_follow_sdxl_structure():
    # Guards the independent derivation itself: SDXL's own example names, and the tiny UNet's Linear count.
    names = sd_scripts_names()
    for example in (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_8_1_transformer_blocks_1_ff_net_2",
        "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k",
        "lora_unet_output_blocks_0_1_transformer_blocks_1_attn1_to_out_0",
        "lora_unet_output_blocks_5_1_proj_out",
    ):
        assert example in names
    assert not any(n.startswith(("lora_unet_input_blocks_1_", "lora_unet_output_blocks_6_")) for n in names)
    # 4 + 1 + 6 transformers, 6 + 2 + 9 transformer blocks: 11 * 2 + 17 * 10 Linears.
    assert len(names) == 11 * 2 + 17 * 10


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def master() -> StableDiffusionXLPipeline:
    return build_tiny_sdxl(0)


def fresh(master: StableDiffusionXLPipeline) -> StableDiffusionXLPipeline:
    """The seed-0 pipeline with its own UNet and text encoders (what LoRA loading changes)."""
    parts = {
        name: copy.deepcopy(getattr(master, name)) for name in ("unet", "text_encoder", "text_encoder_2")
    }
    pipe = StableDiffusionXLPipeline(**{**master.components, **parts})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: StableDiffusionXLPipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "a photo of a dog", num_inference_steps=3, height=64, width=64, generator=generator, output_type="np"
    ).images


@dataclass(frozen=True)
class Native:
    method: str
    path: Path
    live: np.ndarray  # our image with the adapter live (bora_diffusion's own layers)
    fused: np.ndarray  # and fused into the UNet


def make_native(master, method: str, path: Path) -> Path:
    unet = copy.deepcopy(master.unet)
    config = AdapterConfig(method=method, rank=RANK, alpha=ALPHA, targets=TRANSFORMER_LINEARS)
    inject(unet, config, name="dog")
    perturb(unet, "dog", std=0.1)
    return save_adapter(path, unet, "dog", config, base_name=BASE, token="<dog>", class_word="dog")


@pytest.fixture(scope="module")
def base_image(master) -> np.ndarray:
    return generate(fresh(master))


@pytest.fixture(scope="module", params=METHODS)
def native(request, master, tmp_path_factory) -> Native:
    path = make_native(master, request.param, tmp_path_factory.mktemp(request.param) / "dog.safetensors")
    live = fresh(master)
    load_adapter(path, live.unet)
    fused = fresh(master)
    compose(fused.unet, [(path, 1.0)], fuse=True)
    return Native(request.param, path, generate(live), generate(fused))


def tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}  # noqa: SIM118


def deltas(master, path: Path) -> dict[str, torch.Tensor]:
    """Dense W' - W0 per layer of a native file, through our own model."""
    unet = copy.deepcopy(master.unet)
    info = load_adapter(path, unet)
    with torch.no_grad():
        return {p: w.adapters[info.name].delta_weight(w.original_weight) for p, w in wrappers(unet)}


# --- exports ----------------------------------------------------------------------------------------------


def test_sdxl_kohya_export_has_sd_scripts_key_set_and_metadata(native, tmp_path):
    original = read_adapter(native.path)
    assert original.unet_layout["addition_embed_type"] == "text_time"  # the file knows its base is SDXL
    kohya, meta = tensors_and_metadata(export_kohya(native.path, tmp_path / "k.safetensors"))
    names = sd_scripts_names()
    assert len(names) == len(original.layers)
    assert set(kohya) == {f"{n}.{x}" for n in names for x in ("lora_down.weight", "lora_up.weight", "alpha")}
    for name in names:
        assert kohya[f"{name}.alpha"].item() / kohya[f"{name}.lora_down.weight"].shape[0] == ALPHA / RANK
    assert (meta["ss_base_model_version"], meta["ss_v2"]) == ("sdxl_base_v1-0", "False")
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert (meta["modelspec.sai_model_spec"], meta["modelspec.title"]) == ("1.0.0", "dog")
    assert "modelspec.resolution" not in meta  # the file records no training resolution


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_sdxl_export_generates_our_image_in_stock_diffusers(native, layout, master, base_image, tmp_path):
    assert np.abs(native.live - base_image).max() > 0.02  # the adapter visibly changes the image
    assert np.abs(native.live - native.fused).max() < PIXEL_TOLERANCE
    export = export_kohya if layout == "kohya" else export_diffusers
    exported = export(native.path, tmp_path / f"{layout}.safetensors")
    pipe = fresh(master)
    pipe.load_lora_weights(str(exported))
    loaded = [name for name, module in pipe.unet.named_modules() if isinstance(module, LoraLayer)]
    assert sorted(loaded) == sorted(read_adapter(native.path).layers)  # every layer, none dropped
    image = generate(pipe)
    live, fused = np.abs(image - native.live).max(), np.abs(image - native.fused).max()
    print(f"\n{native.method} {layout}: stock diffusers vs ours live {live:.3g}, fused {fused:.3g}")
    assert live < PIXEL_TOLERANCE and fused < PIXEL_TOLERANCE


def test_cli_export_layout_kohya_writes_sdxl_names(master, tmp_path):
    native = make_native(master, "lora", tmp_path / "dog.safetensors")
    out = tmp_path / "dog_kohya.safetensors"
    assert main(["export", str(native), str(out), "--layout", "kohya"]) == 0
    tensors, meta = tensors_and_metadata(out)
    assert {k.partition(".")[0] for k in tensors} == sd_scripts_names()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"


def test_an_sdxl_file_from_before_the_layout_was_recorded(master, tmp_path):
    """Older native files do not record their base UNet: they still read, and an explicit base version exports
    them with SDXL's names (the width of the tiny SDXL's text states, 64, tells no version)."""
    path = make_native(master, "lora", tmp_path / "dog.safetensors")
    tensors, metadata = tensors_and_metadata(path)
    base = json.loads(metadata["base_model"])
    del base["unet"]
    safetensors.torch.save_file(tensors, str(path), metadata={**metadata, "base_model": json.dumps(base)})
    assert read_adapter(path).unet_layout is None
    kohya, meta = tensors_and_metadata(
        export_kohya(path, tmp_path / "k.safetensors", base_model_version="sdxl_base_v1-0")
    )
    assert {k.partition(".")[0] for k in kohya} == sd_scripts_names()
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    plain, meta = tensors_and_metadata(export_kohya(path, tmp_path / "plain.safetensors"))
    assert {k.partition(".")[0] for k in plain} == {sd_scripts_name(p) for p in read_adapter(path).layers}
    assert "ss_base_model_version" not in meta


# --- imports ----------------------------------------------------------------------------------------------


def test_sdxl_kohya_export_then_import_is_exact(native, master, tmp_path):
    exported = export_kohya(native.path, tmp_path / "k.safetensors")
    report = import_lora(exported, master.unet, tmp_path / "back.safetensors", base_name=BASE, token="<dog>")
    original = read_adapter(native.path)
    assert (report.layout, report.rank, report.padded) == ("kohya", RANK, {})
    assert (report.skipped_text_encoder, report.skipped_not_linear) == ((), {})
    back = read_adapter(report.output)
    assert back.layers == original.layers
    assert back.unet_layout == original.unet_layout  # the import records the real base, not its skeleton
    before, after = deltas(master, native.path), deltas(master, report.output)
    assert set(after) == set(before)
    for layer, delta in before.items():
        torch.testing.assert_close(after[layer], delta, atol=1e-6, rtol=0, msg=layer)
    again, _ = tensors_and_metadata(export_kohya(report.output, tmp_path / "again.safetensors"))
    assert {k.partition(".")[0] for k in again} == sd_scripts_names()  # an imported SDXL concept stays SDXL


def foreign(master, seed: int = 3) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random factors (down (r, in), up (out, r)), r = 2 or 4, on a spread of the tiny SDXL's Linears."""
    g = torch.Generator().manual_seed(seed)
    paths = [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.2.attentions.1.transformer_blocks.1.ff.net.0.proj",
        "mid_block.attentions.0.transformer_blocks.1.attn2.to_k",
        "up_blocks.0.attentions.2.proj_out",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
    ]
    factors = {}
    for i, path in enumerate(paths):
        linear = master.unet.get_submodule(path)
        rank = 2 if i % 2 else 4
        factors[path] = (
            torch.randn(rank, linear.in_features, generator=g) * 0.3,
            torch.randn(linear.out_features, rank, generator=g) * 0.3,
        )
    return factors


def test_a_diffusers_style_named_sdxl_kohya_file_imports(master, tmp_path):
    factors = foreign(master)
    tensors = {}
    for path, (down, up) in factors.items():
        name = sd_scripts_name(path)  # e.g. lora_unet_down_blocks_1_attentions_0_...
        tensors |= {
            f"{name}.lora_down.weight": down,
            f"{name}.lora_up.weight": up,
            f"{name}.alpha": torch.tensor(3.0),
        }
    file = tmp_path / "diffusers_named.safetensors"
    safetensors.torch.save_file(tensors, str(file))
    report = import_lora(file, master.unet, tmp_path / "n.safetensors", base_name=BASE)
    assert set(report.layers) == set(factors) and report.rank == 4
    imported = deltas(master, report.output)
    for path, (down, up) in factors.items():
        torch.testing.assert_close(
            imported[path], (3.0 / down.shape[0]) * up @ down, atol=1e-6, rtol=0, msg=path
        )


def test_an_sgm_named_sdxl_kohya_file_imports_resnet_parts_by_their_sgm_names(master, tmp_path):
    """Hand-written SGM names (from SDXL's structure, not from the mapping) for Linears inside transformers and
    resnets, and conv LoRA (LoCon) on a resnet conv and an upsampler, which is skipped and reported."""
    g = torch.Generator().manual_seed(7)
    tb = "transformer_blocks"
    linears = {  # SGM module name -> the diffusers path it is
        f"input_blocks.4.1.{tb}.0.attn1.to_q": f"down_blocks.1.attentions.0.{tb}.0.attn1.to_q",
        "input_blocks.1.0.emb_layers.1": "down_blocks.0.resnets.0.time_emb_proj",
        "middle_block.2.emb_layers.1": "mid_block.resnets.1.time_emb_proj",
        "output_blocks.7.0.emb_layers.1": "up_blocks.2.resnets.1.time_emb_proj",
        f"output_blocks.0.1.{tb}.1.ff.net.2": f"up_blocks.0.attentions.0.{tb}.1.ff.net.2",
    }
    convs = {
        "input_blocks.2.0.in_layers.2": "down_blocks.0.resnets.1.conv1",
        "output_blocks.5.2.conv": "up_blocks.1.upsamplers.0.conv",
    }
    linears, convs = ({sd_scripts_name(sgm): path for sgm, path in d.items()} for d in (linears, convs))
    tensors, expected = {}, {}
    for name, path in linears.items():
        linear = master.unet.get_submodule(path)
        down = torch.randn(4, linear.in_features, generator=g)
        up = torch.randn(linear.out_features, 4, generator=g)
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
        expected[path] = up @ down
    for name, path in convs.items():
        conv = master.unet.get_submodule(path)
        tensors[f"{name}.lora_down.weight"] = torch.randn(4, conv.in_channels, 3, 3, generator=g)
        tensors[f"{name}.lora_up.weight"] = torch.randn(conv.out_channels, 4, 1, 1, generator=g)
    file = tmp_path / "sgm.safetensors"
    safetensors.torch.save_file(tensors, str(file))
    report = import_lora(file, master.unet, tmp_path / "n.safetensors", base_name=BASE)
    assert set(report.layers) == set(linears.values())
    assert report.skipped_not_linear == {path: "Conv2d" for path in convs.values()}
    imported = deltas(master, report.output)
    for path, delta in expected.items():
        torch.testing.assert_close(imported[path], delta, atol=1e-5, rtol=0, msg=path)


def test_sgm_and_diffusers_style_sdxl_files_import_as_stock_diffusers_loads_them(
    master, base_image, tmp_path
):
    """diffusers converts both SDXL namings itself (with the UNet's layers_per_block): our import of each file must
    generate what stock diffusers generates from it."""
    factors = foreign(master)
    tb = "transformer_blocks"
    sgm = {  # SDXL's SGM names of the same layers, written out by hand
        f"down_blocks.1.attentions.0.{tb}.0.attn1.to_q": f"input_blocks.4.1.{tb}.0.attn1.to_q",
        f"down_blocks.2.attentions.1.{tb}.1.ff.net.0.proj": f"input_blocks.8.1.{tb}.1.ff.net.0.proj",
        f"mid_block.attentions.0.{tb}.1.attn2.to_k": f"middle_block.1.{tb}.1.attn2.to_k",
        "up_blocks.0.attentions.2.proj_out": "output_blocks.2.1.proj_out",
        f"up_blocks.1.attentions.0.{tb}.0.attn1.to_out.0": f"output_blocks.3.1.{tb}.0.attn1.to_out.0",
    }
    images = {}
    for naming in ("sgm", "diffusers"):
        tensors = {}
        for path, (down, up) in factors.items():
            name = sd_scripts_name(sgm[path] if naming == "sgm" else path)
            tensors |= {
                f"{name}.lora_down.weight": down,
                f"{name}.lora_up.weight": up,
                f"{name}.alpha": torch.tensor(2.0),
            }
        file = tmp_path / f"{naming}.safetensors"
        safetensors.torch.save_file(tensors, str(file))
        report = import_lora(file, master.unet, tmp_path / f"{naming}_native.safetensors", base_name=BASE)
        ours = fresh(master)
        load_adapter(report.output, ours.unet)
        stock = fresh(master)
        stock.load_lora_weights(str(file))
        images[naming] = generate(ours)
        assert np.abs(images[naming] - base_image).max() > 0.02  # the file visibly changes the image
        difference = np.abs(generate(stock) - images[naming]).max()
        print(f"\nhand-built {naming}-named SDXL kohya file: stock diffusers vs our import {difference:.3g}")
        assert difference < PIXEL_TOLERANCE
    assert np.abs(images["sgm"] - images["diffusers"]).max() == 0.0  # the same layers, however they are named
