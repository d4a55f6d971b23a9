"""When training has diverged, so that it stops instead of saving a broken model as a success.

A run has diverged after an epoch when its train or valid loss is not finite, its weights are
not all finite, or its valid loss is more than DIVERGENCE_FACTOR times the loss of an
uninformed model (probability 0.5 at every pixel), which is about where every run starts.
The valid loss is the one compared: it is the plain loss on the main head, where the train
loss also sums the deep-supervision heads'. After an epoch trained at half size (--progressive)
the train loss is compared instead: validation runs at full size, where BatchNorm statistics
gathered on the smaller images can push the valid loss of a sound model past the limit (the
ResNet34-UNet at batch 8 reached 65 after its third half-size epoch, with a train loss of
0.9). A soft Dice loss never exceeds 1, so with --loss dice only the non-finite cases apply.
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from petseg.checkpoint import last_checkpoint_path, nonfinite_count

DIVERGENCE_FACTOR = 10.0
# The loss of probability 0.5 everywhere: ln 2 for BCE; soft Dice loss is at most 1.
UNINFORMED_LOSS: dict[str, float] = {"bce": math.log(2), "dice": 1.0, "bce_dice": math.log(2) + 1}


def divergence(
    train_loss: float,
    valid_loss: float | None,
    loss: str,
    model: nn.Module,
    *,
    low_res: bool = False,
) -> str:
    """Why the run has diverged after this epoch, or '' when it has not. low_res: the epoch
    trained at half size, so the train loss is held to the limit instead of the valid loss."""
    if not math.isfinite(train_loss):
        return f"train loss {train_loss}"
    if valid_loss is not None and not math.isfinite(valid_loss):
        return f"valid loss {valid_loss}"
    bad = nonfinite_count(model.state_dict())
    if bad:
        return f"{bad:,} weights are NaN or infinite"
    limit = DIVERGENCE_FACTOR * UNINFORMED_LOSS.get(loss, math.inf)
    judged, value = ("train loss", train_loss) if low_res else ("valid loss", valid_loss)
    if value is not None and value > limit:
        return (
            f"{judged} {value:.3g}, above {limit:.3g}, {DIVERGENCE_FACTOR:g}x the loss of "
            "predicting 0.5 everywhere"
        )
    return ""


def diverged_message(epoch: int, reason: str, model_path: Path) -> str:
    """The one line that stops a diverged run: what happened, what was kept, what to do."""
    last = last_checkpoint_path(model_path)
    if not last.exists():
        return (
            f"training diverged in epoch {epoch} ({reason}); nothing saved; lower "
            "--learning-rate and run again"
        )
    kept = f"{last} (epoch {epoch - 1})" + (f" and {model_path}" if model_path.exists() else "")
    return (
        f"training diverged in epoch {epoch} ({reason}); not saved, {kept} stay as they were; "
        f"lower --learning-rate and run the same command to resume after epoch {epoch - 1}"
    )


def counts_as_best(dice: float, valid_loss: float | None, best_dice: float) -> bool:
    """A validation with a non-finite loss or Dice is never the best one."""
    finite = math.isfinite(dice) and (valid_loss is None or math.isfinite(valid_loss))
    return finite and dice > best_dice
