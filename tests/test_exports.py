"""LoRA exports (diffusers, kohya) checked against stock diffusers, imports back to native files, and refusals.

The oracle is stock `StableDiffusionPipeline.load_lora_weights` on the tiny embedded pipeline: an exported file must
generate the image our own model generates with the native file, for every additive method (new ones join through
the registry). Round trips compare dense deltas layer by layer.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from conftest import off_default_options, perturb
from diffusers import StableDiffusionPipeline
from peft.tuners.lora import LoraLayer

from bora_diffusion import AdapterConfig, AdapterFileError, cli, pipeline
from bora_diffusion.adapters import available, get
from bora_diffusion.embedded import EMBEDDED_NAME, build_tiny_pipeline
from bora_diffusion.formats import (
    NotExportableError,
    convert,
    embedding_path,
    export_diffusers,
    export_embedding,
    export_kohya,
    import_lora,
    load_adapter,
    read_adapter,
    save_adapter,
)
from bora_diffusion.inject import find_targets, inject, wrappers
from bora_diffusion.merge import compose

ADDITIVE = [m for m in available() if get(m).additive]
NOT_ADDITIVE = [m for m in available() if not get(m).additive]
EXPORTS: dict[str, Callable[..., Path]] = {
    "diffusers": export_diffusers,
    "diffusers-legacy": partial(export_diffusers, key_style="legacy"),
    "kohya": export_kohya,
}
RANK, ALPHA = 4, 6.0  # s = 1.5, so the exports' handling of s is exercised (alpha = rank would hide it)
PIXEL_TOLERANCE = 1e-4
TEXT_ENCODER_NOTICE = (
    "No LoRA keys associated to CLIPTextModel"  # diffusers' one warning for a UNet-only file
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # The tiny pipeline is too small for intra-op threads: on a shared 2-core machine two threads make a 3-step
    # image take seconds instead of 0.1 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def master() -> StableDiffusionPipeline:
    return build_tiny_pipeline(0)


def fresh(master: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """The seed-0 pipeline with its own UNet and text encoder (what LoRA loading changes); the VAE, scheduler
    and tokenizer are shared, which is safe one test at a time and much faster than deep-copying a tokenizer."""
    parts = {"unet": copy.deepcopy(master.unet), "text_encoder": copy.deepcopy(master.text_encoder)}
    pipe = StableDiffusionPipeline(**{**master.components, **parts}, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: StableDiffusionPipeline, prompt: str = "a photo of a dog") -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        prompt, num_inference_steps=3, height=64, width=64, generator=generator, output_type="np"
    ).images


@pytest.fixture(scope="module")
def base_image(master) -> np.ndarray:
    return generate(fresh(master))


@dataclass(frozen=True)
class Native:
    method: str
    path: Path
    image: np.ndarray  # what our own model generates with the file


@pytest.fixture(scope="module", params=ADDITIVE)
def native(request, master, tmp_path_factory) -> Native:
    method = request.param
    unet = copy.deepcopy(master.unet)
    config = AdapterConfig(method=method, rank=RANK, alpha=ALPHA, **off_default_options(method))
    inject(unet, config, name="dog")
    # std 0.1, not conftest's 0.2: at 0.2 bora_block drives the random tiny model so hard that its own fused and
    # live outputs differ by 5e-4 in pixels, more than the tolerance; 0.1 still moves the image by > 0.02.
    perturb(unet, "dog", std=0.1)
    path = save_adapter(
        tmp_path_factory.mktemp(method) / "dog.safetensors",
        unet,
        "dog",
        config,
        base_name=EMBEDDED_NAME,
        token="<dog>",
        class_word="dog",
    )
    pipe = fresh(master)
    load_adapter(path, pipe.unet)
    return Native(method, path, generate(pipe))


@contextlib.contextmanager
def diffusers_warnings() -> Iterator[list[str]]:
    """Every warning diffusers logs (its loggers do not propagate to the root) and every Python warning."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)


def deltas(master, path: Path) -> dict[str, torch.Tensor]:
    """Dense W' - W0 per layer of a native file, through our own model (independent of the export code)."""
    unet = copy.deepcopy(master.unet)
    info = load_adapter(path, unet)
    with torch.no_grad():
        return {p: w.adapters[info.name].delta_weight(w.original_weight) for p, w in wrappers(unet)}


def tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}  # noqa: SIM118


# --- exports against stock diffusers ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(EXPORTS))
def test_export_generates_our_image_in_stock_diffusers(native, layout, master, base_image, tmp_path):
    assert np.abs(native.image - base_image).max() > 0.02  # the adapter visibly changes the image
    exported = EXPORTS[layout](native.path, tmp_path / f"{layout}.safetensors")
    pipe = fresh(master)
    with diffusers_warnings() as messages:
        pipe.load_lora_weights(str(exported))
    assert all(TEXT_ENCODER_NOTICE in m for m in messages), messages
    loaded = [name for name, module in pipe.unet.named_modules() if isinstance(module, LoraLayer)]
    assert sorted(loaded) == sorted(read_adapter(native.path).layers)  # every layer, none dropped
    assert np.abs(generate(pipe) - native.image).max() < PIXEL_TOLERANCE


@pytest.mark.parametrize("layout", list(EXPORTS))
def test_export_then_import_is_exact(native, layout, master, tmp_path):
    exported = EXPORTS[layout](native.path, tmp_path / f"{layout}.safetensors")
    report = import_lora(
        exported, master.unet, tmp_path / "back.safetensors", base_name=EMBEDDED_NAME, token="<dog>"
    )
    original = read_adapter(native.path)
    expected_rank = RANK * original.config.options.get("blocks", 1)  # bora_block exports rank b * r
    assert (report.layout, report.rank, report.padded) == (layout.split("-")[0], expected_rank, {})
    assert (report.skipped_text_encoder, report.skipped_not_linear) == ((), {})
    back = read_adapter(report.output)
    assert (back.config.method, back.config.rank, back.config.scaling) == ("lora", expected_rank, 1.0)
    assert (back.base_name, back.token, back.name) == (EMBEDDED_NAME, "<dog>", layout)
    assert back.layers == original.layers
    before, after = deltas(master, native.path), deltas(master, report.output)
    for layer, delta in before.items():
        torch.testing.assert_close(after[layer], delta, atol=1e-6, rtol=0, msg=layer)


def test_export_layouts_keys_alpha_and_metadata(native, tmp_path):
    original = read_adapter(native.path)
    rank = RANK * original.config.options.get("blocks", 1)
    layers = list(original.layers)

    diffusers, meta = tensors_and_metadata(export_diffusers(native.path, tmp_path / "d.safetensors"))
    assert set(diffusers) == {f"unet.{p}.lora_{x}.weight" for p in layers for x in "AB"}  # no alpha keys
    assert json.loads(meta["bora_diffusion"])["method"] == native.method
    legacy, _ = tensors_and_metadata(
        export_diffusers(native.path, tmp_path / "l.safetensors", key_style="legacy")
    )
    assert set(legacy) == {f"unet.{p}.lora.{x}.weight" for p in layers for x in ("down", "up")}

    kohya, meta = tensors_and_metadata(export_kohya(native.path, tmp_path / "k.safetensors"))
    names = {"lora_unet_" + p.replace(".", "_") for p in layers}
    assert set(kohya) == {f"{n}.{x}" for n in names for x in ("lora_down.weight", "lora_up.weight", "alpha")}
    for name in names:
        assert kohya[f"{name}.alpha"].shape == () and kohya[f"{name}.alpha"].dtype == torch.float32
        assert kohya[f"{name}.alpha"].item() / kohya[f"{name}.lora_down.weight"].shape[0] == ALPHA / RANK
    assert (meta["ss_network_dim"], float(meta["ss_network_alpha"])) == (str(rank), ALPHA / RANK * rank)
    assert (meta["ss_network_module"], meta["ss_output_name"]) == ("networks.lora", "dog")
    assert "ss_base_model_version" not in meta  # the tiny UNet's text width (32) names no SD version
    _, meta = tensors_and_metadata(
        export_kohya(native.path, tmp_path / "v1.safetensors", base_model_version="sd_v1")
    )
    assert (meta["ss_base_model_version"], meta["ss_v2"]) == ("sd_v1", "False")
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"

    half, _ = tensors_and_metadata(export_kohya(native.path, tmp_path / "h.safetensors", dtype=torch.float16))
    assert {t.dtype for k, t in half.items() if not k.endswith(".alpha")} == {torch.float16}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic: no temp files left


@pytest.mark.parametrize("layout", list(EXPORTS))
@pytest.mark.parametrize("method", NOT_ADDITIVE)
def test_methods_without_lora_factors_are_refused(method, layout, master, tmp_path):
    unet = copy.deepcopy(master.unet)
    config = AdapterConfig(method=method, rank=RANK)
    inject(unet, config, name="dog")
    path = save_adapter(tmp_path / "dog.safetensors", unet, "dog", config, base_name=EMBEDDED_NAME)
    target = tmp_path / "out.safetensors"
    with pytest.raises(
        NotExportableError, match=rf"{method}.*rescales the base weight.*fuse it into the base"
    ):
        EXPORTS[layout](path, target)
    assert not target.exists()


def test_unsupported_dtype_is_refused(native, tmp_path):
    with pytest.raises(ValueError, match="export dtype must be one of"):
        export_kohya(native.path, tmp_path / "k.safetensors", dtype=torch.float64)


@pytest.mark.parametrize(("layout", "vectors"), [("diffusers", 1), ("kohya", 1), ("diffusers", 3)])
def test_a_trained_token_embedding_exports_as_textual_inversion_stock_diffusers_loads(
    layout, vectors, master, tmp_path
):
    """LoRA file + embedding file in stock diffusers == our composition of the native file, on a prompt that
    uses the token (so the embedding matters); a token of 3 vectors is spelled out by diffusers itself."""
    prompt = "a photo of <zq-dog> dog"
    unet = copy.deepcopy(master.unet)
    config = AdapterConfig(method="sbora_fa", rank=RANK, alpha=ALPHA)
    inject(unet, config, name="dog")
    perturb(unet, "dog", std=0.1)
    width = master.text_encoder.get_input_embeddings().embedding_dim
    vector = torch.randn(vectors, width, generator=torch.Generator().manual_seed(5))
    native = save_adapter(
        tmp_path / "dog.safetensors",
        unet,
        "dog",
        config,
        base_name=EMBEDDED_NAME,
        token="<zq-dog>",
        token_embedding=vector,
    )
    ours = fresh(master)
    ours.tokenizer = copy.deepcopy(master.tokenizer)  # composition adds the token to it
    compose(ours, [(native, 1.0)])
    expected = generate(ours, prompt)
    assert np.abs(expected - generate(fresh(master), prompt)).max() > 0.02

    lora = EXPORTS[layout](native, tmp_path / f"{layout}.safetensors")
    embedding = export_embedding(native, embedding_path(lora))
    assert embedding == tmp_path / f"{layout}.embedding.safetensors"
    tensors, metadata = tensors_and_metadata(embedding)
    assert set(tensors) == {"emb_params"} and tensors["emb_params"].shape == (vectors, width)
    assert metadata["token"] == "<zq-dog>"
    stock = fresh(master)
    stock.tokenizer = copy.deepcopy(master.tokenizer)
    stock.load_lora_weights(str(lora))
    stock.load_textual_inversion(str(embedding), token="<zq-dog>")
    assert np.abs(generate(stock, prompt) - expected).max() < PIXEL_TOLERANCE


def test_a_file_without_an_embedding_writes_no_embedding_file(native, tmp_path):
    assert export_embedding(native.path, tmp_path / "x.embedding.safetensors") is None
    assert not (tmp_path / "x.embedding.safetensors").exists()


# --- imports of foreign files -----------------------------------------------------------------------------


def foreign_factors(master, seed: int = 3) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """Random factors on every attention Linear: down (r, in), up (out, r), with r = 2 on every third layer."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for i, path in enumerate(find_targets(master.unet)):
        linear = master.unet.get_submodule(path)
        rank = 2 if i % 3 == 0 else 4
        down = torch.randn(rank, linear.in_features, generator=g) * 0.3
        factors[path] = (down, torch.randn(linear.out_features, rank, generator=g) * 0.3, rank)
    return factors


def kohya_file(path: Path, factors, alpha: Callable[[int, int], float] | None = None, extra=None) -> Path:
    tensors = {}
    for i, (layer, (down, up, rank)) in enumerate(factors.items()):
        name = "lora_unet_" + layer.replace(".", "_")
        tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = down, up
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(alpha(i, rank))
    safetensors.torch.save_file({**tensors, **(extra or {})}, str(path))
    return path


def imported_image(master, report) -> np.ndarray:
    pipe = fresh(master)
    load_adapter(report.output, pipe.unet)
    return generate(pipe)


def test_kohya_mixed_ranks_import_as_stock_diffusers_loads_them(master, tmp_path):
    # One alpha for all layers: diffusers reads it right (see the per-layer test below for why that matters).
    path = kohya_file(tmp_path / "mixed.safetensors", foreign_factors(master), alpha=lambda i, r: 3.0)
    report = import_lora(path, master.unet, tmp_path / "n.safetensors", base_name=EMBEDDED_NAME)
    assert report.rank == 4 and set(report.padded.values()) == {2} and len(report.padded) == 11
    pipe = fresh(master)
    pipe.load_lora_weights(str(path))
    assert np.abs(generate(pipe) - imported_image(master, report)).max() < PIXEL_TOLERANCE


def test_kohya_per_layer_alphas_fold_exactly(master, tmp_path):
    factors = foreign_factors(master)
    path = kohya_file(tmp_path / "alphas.safetensors", factors, alpha=lambda i, r: 1.0 if i % 2 else 3.0)
    report = import_lora(path, master.unet, tmp_path / "n.safetensors", base_name=EMBEDDED_NAME)
    imported = deltas(master, report.output)
    for i, (layer, (down, up, rank)) in enumerate(factors.items()):
        # kohya, A1111 and ComfyUI scale each layer by its own alpha / rank. (diffusers 0.42 does not: its
        # converted alpha_pattern keys match no module, so peft warns and applies the most common alpha to all.)
        expected = ((1.0 if i % 2 else 3.0) / rank) * up @ down
        torch.testing.assert_close(imported[layer], expected, atol=1e-6, rtol=0, msg=layer)


def test_kohya_import_skips_text_encoder_and_conv_and_reports_them(master, tmp_path):
    factors = dict(list(foreign_factors(master).items())[:3])
    g = torch.Generator().manual_seed(5)
    conv = "down_blocks.0.resnets.0.conv1"  # a Conv2d (32 -> 32, 3x3) in the tiny UNet
    text = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    extra = {
        f"{text}.lora_down.weight": torch.randn(4, 32, generator=g),
        f"{text}.lora_up.weight": torch.randn(32, 4, generator=g),
        f"{text}.alpha": torch.tensor(4.0),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": torch.randn(4, 32, 3, 3, generator=g),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.randn(32, 4, 1, 1, generator=g),
    }
    path = kohya_file(tmp_path / "parts.safetensors", factors, extra=extra)
    report = import_lora(path, master.unet, tmp_path / "n.safetensors", base_name=EMBEDDED_NAME, name="cat")
    assert report.layers == tuple(factors) and report.name == "cat"
    assert report.skipped_text_encoder == (text,)
    assert report.skipped_not_linear == {conv: "Conv2d"}
    assert "skipped 1 text-encoder layer(s)" in report.summary()
    assert "skipped 1 non-Linear layer(s) (Conv2d)" in report.summary()
    assert set(read_adapter(report.output).layers) == set(factors)


def diffusers_file(path: Path, factors, *, legacy: bool = False, metadata=None) -> Path:
    tensors = {}
    for layer, (down, up, _) in factors.items():
        if legacy:  # the attention-processor names of diffusers < 0.22, without the unet. prefix
            head, _, projection = layer.rpartition(".to_")
            projection = "to_out" if projection == "out.0" else f"to_{projection}"
            tensors[f"{head}.processor.{projection}_lora.down.weight"] = down
            tensors[f"{head}.processor.{projection}_lora.up.weight"] = up
        else:
            tensors[f"unet.{layer}.lora_A.weight"], tensors[f"unet.{layer}.lora_B.weight"] = down, up
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    return path


def test_diffusers_adapter_metadata_alphas_import_as_stock_diffusers_loads_them(master, tmp_path):
    factors = foreign_factors(master)
    paths = list(factors)
    config = {  # what diffusers' save_lora_weights(unet_lora_adapter_metadata=...) records
        "unet.r": 4,
        "unet.lora_alpha": 8,
        "unet.rank_pattern": {f"^{p}": 2 for p, (_, _, r) in factors.items() if r == 2},
        "unet.alpha_pattern": {f"^{p}": 1.0 for p in paths[1::2]},
        "unet.target_modules": paths,
    }
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(config)}
    path = diffusers_file(tmp_path / "meta.safetensors", factors, metadata=metadata)
    report = import_lora(path, master.unet, tmp_path / "n.safetensors", base_name=EMBEDDED_NAME)
    pipe = fresh(master)
    pipe.load_lora_weights(str(path))
    assert np.abs(generate(pipe) - imported_image(master, report)).max() < PIXEL_TOLERANCE


def test_diffusers_attention_processor_names_import(master, tmp_path):
    factors = foreign_factors(master)
    path = diffusers_file(tmp_path / "old.safetensors", factors, legacy=True)
    report = import_lora(path, master.unet, tmp_path / "n.safetensors", base_name=EMBEDDED_NAME)
    imported = deltas(master, report.output)
    for layer, (down, up, _) in factors.items():
        torch.testing.assert_close(imported[layer], up @ down, atol=1e-6, rtol=0, msg=layer)


# --- import refusals --------------------------------------------------------------------------------------


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        pytest.param(
            {
                "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 32),
                "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(32, 4),
            },
            r"no LoRA layer for a Linear of this UNet.*lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            id="text-encoder-only",
        ),
        pytest.param(
            {
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(
                    4, 64
                ),
                "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(
                    64, 4
                ),
            },
            r"mixes kohya keys .* with diffusers keys",
            id="mixed-layouts",
        ),
        pytest.param(
            {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4)},
            r"neither kohya LoRA .* nor diffusers LoRA",
            id="unknown-layout",
        ),
        pytest.param(
            {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.hada_w1_a": torch.zeros(4, 4)},
            r"hada_w1_a is not part of a kohya LoRA.*LyCORIS",
            id="lycoris",
        ),
        pytest.param(
            {
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(
                    4, 64
                ),
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(
                    64, 4
                ),
            },
            r"key lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q\.lora_\w+\.weight names no layer of "
            r"this base UNet.*another base model",
            id="kohya-layer-not-in-base",
        ),
        pytest.param(
            {
                "unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(
                    4, 32
                ),
                "unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(
                    32, 4
                ),
            },
            r"names layer down_blocks\.7\..*which this base UNet does not have",
            id="diffusers-layer-not-in-base",
        ),
        pytest.param(
            {
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(
                    4, 640
                ),
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(
                    640, 4
                ),
            },
            r"down \(4, 640\) and up \(640, 4\), which do not factor this UNet's \(64, 64\) Linear",
            id="wrong-shapes",
        ),
        pytest.param(
            {"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 4)},
            r"has no matching down weight",
            id="up-without-down",
        ),
        pytest.param(
            {
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(
                    4, 64
                ),
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(
                    64, 4
                ),
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.dora_scale": torch.zeros(
                    1, 64
                ),
            },
            r"a DoRA file .*rescales the base weight",
            id="kohya-dora",
        ),
    ],
)
def test_import_refuses_with_the_reason(tensors, match, master, tmp_path):
    path = write(tmp_path / "foreign.safetensors", tensors)
    with pytest.raises(AdapterFileError, match=match):
        import_lora(path, master.unet, tmp_path / "out.safetensors", base_name=EMBEDDED_NAME)
    assert not (tmp_path / "out.safetensors").exists()


def test_import_refuses_a_native_file_and_a_pickle(master, tmp_path):
    unet = copy.deepcopy(master.unet)
    inject(unet, AdapterConfig(method="lora"), name="dog")
    native = save_adapter(
        tmp_path / "dog.safetensors", unet, "dog", AdapterConfig(method="lora"), base_name="x"
    )
    with pytest.raises(AdapterFileError, match="already a native bora-diffusion adapter; load it"):
        import_lora(native, master.unet, tmp_path / "out.safetensors", base_name=EMBEDDED_NAME)
    pickled = tmp_path / "lora.bin"
    torch.save({"x": torch.zeros(1)}, pickled)
    with pytest.raises(AdapterFileError, match="only .safetensors LoRA files are imported"):
        import_lora(pickled, master.unet, tmp_path / "out.safetensors", base_name=EMBEDDED_NAME)


def test_import_leaves_the_base_unet_untouched(master, tmp_path):
    before = {k: v.clone() for k, v in master.unet.state_dict().items()}
    modules = [type(m) for m in master.unet.modules()]
    path = kohya_file(tmp_path / "k.safetensors", foreign_factors(master), alpha=lambda i, r: 2.0)
    import_lora(path, master.unet, tmp_path / "n.safetensors", base_name=EMBEDDED_NAME)
    assert [type(m) for m in master.unet.modules()] == modules
    assert all(torch.equal(before[k], v) for k, v in master.unet.state_dict().items())


def test_cli_import_reads_the_foreign_file_once(master, tmp_path, monkeypatch, capsys):
    # `bora-diffusion import` reads the file before loading the base (to refuse a bad one early), then imports those
    # very tensors: a second read would double the time and memory of a multi-GB SDXL LoRA.
    factors = foreign_factors(master)
    path = kohya_file(tmp_path / "k.safetensors", factors, alpha=lambda i, r: 2.0)
    reads: list[Path] = []
    read = convert.read_safetensors

    def counting(file: Path, *args):
        reads.append(file)
        return read(file, *args)

    monkeypatch.setattr(convert, "read_safetensors", counting)
    monkeypatch.setattr(pipeline, "load_base", lambda base, device="cpu": master)
    assert cli.main(["import", str(path), str(tmp_path / "n.safetensors")]) == 0
    assert reads == [path]
    assert f"imported {len(factors)} UNet layer(s) at rank 4 from kohya file" in capsys.readouterr().out
    imported = deltas(master, tmp_path / "n.safetensors")
    for layer, (down, up, rank) in factors.items():
        torch.testing.assert_close(imported[layer], (2.0 / rank) * up @ down, atol=1e-6, rtol=0, msg=layer)
