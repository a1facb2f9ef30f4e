"""Score (query, passage) pairs with checkpoints that rerankforge trained, or compatible ones."""

from rerankforge.inference.flag_compat import FlagReranker
from rerankforge.inference.reranker import Reranker

__all__ = ["FlagReranker", "Reranker"]
