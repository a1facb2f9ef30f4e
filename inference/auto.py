"""Load any reranker folder with the class of the family its `rerankforge.json` names."""

from __future__ import annotations

from rerankforge.trainer.modeling.sources import resolve_model_path
from rerankforge.trainer.spec import RerankerSpec


def load_reranker(name_or_path: str, backend: str = "torch", **kwargs: object):
    """Our checkpoints of any family; folders without rerankforge.json load as cross-encoders.

    ``backend`` other than "torch" (the ONNX backends) is for cross-encoders; the other families refuse it.
    """
    from rerankforge.trainer.families import get_family  # the one family mapping (imports the trainers)

    spec = RerankerSpec.load(resolve_model_path(name_or_path))
    family = spec.family if spec is not None else "cross_encoder"
    return get_family(family).inference_class.from_pretrained(name_or_path, backend=backend, **kwargs)
