"""Exercise every adapter method on a real UNet, end to end, and measure what a user would ask first.

For each method: inject it on the UNet's targets, take one AdamW training step on a denoising loss, check that
the fused model gives the live model's output, save the adapter file, then remove it and check that the UNet's
weights are bit-identical to before. This is the project's main job until training lands (issue: concept training).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import available
from .config import AdapterConfig
from .formats import save_adapter
from .inject import eject, inject, mark_trainable, merge, unmerge


@dataclass(frozen=True)
class MethodCheck:
    method: str
    rank: int
    layers: int
    trainable: int
    file_bytes: int
    step_seconds: float
    loss_before: float  # denoising loss of the untouched UNet (adapters start as identity)
    loss_after: float  # the same loss after one AdamW step on the adapter alone
    fuse_error: float  # max |fused - live| over the UNet output
    restored_exactly: bool


def check_methods(
    unet: nn.Module,
    *,
    base_name: str,
    rank: int = 4,
    targets: str | tuple[str, ...] = "attention",
    methods: list[str] | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    on_result: Callable[[MethodCheck], None] | None = None,
) -> list[MethodCheck]:
    """Run the check for each method (default: all) and return one `MethodCheck` each.

    Adapter files are written to `out_dir` (a temporary folder when None). `on_result` is called after each method,
    so a caller can show progress; the library itself never prints.
    """
    inputs = _unet_inputs(unet, seed)
    originals = {name: p.detach().clone() for name, p in unet.named_parameters()}
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(out_dir) if out_dir is not None else Path(scratch)
        for method in methods or available():
            config = AdapterConfig(method=method, rank=rank, targets=targets, seed=seed)
            result = _check_one(unet, config, inputs, originals, folder / f"{method}.safetensors", base_name)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def _check_one(unet, config, inputs, originals, path: Path, base_name: str) -> MethodCheck:
    layers = inject(unet, config, name="check")
    params = mark_trainable(unet, ["check"])
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    noise = inputs.pop("noise")
    start = time.perf_counter()
    loss = F.mse_loss(unet(**inputs).sample, noise)
    loss.backward()
    optimizer.step()
    step_seconds = time.perf_counter() - start
    inputs["noise"] = noise
    with torch.no_grad():
        live = unet(**_model_args(inputs)).sample
        loss_after = F.mse_loss(live, noise)
        merge(unet)
        fused = unet(**_model_args(inputs)).sample
        unmerge(unet)
    save_adapter(path, unet, "check", config, base_name=base_name)
    eject(unet)
    restored = all(torch.equal(p, originals[n]) for n, p in unet.named_parameters())
    return MethodCheck(
        method=config.method,
        rank=config.rank,
        layers=len(layers),
        trainable=sum(p.numel() for p in params),
        file_bytes=path.stat().st_size,
        step_seconds=step_seconds,
        loss_before=float(loss.detach()),
        loss_after=float(loss_after),
        fuse_error=float((fused - live).abs().max()),
        restored_exactly=restored,
    )


def _unet_inputs(unet: nn.Module, seed: int) -> dict:
    """Random latents, noise, timesteps and text states shaped for this UNet's config.

    An SDXL UNet (`addition_embed_type="text_time"`) also takes the pooled text embedding and the six size/crop
    time ids; their widths follow from the config: the pooled width is what the projection takes beyond the
    six Fourier-embedded time ids.
    """
    config = unet.config
    g = torch.Generator().manual_seed(seed)
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    shape = (1, config.in_channels, size, size)
    device, dtype = unet.device, unet.dtype
    inputs = {
        "sample": torch.randn(shape, generator=g).to(device, dtype),
        "noise": torch.randn(shape, generator=g).to(device, dtype),
        "timestep": torch.tensor([500], device=device),
        "encoder_hidden_states": torch.randn(1, 77, config.cross_attention_dim, generator=g).to(
            device, dtype
        ),
    }
    if getattr(config, "addition_embed_type", None) == "text_time":
        pooled_width = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        pixels = float(size * 8)  # the VAE's 8x: (original h, w, crop top, left, target h, w)
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled_width, generator=g).to(device, dtype),
            "time_ids": torch.tensor(
                [[pixels, pixels, 0.0, 0.0, pixels, pixels]], device=device, dtype=dtype
            ),
        }
    return inputs


def _model_args(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "noise"}
