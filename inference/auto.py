"""Load any reranker folder with the class of the family its `rerankforge.json` names."""

from __future__ import annotations

from rerankforge.inference.backend_choice import AUTO
from rerankforge.inference.modeling.families import get_family
from rerankforge.inference.modeling.folder_checks import folder_family
from rerankforge.inference.modeling.sources import resolve_model_path


def load_reranker(name_or_path: str, backend: str | None = None, **kwargs: object):
    """Our checkpoints of any family; folders without rerankforge.json load as cross-encoders (as LLM rerankers
    when their config.json is a causal LM).

    ``backend`` None or "auto" is the measured default for cross-encoders and torch for the other families;
    the CPU graph backends (ONNX, OpenVINO) are for cross-encoders, and the other families refuse them.
    """
    family = folder_family(resolve_model_path(name_or_path)) or "cross_encoder"
    if family != "cross_encoder" and backend in (None, AUTO):
        backend = "torch"
    return get_family(family).inference_class.from_pretrained(name_or_path, backend=backend, **kwargs)
