"""Training callbacks: the trainer reports through these and never prints.

A callback overrides any of the `on_*` hooks. The terminal bar and tensorboard logs are callbacks; so is the web
app's live progress.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass
class TrainState:
    """What a callback can read: where the run is and how it goes."""

    concept: str
    step: int  # optimizer steps done
    total_steps: int
    loss: float = math.nan  # mean loss of the last step
    lr: float = 0.0
    seconds: float = 0.0  # wall time since (re)start
    # Set by a callback (e.g. the app's stop button) to end the run after this step: the adapter is saved and a
    # checkpoint written as at the end of a full run, so `train(resume=True)` later continues from here.
    stop: bool = False


class Callback:
    def on_train_start(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None: ...

    def on_sample(self, state: TrainState, images: list[Image.Image], prompts: list[str]) -> None: ...

    def on_checkpoint(self, state: TrainState, path: Path) -> None: ...

    def on_train_end(self, state: TrainState, adapter_path: Path) -> None: ...


class ProgressBar(Callback):
    """A tqdm bar with loss, lr, it/s and ETA in the terminal."""

    def __init__(self, **tqdm_kwargs) -> None:
        self.tqdm_kwargs = tqdm_kwargs
        self.bar = None

    def on_train_start(self, state: TrainState) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=state.total_steps, initial=state.step, desc=state.concept, unit="step", **self.tqdm_kwargs
        )

    def on_step_end(self, state: TrainState) -> None:
        self.bar.update(state.step - self.bar.n)
        self.bar.set_postfix(loss=f"{state.loss:.4f}", lr=f"{state.lr:.2e}", refresh=False)

    def on_train_end(self, state: TrainState, adapter_path: Path) -> None:
        self.bar.close()


class TensorBoardLog(Callback):
    """Loss and learning rate per step, and sample images, in a tensorboard log folder."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_train_start(self, state: TrainState) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir / state.concept))

    def on_step_end(self, state: TrainState) -> None:
        self.writer.add_scalar("loss", state.loss, state.step)
        self.writer.add_scalar("lr", state.lr, state.step)

    def on_sample(self, state: TrainState, images: list[Image.Image], prompts: list[str]) -> None:
        import numpy as np

        for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            self.writer.add_image(f"sample/{i}", np.asarray(image), state.step, dataformats="HWC")
            self.writer.add_text(f"sample/{i}", prompt, state.step)

    def on_train_end(self, state: TrainState, adapter_path: Path) -> None:
        self.writer.close()
