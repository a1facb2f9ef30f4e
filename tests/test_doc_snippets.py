"""Every ```bash and ```python block of the docs works as written: one test per block, id ``FILE:LLINE``.

Docs scanned: README.md, docs/**/*.md, recipes/**/README.md, benchmarks/README.md. Other fences (```json, ```yaml,
```text, bare ```) are not code and are left alone.

bash blocks (also ```sh / ```shell): lines ending in ``\\`` are joined, comments and blank lines dropped, and each
command of a line (split at ``&&``, ``;``, ``|``; leading ``VAR=value`` skipped) must parse with the real parser of
its program, which is never run: rerankforge-data / -eval / -export (their argparse ``make_parser()``),
rerankforge-train and ``python -m rerankforge.trainer`` (each ``--flag`` an option of the family's config, values
parsed; with a recipe from the repository, or none, the whole ``parse_config``), ``accelerate launch`` (accelerate's
launch parser, its ``--config_file`` there and loadable, then the launched command), ``python benchmarks/X.py``
(the script's own parser, the script stopped right after parsing), ``make TARGET [VAR=value]`` (a rule and a
variable of the Makefile), ``curl`` to localhost, and a few plain commands (pip, cd, ls, cat, head, tail, cp, mv,
mkdir, export, echo, git, wandb, huggingface-cli, hf, du, nvidia-smi, bash, source). Anything else fails. Flags
are taken by their whole name only (argparse's abbreviations are refused), so a flag renamed to a longer name
cannot pass as a prefix of the new one.
A block whose first line is ``# not checked: <reason>`` is skipped with that reason.

python blocks: run, each in a fresh namespace, in a temporary folder where the model names of `DOC_MODELS` are
folders of tiny random models (a name resolves to a folder of that name first), offline, with
``RERANKFORGE_BACKEND=torch``. Predefined in the namespace, so short snippets can stay short:

- ``query``: a string (a question);
- ``passages``: a list of 3 strings (candidate passages for ``query``);
- ``pairs``: a list of 3 ``[query, passage]`` pairs.

Anything else a snippet uses it imports or defines. A block whose first line is ``# not run here: <reason>`` is
only compiled, and reported as skipped with that reason.
"""

from __future__ import annotations

import argparse
import ast
import shlex
import traceback

import pytest
import torch
from conftest import REPO
from doc_snippets import (
    BASH_LANGUAGES,
    PYTHON_LANGUAGES,
    SKIP_BASH_MARKER,
    SKIP_PYTHON_MARKER,
    Block,
    CheckContext,
    DocModel,
    DocModels,
    broken_links,
    check_command,
    compile_block,
    doc_blocks,
    doc_files,
    model_names,
    shell_commands,
    skip_reason,
    string_literals,
)
from test_llm_formats import qwen3_dir, qwen_tokenizer  # noqa: F401  (fixtures, for Qwen/Qwen3-Reranker-0.6B)

# Model names the docs' python blocks use -> the stand-in built for it (see `DocModel`). A name a block loads
# that is missing here fails that block's test: add it.
DOC_MODELS: dict[str, DocModel] = {
    # cross-encoders rerankforge trained (MiniLM: BERT with MiniLM's tokenizer)
    "outputs/minilm-toy": DocModel("cross_encoder"),
    "outputs/minilm-squad": DocModel(
        "cross_encoder", calibrated=True
    ),  # `make train` evaluates, so calibrates
    "outputs/cisi-reranker": DocModel("cross_encoder"),
    # plain one-logit classifiers from the Hub (XLM-R)
    "BAAI/bge-reranker-base": DocModel("classifier"),
    "BAAI/bge-reranker-large": DocModel("classifier"),
    "BAAI/bge-reranker-v2-m3": DocModel("classifier"),
    # an export of a cross-encoder: a plain one-logit classifier folder
    "exports/minilm-squad": DocModel("classifier"),
    # plain causal LMs from the Hub
    "BAAI/bge-reranker-v2-gemma": DocModel("causal_lm", "gemma"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": DocModel("causal_lm", "llama"),
    "Qwen/Qwen3-Reranker-0.6B": DocModel("qwen3"),
    # LLM rerankers rerankforge trained (full folders, as merged ones are)
    "outputs/smollm2-llm-squad": DocModel("llm", "llama"),
    "outputs/gemma-2b-llm-reranker/merged": DocModel("llm", "gemma"),
    # layerwise rerankers with the real model's depth and head layers, so cutoff_layers in the docs exist
    "outputs/smollm2-layerwise-squad": DocModel("layerwise", "llama", num_layers=30, start_layer=8),
    "outputs/minicpm-layerwise-reranker/merged": DocModel("layerwise", "llama", num_layers=40, start_layer=8),
}

QUERY = "what is a panda?"
PASSAGES = [
    "The giant panda is a bear species endemic to China.",
    "Pandas spend most of the day eating bamboo.",
    "Paris is the capital and largest city of France.",
]

BASH_BLOCKS = doc_blocks(REPO, BASH_LANGUAGES)
PYTHON_BLOCKS = doc_blocks(REPO, PYTHON_LANGUAGES)
DOCS = doc_files(REPO)


def ids(blocks: list[Block]) -> list[str]:
    return [block.id for block in blocks]


@pytest.mark.parametrize("block", BASH_BLOCKS, ids=ids(BASH_BLOCKS))
def test_bash_block_parses_with_the_real_parsers(block: Block, monkeypatch, tmp_path):
    reason = skip_reason(block, SKIP_BASH_MARKER)
    if reason is not None:
        assert reason, f"{block.id}: say why after `{SKIP_BASH_MARKER}`"
        pytest.skip(f"{block.id}: {reason}")
    monkeypatch.chdir(REPO)  # recipe, config and script paths in the docs are relative to the repository
    context = CheckContext(REPO, tmp_path, has_cuda=torch.cuda.is_available())
    commands = shell_commands(block)
    assert commands, f"{block.id}: a bash block without a command"
    problems = [
        f"{block.rel}:{c.line}: {p}\n    $ {c}" for c in commands for p in check_command(c.argv, context)
    ]
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def doc_models(tmp_path_factory) -> DocModels:
    """The snippets' working folder; each stand-in model is built there the first time a block needs it."""
    return DocModels(tmp_path_factory.mktemp("doc-snippets"))


def example_namespace() -> dict:
    """A fresh namespace with the predefined example variables (see the module docstring)."""
    return {
        "__name__": "__doc_snippet__",
        "query": QUERY,
        "passages": list(PASSAGES),
        "pairs": [[QUERY, passage] for passage in PASSAGES],
    }


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=ids(PYTHON_BLOCKS))
def test_python_block_runs_on_tiny_models(block: Block, doc_models: DocModels, monkeypatch, request):
    code = compile_block(block)  # a syntax error fails even a block that is not run
    reason = skip_reason(block, SKIP_PYTHON_MARKER)
    if reason is not None:
        assert reason, f"{block.id}: say why after `{SKIP_PYTHON_MARKER}`"
        pytest.skip(f"{block.id}: {reason}")
    tree = ast.parse(block.text)
    unknown = sorted(model_names(tree) - set(DOC_MODELS))
    assert not unknown, f"{block.id}: the doc uses model(s) {', '.join(unknown)}; add them to DOC_MODELS"
    for name in sorted(string_literals(tree) & set(DOC_MODELS)):
        doc_models.ensure(name, DOC_MODELS[name], request.getfixturevalue)
    monkeypatch.chdir(doc_models.root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("RERANKFORGE_BACKEND", "torch")
    monkeypatch.setenv("RERANKFORGE_CACHE", str(doc_models.root / ".cache"))  # an explicit backend's export
    failure = None
    try:
        exec(code, example_namespace())
    except Exception as error:
        failure = snippet_failure(block, error)
    if failure:  # outside the except: no "during handling of the above exception" in the report
        pytest.fail(failure, pytrace=False)


def snippet_failure(block: Block, error: Exception) -> str:
    """The doc line that failed and the error, with the last frames below it (not the whole Markdown file,
    which is what pytest would show as the snippet's source)."""
    in_doc = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == str(block.path)]
    where = f"{block.rel}:{in_doc[-1].lineno}: {in_doc[-1].line}" if in_doc else block.id
    frames = "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=-6))
    return f"{where}\n{type(error).__name__}: {error}\n\n{frames}"


@pytest.mark.parametrize("name", list(DOC_MODELS))
def test_every_doc_model_stand_in_loads_and_scores(name: str, doc_models: DocModels, monkeypatch, request):
    """A name the docs start using must work at once: its folder loads with the family rerankforge sees in it,
    and scores (the layerwise stand-ins at every head, so any documented cutoff layer exists)."""
    from rerankforge.inference.auto import load_reranker

    doc_models.ensure(name, DOC_MODELS[name], request.getfixturevalue)
    monkeypatch.chdir(doc_models.root)
    monkeypatch.setenv("RERANKFORGE_BACKEND", "torch")
    reranker = load_reranker(name, device="cpu")
    pair = [QUERY, PASSAGES[0]]
    if DOC_MODELS[name].kind == "layerwise":
        layers = list(range(DOC_MODELS[name].start_layer, DOC_MODELS[name].num_layers + 1))
        assert len(reranker.compute_score(pair, cutoff_layers=layers)) == len(layers)
    else:
        assert isinstance(reranker.compute_score(pair), float)


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(REPO).as_posix() for d in DOCS])
def test_relative_links_point_at_files_and_headings_that_exist(doc):
    broken = broken_links(doc)
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_a_renamed_heading_breaks_the_links_to_it(tmp_path):
    (tmp_path / "guide.md").write_text("# Guide\n\n## Memory (`memory_check`)\n\n## Faults: what survives\n")
    (tmp_path / "index.md").write_text(
        "[a](guide.md#memory-memory_check) [b](guide.md#faults-what-survives) [c](guide.md#memory-check)\n"
    )
    assert broken_links(tmp_path / "index.md") == [
        "index.md:1: guide.md#memory-check (no heading has the anchor #memory-check)"
    ]


MINE = (
    "rerankforge-data mine ../shared/data/squad-v1.1/dev-v1.1.json squad-train.jsonl --split train "
    "--num-negatives 15 --rank-range 10 100 --seed 0"
)


def test_a_flag_renamed_in_the_parser_fails_the_command_that_uses_the_old_name(monkeypatch, tmp_path):
    """The checker is only worth something if it fails on a renamed flag: rename ``--num-negatives`` where the
    real ``make_parser`` adds it, and the doc's command must be reported with exactly that flag."""
    context = CheckContext(REPO, tmp_path)
    argv = shlex.split(MINE)
    assert check_command(argv, context) == []
    add_argument = argparse._ActionsContainer.add_argument

    def renaming(self, *names, **kwargs):
        names = tuple("--num-negs" if name == "--num-negatives" else name for name in names)
        return add_argument(self, *names, **kwargs)

    monkeypatch.setattr(argparse._ActionsContainer, "add_argument", renaming)
    problems = check_command(argv, context)
    assert len(problems) == 1 and "unrecognized arguments: --num-negatives 15" in problems[0], problems


CHECKER_CASES = [
    # (command line, a part of the problem it must report, or "" for none)
    ("rerankforge-train recipes/minilm/cross_encoder/toy.yaml --learning_rate 1e-4", ""),
    (
        "rerankforge-train recipes/minilm/cross_encoder/toy.yaml --learning_rat 1e-4",
        "--learning_rat is not an",
    ),
    ("rerankforge-train recipes/minilm/cross_encoder/toy.yaml --loss nosuchloss", "nosuchloss"),
    (
        "rerankforge-train my_recipe.yaml --lora_rank 8",
        "--lora_rank is not an option",
    ),  # cross_encoder: no LoRA
    ("rerankforge-train my_recipe.yaml --family llm --lora_rank 8", ""),
    ("rerankforge-train recipes/smollm2/llm/squad_lora.yaml --lora_rank eight", "invalid int value: 'eight'"),
    (
        "accelerate launch --config_file recipes/accelerate/nope.yaml -m rerankforge.trainer x.yaml",
        "nope.yaml",
    ),
    ("accelerate launch --num_procs 2 -m rerankforge.trainer x.yaml", "unrecognized arguments: --num_procs"),
    ("python -m rerankforge.trainer.export a b", "has no __main__"),
    ("python benchmarks/layerwise_cutoff.py --pairs 64 --rounds 3", ""),
    ("python benchmarks/layerwise_cutoff.py --pairs 64 --round 3", "unrecognized arguments: --round 3"),
    ("python benchmarks/nope.py", "does not exist"),
    ("make bench-gpu SMOKE=1", ""),
    ("make bench-gpus", "no such target"),
    ("make train RECIPES=x.yaml", "no variable RECIPES"),
    ("curl -s http://example.com/x", "only requests to localhost"),
    ("rm -rf outputs", "unknown command in a doc block: rm -rf outputs"),
    ("rerankforge train recipes/minilm/cross_encoder/toy.yaml --learning_rate 1e-4", ""),
    (
        "rerankforge train recipes/minilm/cross_encoder/toy.yaml --learning_rat 1e-4",
        "--learning_rat is not an",
    ),
    ("rerankforge data check --max-length 512 x.jsonl", ""),
    ("rerankforge data check --max-len 512 x.jsonl", "unrecognized arguments: --max-len"),
    ("rerankforge --help", ""),
    ("rerankforge fetch x", "unknown command in a doc block"),
]


@pytest.mark.parametrize("line, expected", CHECKER_CASES, ids=[c[0] for c in CHECKER_CASES])
def test_the_checker_tells_good_commands_from_bad_ones(line, expected, monkeypatch, tmp_path):
    """The branches the current docs may not reach: a check that passes everything would pass these too."""
    monkeypatch.chdir(REPO)
    (argv,) = [command.argv for command in shell_commands(Block(REPO / "x.md", "x.md", 1, "bash", line))]
    problems = check_command(argv, CheckContext(REPO, tmp_path))
    if expected:
        assert any(expected in p for p in problems), problems
    else:
        assert problems == []
