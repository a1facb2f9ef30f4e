"""`LayerwiseReranker`: per-layer scores that stop at the deepest requested layer (speed for quality)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rerankforge.inference.batching import probabilities
from rerankforge.inference.llm_reranker import LLMLengths, LLMReranker
from rerankforge.inference.long_passages import LongPassages
from rerankforge.inference.modeling.layerwise import LayerwiseRerankerModel, layer_name
from rerankforge.inference.modeling.spec import LayerwiseSpec
from rerankforge.inference.pairs import to_pairs
from rerankforge.inference.reranker import Pair


class LayerwiseReranker(LLMReranker):
    """``compute_score(pairs, cutoff_layers=[k, ...])``: one score list per requested layer.

    Loads rerankforge layerwise folders only (adapter + heads on the recorded base model, or a merged model with
    its heads): a plain causal LM has no heads to score with.
    """

    model_class = LayerwiseRerankerModel
    model: LayerwiseRerankerModel

    @property
    def layers(self) -> list[int]:
        if self.pool is not None:  # the weights live in the workers: the spec names the heads' layers
            return sorted(set(int(k) for k in self.spec.layers))
        return list(self.model.layers)

    @classmethod
    def plain_spec(cls, tokenizer, path: str, input_format: str = "bge") -> LayerwiseSpec:
        raise ValueError(
            f"{path} holds no rerankforge.json; LayerwiseReranker loads rerankforge layerwise folders"
        )

    def resolve_layers(self, cutoff_layers: Sequence[int] | int | None) -> list[int]:
        if cutoff_layers is None:
            return [self.layers[-1]]
        wanted = [cutoff_layers] if isinstance(cutoff_layers, int) else list(cutoff_layers)
        unknown = [k for k in wanted if k not in self.layers]
        if unknown:
            raise ValueError(f"cutoff_layers {unknown} have no head; this model scores layers {self.layers}")
        return wanted

    def layer_scores(self, batch: dict[str, torch.Tensor], layers: list[int]) -> torch.Tensor:
        """``[rows, layers]`` float32 scores of the requested layers; the model stops at the deepest one."""
        scores = self.model(**batch, layers=layers)
        return torch.stack([scores[layer_name(k)].float() for k in layers], dim=-1)

    def compute_score(
        self,
        pairs: Pair | Sequence[Pair],
        batch_size: int | None = None,
        max_length: int | None = None,
        normalize: bool = False,
        prompt: str | None = None,
        show_progress: bool | None = None,
        cutoff_layers: Sequence[int] | int | None = None,
        long_passages: str | LongPassages | None = None,
        window: int | None = None,
        stride: int | None = None,
        return_windows: bool = False,
    ):
        """One list of scores per requested layer (the last layer's when none is asked); a single requested
        layer gives a single list, and a single pair gives floats instead of lists. ``long_passages``,
        ``window``, ``stride``, ``return_windows``: as `Reranker.compute_score`, each layer aggregated over the
        windows on its own."""
        layers = self.resolve_layers(cutoff_layers)
        pair_list, single = to_pairs(pairs)
        lengths = self.lengths_for(max_length)
        settings = self.passage_settings(long_passages, window, stride)
        counts = [1] * len(pair_list)
        if settings.windowed:

            def score(window_pairs: list) -> list[list[float]]:
                per_layer = self._score_layers(window_pairs, lengths, layers, batch_size, False, prompt,
                                               show_progress)  # fmt: skip
                return [list(row) for row in zip(*per_layer, strict=True)]

            rows, counts = self._windowed(pair_list, settings, lengths, score, prompt)
            per_layer = [[row[i] for row in rows] for i in range(len(layers))]
            if normalize and rows:
                per_layer = [
                    probabilities(self.spec, column, layer)
                    for column, layer in zip(per_layer, layers, strict=True)
                ]
        else:
            per_layer = self._score_layers(pair_list, lengths, layers, batch_size, normalize, prompt,
                                           show_progress)  # fmt: skip
        if single:
            per_layer = [scores[0] for scores in per_layer]
        result = per_layer[0] if len(layers) == 1 else per_layer
        if return_windows:
            return result, (counts[0] if single else counts)
        return result

    def _score_layers(
        self,
        pairs: Sequence[Pair],
        lengths: LLMLengths,
        layers: list[int],
        batch_size: int | None = None,
        normalize: bool = False,
        prompt: str | None = None,
        show_progress: bool | None = None,
    ) -> list[list[float]]:
        """``[layer][pair]`` scores, encoded and scored a chunk of pairs at a time (several devices: each worker
        process scores a share, and answers its ``[pair][layer]`` rows)."""
        if self.pool is not None:
            rows = self.pool.score(
                pairs, show_progress, method="_score_rows", lengths=lengths, layers=layers,
                batch_size=batch_size or self.batch_size, normalize=normalize, prompt=prompt,
                _settings={"max_batch_tokens": self.max_batch_tokens},
            )  # fmt: skip
        else:
            rows = self._score_rows(pairs, lengths, layers, batch_size, normalize, prompt, show_progress)
        return [[row[i] for row in rows] for i in range(len(layers))]

    def _score_rows(
        self,
        pairs: Sequence[Pair],
        lengths: LLMLengths,
        layers: list[int],
        batch_size: int | None = None,
        normalize: bool = False,
        prompt: str | None = None,
        show_progress: bool | None = None,
    ) -> list[list[float]]:
        """``[pair][layer]`` scores on this process's model (what a `DevicePool` worker answers)."""
        stages = self.pipeline_stages(lengths, prompt, score=lambda batch: self.layer_scores(batch, layers))
        rows = self.run_stages(pairs, stages, batch_size, show_progress)
        if not normalize:
            return rows
        columns = [
            probabilities(self.spec, [row[i] for row in rows], layer) for i, layer in enumerate(layers)
        ]
        return [list(row) for row in zip(*columns, strict=True)] if rows else rows  # [pair][layer] stays so

    def _score(self, pairs, lengths, batch_size=None, normalize=False, prompt=None, show_progress=None):
        """The last layer's scores: what `rank`, `rerankforge-eval` and teacher scoring use."""
        return self._score_layers(
            pairs, lengths, [self.layers[-1]], batch_size, normalize, prompt, show_progress
        )[0]
