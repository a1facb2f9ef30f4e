"""Score (query, passage) pairs with checkpoints that rerankforge trained, or compatible ones."""

from rerankforge.inference.flag_compat import FlagLLMReranker, FlagReranker, LayerWiseFlagLLMReranker
from rerankforge.inference.layerwise_reranker import LayerwiseReranker
from rerankforge.inference.llm_reranker import LLMReranker
from rerankforge.inference.reranker import Reranker

__all__ = [
    "FlagLLMReranker",
    "FlagReranker",
    "LLMReranker",
    "LayerWiseFlagLLMReranker",
    "LayerwiseReranker",
    "Reranker",
]
