"""Models whose training forward returns more than logits: GoogLeNet and Inception-v3 with their auxiliary
classifiers (`model.aux_logits=true`).

In train mode torchvision returns a named tuple (main logits first, then the auxiliary heads' logits); in
eval mode the logits alone. The training loss adds each auxiliary head's loss with its paper's weight:
0.3 for GoogLeNet's two heads (Szegedy et al. 2015), 0.4 for Inception-v3's one (the weight of the
reference TF-slim training). Accuracy and the monitor only ever see the main logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# output type name -> weight of each auxiliary loss
AUX_LOSS_WEIGHTS = {"GoogLeNetOutputs": 0.3, "InceptionOutputs": 0.4}
AUX_MODELS = ("googlenet", "inception_v3")


def split_outputs(output: Any) -> tuple[torch.Tensor, list[tuple[float, torch.Tensor]]]:
    """(main logits, [(weight, auxiliary logits), ...]) of a model's forward output."""
    if isinstance(output, torch.Tensor):
        return output, []
    weight = AUX_LOSS_WEIGHTS.get(type(output).__name__)
    if weight is None or not isinstance(output, tuple):
        raise TypeError(f"the model returned a {type(output).__name__}; trainlab expects logits (a tensor)")
    main, *aux = output
    return main, [(weight, a) for a in aux if a is not None]


def training_loss(
    output: Any, targets: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(main logits, loss): the main head's loss plus each auxiliary head's, weighted."""
    logits, aux = split_outputs(output)
    loss = loss_fn(logits, targets)
    for weight, aux_logits in aux:
        loss = loss + weight * loss_fn(aux_logits, targets)
    return logits, loss
