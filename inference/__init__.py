"""Score (query, passage) pairs with checkpoints that rerankforge trained, or compatible ones."""

from rerankforge.inference.auto import load_reranker
from rerankforge.inference.flag_compat import (
    FlagAutoReranker,
    FlagLLMReranker,
    FlagReranker,
    LayerWiseFlagLLMReranker,
)
from rerankforge.inference.layerwise_reranker import LayerwiseReranker
from rerankforge.inference.llm_reranker import LLMReranker
from rerankforge.inference.reranker import Reranker

__all__ = [
    "FlagAutoReranker",
    "FlagLLMReranker",
    "FlagReranker",
    "LLMReranker",
    "LayerWiseFlagLLMReranker",
    "LayerwiseReranker",
    "Reranker",
    "load_reranker",
]
