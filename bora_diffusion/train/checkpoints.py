"""Training checkpoints: writing one atomically, reading the newest readable one, and the resume rule (which
settings a resumed run must share with the checkpoint).

A checkpoint is `<out>/checkpoints/<concept>/step-NNNNNN/state.pt`: the step, the optimizer's and the learning-rate
schedule's states, the one generator every process draws from, the adapter's and the token rows' tensors and the
training settings; the last KEEP_CHECKPOINTS are kept. `trainer.Trainer` decides what goes in.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from ..atomic import temp_dir
from ..config import TrainConfig
from ..errors import ConfigError

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


def write_checkpoint(root: Path, step: int, state: dict) -> Path:
    """Write `state` atomically as `root/step-NNNNNN/state.pt`, keeping the last KEEP_CHECKPOINTS; return the
    folder."""
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(root)  # a kill during an earlier write leaves its staging folder behind
    staging = temp_dir(root)  # the umask's folder mode: mkdtemp's 0700 hides checkpoints from others
    torch.save(state, staging / "state.pt")
    target = root / f"step-{step:06d}"
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    for old in sorted(root.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)
    return target


def resume_state(root: Path, config: TrainConfig, processes: int) -> tuple[dict, Path] | None:
    """The newest readable checkpoint in `root` and its folder, or None when there is none; a ConfigError when it
    was made with settings this run (`config` on `processes` processes) cannot continue."""
    remove_stale_staging(root)
    found = sorted(root.glob("step-*"))
    if not found:
        return None
    state, found = _read_checkpoint(found)
    saved = TrainConfig.from_dict(json.loads(state["config"]))
    # What must match is the global batch, not its split: the same global batch on another process count
    # continues on the same draws (equal up to float summation order, bit for bit on the same count).
    saved_processes = int(state.get("processes", 1))  # older checkpoints: 1
    saved_key, key = _resume_key(saved, saved_processes), _resume_key(config, processes)
    if saved_key != key:
        raise ConfigError(f"{found[-1]}: " + _resume_mismatch(saved_key, key, processes))
    return state, found[-1]


def saved_embeddings(state: dict) -> list[torch.Tensor]:
    """A checkpoint's token embeddings, one (N, D_e) per text encoder; checkpoints written before SDXL held
    one tensor (or None) under `token_embedding`."""
    if "token_embeddings" in state:
        return state["token_embeddings"]
    single = state.get("token_embedding")
    return [] if single is None else [single]


def remove_stale_staging(root: Path) -> None:
    """Remove the `.tmp-*` staging folders a killed checkpoint write left in `root` (none is in use: one
    process trains one concept's checkpoints at a time)."""
    for stale in root.glob(".tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def newest_checkpoint(root: Path) -> Path | None:
    found = sorted(Path(root).glob("step-*"))
    return found[-1] if found else None


def _read_checkpoint(found: list[Path]) -> tuple[dict, list[Path]]:
    """The newest readable checkpoint's state and the checkpoints up to it; an unreadable newest one (truncated,
    or a pickle that is not plain weights) falls back to the one before (KEEP_CHECKPOINTS keeps two), saying so."""
    for index in range(len(found) - 1, -1, -1):
        path = found[index] / "state.pt"
        try:
            state = torch.load(path, weights_only=True)  # tensors and plain data only, no pickle code
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("it holds no training state")
            return state, found[: index + 1]
        except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError... for a bad file
            reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
            if index == 0:
                raise ConfigError(
                    f"{path}: the checkpoint is unreadable ({reason[:120]}) and there is no earlier one: "
                    "delete it and resume, or start a new output folder"
                ) from None
            print(
                f"warning: {path} is unreadable ({reason[:120]}); resuming from {found[index - 1].name} instead",
                file=sys.stderr,
            )
    raise AssertionError("unreachable")


def _resume_key(config: TrainConfig, processes: int) -> dict:
    """The settings a resumed run must share with the checkpoint (sampling and checkpoint cadence may change, so
    may `compile`, a speed choice, and so may the process count, if the global batch stays)."""
    data = config.to_dict()
    for free in ("checkpoint_every", "sample_every", "sample_prompts", "compile"):
        data.pop(free)
    data["global_batch"] = data.pop("batch_size") * processes
    return data


def _resume_mismatch(saved: dict, current: dict, processes: int) -> str:
    """Why a resume is refused, with the fix."""
    others = {k for k in saved if saved[k] != current.get(k)}
    if others != {"global_batch"}:
        return (
            "the checkpoint was made with other training settings; "
            "resume with the same settings or start a new output folder"
        )
    size = saved["global_batch"]
    fix = (
        f"--batch-size {size // processes} on {processes} process{'es' if processes > 1 else ''}"
        if size % processes == 0
        else f"a process count that divides {size}"
    )
    return (
        f"the checkpoint's global batch (batch size x processes) is {size}, this run's is "
        f"{current['global_batch']}; resume with {fix}, or start a new output folder"
    )
