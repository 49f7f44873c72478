from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from ckptkit.training import DataPosition, TrainingState

# Two shared CPU cores: more intra-op threads only spin against each other on these tiny tensors.
torch.set_num_threads(1)


def _make_state(*, step: int = 0, micro_step: int = 0, val_loss: float | None = None,
                scaler: bool = False) -> TrainingState:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    for _ in range(2):
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    if micro_step:
        model(torch.randn(3, 4)).sum().backward()  # a half-accumulated window
    # The position the trainer's loop would be at: `step` windows of 2 batches, then `micro_step` more.
    epoch, batch = divmod(2 * step + micro_step, 10)
    position = DataPosition(epoch=epoch, batch_in_epoch=batch, steps_per_epoch=10, micro_step=micro_step,
                            grad_accum=2, sampler_seed=5, batch_size=3)
    return TrainingState(
        model=model, optimizer=optimizer, scheduler=scheduler, config={"name": "unit", "lr": 1e-2},
        position=position, global_step=step, best_val_loss=val_loss if val_loss is not None else float("inf"),
        last_val_loss=val_loss, train_history=[{"step": step, "loss": 1.5}], val_history=[],
        window_loss_sum=0.75 if micro_step else 0.0, trainer="unit",
        scaler=torch.amp.GradScaler("cpu", init_scale=1024.0) if scaler else None,
    )


@pytest.fixture
def make_state() -> Callable[..., TrainingState]:
    return _make_state
