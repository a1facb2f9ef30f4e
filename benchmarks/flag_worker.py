"""Runs inside the FlagEmbedding environment: times FlagReranker.compute_score, sentence-transformers'
CrossEncoder.predict and FlagLLMReranker.compute_score on request (one JSON line in, one out), models loaded once.

Never imports rerankforge: the orchestrator, `benchmarks/inference_speed.py`, runs rerankforge in its own
processes (`benchmarks/rerankforge_worker.py`).
"""

from __future__ import annotations

import argparse

from scoring_worker import Scorer, serve


def skip_forward(model) -> None:
    """The Hugging Face model's forward replaced by zeros of the logits' shape: what is left is the host side."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    def zeros(input_ids=None, **kwargs) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=torch.zeros(input_ids.shape[0], 1, device=input_ids.device))

    model.forward = zeros


def sentence_transformers_backend(backend: str, args: argparse.Namespace) -> Scorer:
    """CrossEncoder on its own CPU backends, as its documentation shows them: "onnx" (exported by optimum on
    first load), "onnx-int8" (`export_dynamic_quantized_onnx_model` with the avx512_vnni config) and
    "openvino" (optimum-intel, with OpenVINO's default precision for this processor)."""
    import torch
    from sentence_transformers import CrossEncoder, export_dynamic_quantized_onnx_model

    if backend == "onnx-int8":
        exported = CrossEncoder(args.cross_encoder, device="cpu", max_length=512, backend="onnx")
        export_dynamic_quantized_onnx_model(exported, "avx512_vnni", args.cross_encoder)
        kwargs = {"backend": "onnx", "model_kwargs": {"file_name": "onnx/model_qint8_avx512_vnni.onnx"}}
    else:
        kwargs = {"backend": backend}
    model = CrossEncoder(args.cross_encoder, device="cpu", max_length=512, **kwargs)
    identity = torch.nn.Identity()
    return lambda p, batch: model.predict(
        p, batch_size=batch, activation_fn=identity, show_progress_bar=False
    ).tolist()


def load_tool(name: str, args: argparse.Namespace) -> tuple[Scorer, str]:
    """The scorer and which pair list it takes."""
    import torch

    if name == "flagembedding":
        from FlagEmbedding import FlagReranker

        reranker = FlagReranker(args.cross_encoder, use_fp16=False, devices=args.device)
        if args.skip_forward:
            skip_forward(reranker.model)
        return (lambda p, batch: reranker.compute_score(p, batch_size=batch, max_length=512)), "cross_encoder"
    if name == "sentence_transformers":
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(args.cross_encoder, device=args.device, max_length=512)
        if args.skip_forward:
            skip_forward(model.model)
        identity = torch.nn.Identity()

        def predict(p: list[list[str]], batch: int) -> list[float]:
            return model.predict(
                p, batch_size=batch, activation_fn=identity, show_progress_bar=False
            ).tolist()

        return predict, "cross_encoder"
    if name.startswith("sentence_transformers-"):
        return sentence_transformers_backend(
            name.removeprefix("sentence_transformers-"), args
        ), "cross_encoder"
    if name == "flagembedding-llm":
        from FlagEmbedding import FlagLLMReranker

        llm = FlagLLMReranker(args.llm, use_fp16=False, devices=args.device)
        return (lambda p, batch: llm.compute_score(p, batch_size=batch, max_length=512)), "llm"
    raise ValueError(f"unknown tool {name!r}")


if __name__ == "__main__":
    serve(load_tool)
