"""Models (tutorial chapter 2): names, building, initialisation, finetuning and summaries.

`model.name` is `<source>.<arch>`: `cifarlab.resnet8` (the fast default), `tutorial.*` (the
tutorial's own nets) or `torchvision.*` (every torchvision classification model, adapted to
32x32 inputs). See registry.py for the API the training stage uses.
"""

from cifarlab.models.finetune import LoadReport, freeze, load_pretrained, read_state_dict
from cifarlab.models.init import apply_init, check_init
from cifarlab.models.registry import DEFAULT_MODEL, build_model, check_model, create_model, model_names, split_name
from cifarlab.models.summary import summarize

__all__ = [
    "DEFAULT_MODEL",
    "LoadReport",
    "apply_init",
    "build_model",
    "check_init",
    "check_model",
    "create_model",
    "freeze",
    "load_pretrained",
    "model_names",
    "read_state_dict",
    "split_name",
    "summarize",
]
