"""How other engines are started on an export: vLLM's arguments (the answer tokens as a score head for a causal
LLM export, the ``rerank`` chat template where the folder has one) and the card section that prints them."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from rerankforge.inference.modeling.spec import LLMSpec, RerankerSpec
from rerankforge.trainer.model_card import sentence_transformers_section
from rerankforge.trainer.sentence_transformers_files import (
    CAUSAL,
    CLASSIFIER,
    TEMPLATE_DIR,
    TEMPLATE_NAME,
    write_sentence_transformers_files,
)


def vllm_arguments(folder: Path, template_path: str | None = None) -> list[str]:
    """vLLM's arguments for this export: a causal LLM's answer tokens as its score head (``hf_overrides``) and
    the ``rerank`` chat template where the folder has one (``template_path``: how to name it, e.g. relative)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    architecture = (config.get("architectures") or [""])[0]
    arguments = ["--runner", "pooling"]
    if architecture.endswith("ForCausalLM"):
        spec = RerankerSpec.load(folder)
        if not isinstance(spec, LLMSpec) or spec.family_name != "llm":
            raise ValueError(
                f"{folder}: vLLM serves a causal LM through its answer tokens, which only the llm family scores "
                "with (a layerwise model has heads of its own: export it --as-sequence-classification)"
            )
        two_way = spec.score == "yes_minus_no"
        overrides = {
            "architectures": [architecture.removesuffix("ForCausalLM") + "ForSequenceClassification"],
            "classifier_from_token": [spec.no_token, spec.yes_token] if two_way else [spec.yes_token],
            "method": "from_2_way_softmax" if two_way else "no_post_processing",
        }  # from_2_way_softmax: logit(yes) - logit(no) as the one logit; sigmoid of it is P(yes | yes or no)
        arguments += ["--hf-overrides", json.dumps(overrides)]
    template = folder / TEMPLATE_DIR / f"{TEMPLATE_NAME}.jinja"
    if template.is_file():
        arguments += ["--chat-template", template_path or str(template)]
    return arguments


def vllm_section(folder: Path, name: str) -> list[str]:
    """The vLLM command line that serves this folder (answer tokens as a score head, the rerank template)."""
    template = f"{name}/{TEMPLATE_DIR}/{TEMPLATE_NAME}.jinja"  # a local path: vLLM reads the file
    arguments = " ".join(shlex.quote(a) for a in vllm_arguments(folder, template))
    quoted = shlex.quote(name)
    return [
        "## vLLM",
        "",
        "```bash",
        f"huggingface-cli download {quoted} --local-dir {quoted}  # vLLM reads files from a local folder",
        f"python -m vllm.entrypoints.openai.api_server --model {quoted} --dtype float32 {arguments}",
        "```",
        "",
        'Then POST `{"query": ..., "documents": [...]}` to `/rerank`; `relevance_score` is the sigmoid of the '
        "score. `rerankforge-export --verify vllm` checks it (below, where it was run).",
    ]


def llm_serving_sections(folder: Path, spec: LLMSpec, name: str, task: str = CAUSAL) -> list[str]:
    """Write sentence-transformers 6's files for an LLM export (causal, or converted to a classifier: ``task``)
    and return the card's sections on sentence-transformers and, where those files were written (the ``rerank``
    template it reads), vLLM."""
    result = write_sentence_transformers_files(folder, spec, task)
    sections = sentence_transformers_section(name, spec, result.not_written, result.row_cap,
                                             classifier=task == CLASSIFIER)  # fmt: skip
    if result.not_written is None:
        sections += ["", *vllm_section(folder, name)]
    return sections
