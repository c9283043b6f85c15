"""model.whiten run on real images (issue 22): the first conv set from the training images'
patch whitening, as the net sees them. Its own module because two commands need it before
their first step, the train stage and `cifarlab lr-find` (whose sweep would otherwise probe a
different net from the one the stage trains); the linear algebra is models/whiten.py."""

from __future__ import annotations

from pathlib import Path

import torch

from cifarlab.engine.sources import make_source
from cifarlab.models.whiten import apply_whitening
from cifarlab.params import Params


def whiten_model(params: Params, model, images, labels, common: dict, *, log) -> torch.nn.Parameter | None:
    """Whiten `model`'s first conv from the first model.whiten.images of `images` (augment.eval
    applied); returns the conv's bias, trained for bias_epochs, or None where it has none.

    `common`: make_source's keyword arguments other than the images (stats, runtime, seed...).
    """
    wp = params.model.whiten
    n = min(wp.images, len(labels))
    source = make_source(
        params.augment.eval,
        "augment.eval",
        images=images[:n],
        labels=labels[:n],
        index=Path("-"),
        batch_size=500,
        shuffle=False,
        **{**common, "backend": "tensor"},
    )
    xs = [x.reshape(-1, *x.shape[-3:]).float().cpu() for x, _ in source.batches(0)]
    name, bias = apply_whitening(model, torch.cat(xs), wp.eps)
    conv = dict(model.named_modules())[name]
    kept = (
        "no bias"
        if bias is None
        else "bias trained " + ("throughout" if wp.bias_epochs is None else f"for {wp.bias_epochs} epochs")
    )
    log(
        f"model.whiten: first conv '{name}' ({conv.out_channels} filters, {'x'.join(map(str, conv.kernel_size))}) "
        f"whitens the patches of {n} training images; weight frozen, {kept}"
    )
    return bias
