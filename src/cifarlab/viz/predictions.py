"""One pass over the test set: logits and penultimate features, and which images to show.

The features come from a forward hook on the classifier layer (its input), so the same pass
gives the predictions for the PR curves and the vectors for the embedding projector, on
any architecture. Images are picked with the run's seed, so a rerun shows the same ones.
"""

from __future__ import annotations

import torch

from cifarlab.engine.tta import with_tta
from cifarlab.errors import ParamsError
from cifarlab.viz.hooks import capture_inputs
from cifarlab.viz.inputs import EvalInputs


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    inputs: EvalInputs,
    images: torch.Tensor,
    *,
    head: str,
    batch_size: int,
    device: torch.device,
    channels_last: bool = False,
    tta: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, K], features [N, D]) of uint8 images through the model's eval transforms.

    Multi-crop transforms (FiveCrop/TenCrop) average logits and features over the crops,
    as the evaluate stage averages its predictions. `tta` (evaluate.tta) averages the logits
    over its views as evaluate does, so the confusion matrices and PR curves match the
    stage's metrics; the features stay the plain image's (TTA's first view runs the
    unaltered batch, and the hook keeps the first input it sees).
    """
    model.eval()
    viewed = with_tta(model, tta)
    logits, feats = [], []
    with capture_inputs(model, head) as seen:
        for start in range(0, len(images), batch_size):
            x = inputs.predict(images[start : start + batch_size], None)
            b = x.shape[0]
            crops = x.shape[1] if x.dim() == 5 else 1
            x = x.reshape(-1, *x.shape[-3:]).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            seen.clear()
            out = viewed(x).float().reshape(b, crops, -1).mean(1)
            logits.append(out.cpu())
            feats.append(seen[0].reshape(b, crops, -1).mean(1).cpu())
    if not logits:
        return torch.empty(0, 0), torch.empty(0, 0)
    return torch.cat(logits), torch.cat(feats)


def choose(
    targets: torch.Tensor,
    preds: torch.Tensor,
    allowed: list[int],
    count: int,
    *,
    seed: int,
    mix: bool,
    key: str = "visualize.classes",
) -> list[int]:
    """Up to `count` test images of the allowed classes, in a seeded random order.

    With `mix`, half are right and half wrong where the test set has enough of each (right
    ones first), so Grad-CAM shows both what the model gets and what it misses.
    """
    keep = torch.isin(targets, torch.tensor(allowed, dtype=targets.dtype))
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    candidates = [i for i in order.tolist() if keep[i]]
    if not candidates:
        raise ParamsError(key, "the test set has no image of these classes", allowed)
    if not mix:
        return candidates[:count]
    right = [i for i in candidates if preds[i] == targets[i]]
    wrong = [i for i in candidates if preds[i] != targets[i]]
    n_right = min(len(right), count - min(len(wrong), count // 2))
    n_wrong = min(len(wrong), count - n_right)
    return right[:n_right] + wrong[:n_wrong]
