"""What tests/test_doc_snippets.py needs: the fenced blocks of the Markdown docs, the commands of a bash block, a
check of each command against the real parser of its program (nothing is run), and stand-in model folders.

Every check returns a list of problems (empty: fine) instead of raising, so one test shows all of a command's
problems and the mutation test can look for the one it expects.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import importlib.util
import io
import json
import re
import runpy
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

# ---------------------------------------------------------------------------------------------------------------
# Markdown


BASH_LANGUAGES = {"bash", "sh", "shell"}
PYTHON_LANGUAGES = {"python", "py", "python3"}
SKIP_BASH_MARKER = "# not checked:"
SKIP_PYTHON_MARKER = "# not run here:"


@dataclass(frozen=True)
class Block:
    """One fenced block: ``line`` is the line of its opening fence (1-based), ``first_line`` that of its text."""

    path: Path
    rel: str
    line: int
    language: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.rel}:L{self.line}"

    @property
    def first_line(self) -> int:
        return self.line + 1


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)")


def doc_files(repo: Path) -> list[Path]:
    """README.md, every .md under docs/, the recipes' READMEs and benchmarks/README.md (those that exist)."""
    found = [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))]
    found += sorted((repo / "recipes").rglob("README.md")) + [repo / "benchmarks" / "README.md"]
    return [path for path in found if path.is_file()]


def fenced_blocks(path: Path, repo: Path) -> list[Block]:
    """The fenced blocks of one Markdown file, with the language of their info string (lower case, may be "")."""
    blocks: list[Block] = []
    opening: tuple[int, str, str, str] | None = None  # line, indent, fence, language
    body: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = FENCE.match(line)
        if opening is None:
            if match:
                opening, body = (number, match.group(1), match.group(2), match.group(3).lower()), []
            continue
        start, indent, fence, language = opening
        stripped = line.strip()
        if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
            blocks.append(Block(path, path.relative_to(repo).as_posix(), start, language, "\n".join(body)))
            opening = None
        else:  # a fence inside a list item is indented: its text is, by as much
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
    return blocks


def doc_blocks(repo: Path, languages: set[str]) -> list[Block]:
    return [b for path in doc_files(repo) for b in fenced_blocks(path, repo) if b.language in languages]


def skip_reason(block: Block, marker: str) -> str | None:
    """The reason after ``marker`` when the block's first line is that comment (None: the block is checked)."""
    lines = block.text.strip().splitlines()
    first = lines[0].strip() if lines else ""
    if not first.lower().startswith(marker):
        return None
    return first[len(marker) :].strip()


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def relative_links(path: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of every relative link or image outside code (no scheme, no pure anchor)."""
    links: list[tuple[int, str]] = []
    in_fence: str | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = FENCE.match(line)
        if in_fence is None and match:
            in_fence = match.group(2)
            continue
        if in_fence is not None:
            if match and match.group(2).startswith(in_fence) and not match.group(3):
                in_fence = None
            continue
        text = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        targets = [m.group(1) for m in LINK.finditer(text)] + [
            m.group(1) for m in REFERENCE_LINK.finditer(text)
        ]
        for target in targets:
            if urlsplit(target).scheme or target.startswith("#"):
                continue
            links.append((number, target))
    return links


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lowercased, punctuation but hyphens and underscores
    dropped, spaces made hyphens; a repeated heading gets -1, -2, ..."""
    anchors: set[str] = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_fence or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in anchors:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        anchors.add(anchor)
    return anchors


def broken_links(path: Path) -> list[str]:
    """``FILE:LINE: target`` of every relative link whose file or folder does not exist, or whose ``#anchor``
    names no heading of the Markdown file it points at."""
    broken = []
    for number, target in relative_links(path):
        file, _, anchor = unquote(target.split("?", 1)[0]).partition("#")
        linked = path.parent / file
        if not linked.exists():
            broken.append(f"{path.name}:{number}: {target}")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            broken.append(f"{path.name}:{number}: {target} (no heading has the anchor #{anchor})")
    return broken


# ---------------------------------------------------------------------------------------------------------------
# bash blocks -> commands


@dataclass(frozen=True)
class Command:
    line: int  # the doc line the command starts on
    argv: list[str]

    def __str__(self) -> str:
        return shlex.join(self.argv)


SEPARATORS = {"&&", "||", ";", "|", "|&", "&", "(", ")", ";;"}
REDIRECTIONS = {"<", ">", ">>", ">&", "&>", "&>>", "<<", "<<<", ">|", "<&", "<>"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
WHICH = re.compile(r"\$\(\s*which\s+([\w.-]+)\s*\)|`\s*which\s+([\w.-]+)\s*`")
FD_BEFORE_REDIRECTION = re.compile(r"(?<![\w=-])\d(?=[<>])")


def logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """``(doc line, text)`` of each command line: lines ending in ``\\`` joined, comments and blank lines dropped."""
    pending: list[str] = []
    start = 0
    for offset, line in enumerate(block.text.splitlines()):
        if not pending:
            start = block.first_line + offset
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        text = " ".join([*pending, line]).strip()
        pending = []
        if text and not text.startswith("#"):
            yield start, text
    if pending and " ".join(pending).strip():
        yield start, " ".join(pending).strip()


def split_commands(text: str) -> list[list[str]]:
    """The simple commands of one line (split at ``&&``, ``;``, ``|``, ...), without redirections, inline comments
    or leading ``VAR=value`` assignments; ``$(which NAME)`` is taken as ``NAME``."""
    text = WHICH.sub(lambda m: m.group(1) or m.group(2), text)
    text = FD_BEFORE_REDIRECTION.sub("", text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    tokens = iter(lexer)
    for token in tokens:
        if token in SEPARATORS:
            commands.append([])
        elif token in REDIRECTIONS:
            next(tokens, None)  # the file (or descriptor) it redirects to
        elif commands[-1] or not ASSIGNMENT.match(token):
            commands[-1].append(token)
    return [argv for argv in commands if argv]


def shell_commands(block: Block) -> list[Command]:
    return [Command(line, argv) for line, text in logical_lines(block) for argv in split_commands(text)]


# ---------------------------------------------------------------------------------------------------------------
# commands -> problems (the real parsers, nothing run)

PLAIN_COMMANDS = {
    "pip", "pip3", "cd", "ls", "cat", "head", "tail", "cp", "mv", "mkdir", "export", "echo", "git", "wandb",
    "huggingface-cli", "hf", "du", "nvidia-smi", "bash", "source",
}  # fmt: skip
LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0", "::1"}
PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
NUMBER = re.compile(r"^-\.?\d")  # a negative value, not a flag

# program -> module whose make_parser() builds its argparse parser (looked up at each check, so a test may
# patch what the module builds)
ARGPARSE_PROGRAMS = {
    "rerankforge-data": "rerankforge.data_tools.cli",
    "rerankforge-eval": "rerankforge.trainer.eval_cli",
    "rerankforge-export": "rerankforge.trainer.export",
}
TRAIN_PROGRAM = "rerankforge-train"
ONE_COMMAND = "rerankforge"  # `rerankforge VERB ...` runs `rerankforge-VERB ...`
ONE_COMMAND_MODULE = "rerankforge.trainer.command_line"
# `python -m MODULE` / `accelerate launch -m MODULE` -> the program whose command line it takes
MODULE_PROGRAMS = {
    "rerankforge.trainer": TRAIN_PROGRAM,
    "rerankforge.trainer.cli": TRAIN_PROGRAM,
    "rerankforge.data_tools": "rerankforge-data",
    "rerankforge.data_tools.cli": "rerankforge-data",
    "rerankforge.trainer.eval_cli": "rerankforge-eval",
    "rerankforge.trainer.export": "rerankforge-export",
}


@dataclass(frozen=True)
class CheckContext:
    """Where relative paths in commands start (the repository) and where a check may write (a temporary folder)."""

    repo: Path
    scratch: Path
    has_cuda: bool = False


def check_command(argv: list[str], context: CheckContext) -> list[str]:
    """The problems of one simple command: an unknown program, or flags its real parser rejects."""
    program = argv[0]
    if "/" in program and Path(program).parent.name == "bin":  # .venv/bin/rerankforge-train, .venv/bin/python
        program = Path(program).name
    args = argv[1:]
    if program == ONE_COMMAND:  # `rerankforge VERB ...` is its alias's command; `rerankforge --help` its own
        if not args or args[0].startswith("-"):
            return parse_strictly(importlib.import_module(ONE_COMMAND_MODULE).make_parser(), args)
        program, args = f"{ONE_COMMAND}-{args[0]}", args[1:]
    if program in ARGPARSE_PROGRAMS:
        return parse_strictly(importlib.import_module(ARGPARSE_PROGRAMS[program]).make_parser(), args)
    if program == TRAIN_PROGRAM:
        return check_training_args(args, context)
    if PYTHON.match(program):
        return check_python(args, context)
    if program == "accelerate":
        return check_accelerate(args, context)
    if program == "make":
        return check_make(args, context.repo)
    if program == "curl":
        return check_curl(args)
    if program in PLAIN_COMMANDS:
        return []
    return [f"unknown command in a doc block: {shlex.join(argv)} (add it to the checks or to the allowlist)"]


def without_abbreviations(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser (and its subcommands' parsers) taking flags by their whole name only: otherwise a flag renamed
    to a longer name (``--rounds`` -> ``--rounds-per-tool``) would still take the doc's old one as a prefix."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                without_abbreviations(subparser)
    return parser


def parse_strictly(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """``parser.parse_args(args)``, whole flag names only; argparse's own message when it exits with an error
    (``--help`` is fine)."""
    without_abbreviations(parser)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exit:
        if exit.code:
            message = errors.getvalue().strip().splitlines()
            return [message[-1] if message else f"{parser.prog}: exit {exit.code}"]
    return []


def check_python(args: list[str], context: CheckContext) -> list[str]:
    """``python [options] -m MODULE ...`` or ``python benchmarks/NAME.py ...``."""
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-m":
        if args[i] == "-c":
            return [f"unknown command in a doc block: python {shlex.join(args)} (add it to the checks)"]
        i += 2 if args[i] in ("-X", "-W") else 1
    rest = args[i:]
    if not rest:
        return ["python without a module or script: nothing to check"]
    if rest[0] == "-m":
        if len(rest) < 2:
            return ["python -m without a module"]
        return check_module(rest[1], rest[2:], context, "python -m")
    return check_script(rest[0], rest[1:], context, "python")


def check_module(module: str, args: list[str], context: CheckContext, how: str) -> list[str]:
    if module in ("pip", "pip3"):
        return []
    if module not in MODULE_PROGRAMS:
        return [f"unknown command in a doc block: {how} {module} (add it to the checks or to the allowlist)"]
    if not runs_as_main(module):
        return [f"{how} {module} would do nothing: the module has no __main__ (guard or __main__.py)"]
    return check_command([MODULE_PROGRAMS[module], *args], context)


def runs_as_main(module: str) -> bool:
    """Whether ``python -m module`` runs something: a package with __main__, or a module with a main guard."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return spec.origin is not None and has_main_guard(Path(spec.origin))


def has_main_guard(path: Path) -> bool:
    """Whether a module's top level has ``if __name__ == "__main__":`` (so importing it starts no work)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [node.test.left, *node.test.comparators]
            if any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and any(
                isinstance(n, ast.Constant) and n.value == "__main__" for n in names
            ):
                return True
    return False


def check_script(script: str, args: list[str], context: CheckContext, how: str) -> list[str]:
    """A script under benchmarks/: it exists, and its own argparse parser takes ``args``."""
    path = Path(script)
    if path.parts[:1] != ("benchmarks",) or path.suffix != ".py":
        return [f"unknown command in a doc block: {how} {script} (add it to the checks or to the allowlist)"]
    if not (context.repo / path).is_file():
        return [f"{script} does not exist"]
    if not has_main_guard(context.repo / path):
        return [
            f'{script} has no `if __name__ == "__main__":` guard: it cannot be checked without running it'
        ]
    return benchmark_parse_problems(context.repo / path, args)


class _Parsed(BaseException):
    """Raised by the intercepted parser once the script's arguments parsed: the script stops there (a
    BaseException, so no ``except Exception`` in the script catches it)."""


@contextlib.contextmanager
def stop_after_parsing() -> Iterator[None]:
    """``ArgumentParser.parse_args`` (and a direct ``parse_known_args``, strictly) parse as usual, then raise
    `_Parsed`, so a script runs up to its argument parsing and no further."""
    original_parse_args = argparse.ArgumentParser.parse_args
    original_known = argparse.ArgumentParser.parse_known_args
    depth = [0]

    def parse_args(self, args=None, namespace=None):
        without_abbreviations(self)
        depth[0] += 1
        try:
            original_parse_args(self, args, namespace)
        finally:
            depth[0] -= 1
        raise _Parsed

    def parse_known_args(self, args=None, namespace=None):
        if depth[0]:  # inside parse_args, or a subparser's
            return original_known(self, args, namespace)
        without_abbreviations(self)
        depth[0] += 1
        try:
            _, extras = original_known(self, args, namespace)
            if extras:
                self.error(f"unrecognized arguments: {' '.join(extras)}")
        finally:
            depth[0] -= 1
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_args
    argparse.ArgumentParser.parse_known_args = parse_known_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original_parse_args
        argparse.ArgumentParser.parse_known_args = original_known


def benchmark_parse_problems(path: Path, args: list[str]) -> list[str]:
    """Run the script as ``python path args`` would, up to its argument parsing (see `stop_after_parsing`)."""
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))  # as `python benchmarks/x.py` does: its siblings import
    errors = io.StringIO()
    try:
        with (
            stop_after_parsing(),
            contextlib.redirect_stderr(errors),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            runpy.run_path(str(path), run_name="__main__")
    except _Parsed:
        return []
    except SystemExit as exit:
        if not exit.code:
            return []
        message = errors.getvalue().strip().splitlines()
        return [message[-1] if message else f"{path.name}: exit {exit.code}"]
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return [
        f"{path.name} ended without parsing its arguments with argparse: check it by hand (`# not checked:`)"
    ]


def check_training_args(args: list[str], context: CheckContext) -> list[str]:
    """``rerankforge-train [RECIPE] --key value ...``: every ``--key`` an option of the family's config (family:
    ``--family``, else the recipe's, else cross_encoder), values parsed by the real parser; with a recipe in the
    repository (or none at all), the whole command through `parse_config` too."""
    from rerankforge.data_tools.mining_arguments import MiningArguments
    from rerankforge.trainer import cli
    from rerankforge.trainer.data_arguments import DataArguments
    from rerankforge.trainer.families import get_family
    from rerankforge.trainer.run_config import family_from_argv

    recipe_path, flags = (args[0], args[1:]) if args and not args[0].startswith("-") else (None, args)
    recipe: dict = {}
    recipe_file = context.repo / recipe_path if recipe_path else None
    if recipe_file is not None and recipe_file.is_file():
        try:
            recipe = cli.load_recipe(recipe_file)
        except (ValueError, yaml.YAMLError) as error:
            return [f"{recipe_path}: {error}"]
    family = family_from_argv(flags) or recipe.get("family", "cross_encoder")
    try:
        config_class = get_family(family).config_class
    except ValueError as error:
        return [str(error)]
    parser = cli.make_parser(config_class)
    fields = {f.name for kind in (config_class, DataArguments, MiningArguments) for f in dataclasses.fields(kind)
              if f.init}  # fmt: skip
    problems = []
    for flag in (a.split("=", 1)[0] for a in flags if a.startswith("-") and not NUMBER.match(a)):
        action = parser._option_string_actions.get(flag)
        if isinstance(action, argparse._HelpAction):
            return []
        if action is None or action.dest not in fields:
            problems.append(
                f"{flag} is not an option of {TRAIN_PROGRAM}: no field of {config_class.__name__}, DataArguments "
                "or MiningArguments"
            )
    if problems:
        return problems
    for action in parser._actions:  # the recipe (the user's own, maybe) may give what is required
        action.required = False
    problems = [f"{TRAIN_PROGRAM}: {p}" for p in parse_strictly(parser, flags)]
    if problems or (recipe_file is not None and not recipe_file.is_file()):
        return problems  # a recipe outside the repository: its flags are all that can be checked
    return full_parse_problems(recipe_path, dict(recipe), flags, context)


def full_parse_problems(
    recipe_path: str | None, recipe: dict, flags: list[str], context: CheckContext
) -> list[str]:
    """`parse_config` on the whole command (it reads the recipe and builds the config; it loads no model). As
    tests/test_recipes_and_cli.py does for GPU recipes on a CPU machine, a run without ``use_cpu`` is parsed as a
    CPU run, and a DeepSpeed file is checked to be there and be JSON, then left out (DeepSpeed may not be
    installed here)."""
    from rerankforge.trainer import cli

    flags = list(flags)
    problems = []
    deepspeed_files = [recipe.pop("deepspeed")] if "deepspeed" in recipe else []
    while "--deepspeed" in flags:
        at = flags.index("--deepspeed")
        deepspeed_files += flags[at + 1 : at + 2]
        del flags[at : at + 2]
    for name in deepspeed_files:
        try:
            json.loads((context.repo / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            problems.append(f"deepspeed {name}: {error}")
    gpu_run = not recipe.get("use_cpu") and not any(f.split("=", 1)[0] == "--use_cpu" for f in flags)
    if gpu_run and not context.has_cuda:
        recipe["use_cpu"] = True
    argv = flags
    if recipe_path is not None:
        copy = context.scratch / Path(recipe_path).name
        copy.write_text(yaml.safe_dump(recipe), encoding="utf-8")
        argv = [str(copy), *flags]
    elif recipe.get("use_cpu"):
        argv = [*flags, "--use_cpu", "true"]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            cli.parse_config(argv)
    except SystemExit as exit:
        message = errors.getvalue().strip().splitlines()
        problems.append(f"{TRAIN_PROGRAM}: {message[-1] if message else f'exit {exit.code}'}")
    except (ValueError, TypeError) as error:  # RecipeError and the configs' own checks
        problems.append(f"{TRAIN_PROGRAM} {recipe_path or ''}: {error}")
    return problems


def check_accelerate(args: list[str], context: CheckContext) -> list[str]:
    """``accelerate launch [options] -m MODULE ARGS`` or ``... SCRIPT ARGS``: the options against accelerate's own
    launch parser, a ``--config_file`` there and valid, then the launched command as if run directly."""
    if args[:1] != ["launch"]:
        return [
            f"unknown command in a doc block: accelerate {shlex.join(args)} (only `accelerate launch` is checked)"
        ]
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    problems = [f"accelerate launch: {p}" for p in parse_strictly(parser, args[1:])]
    if problems:
        return problems
    launch = parser.parse_args(args[1:])
    if launch.config_file:
        problems += accelerate_config_problems(context.repo, launch.config_file)
    script, script_args = launch.training_script, launch.training_script_args
    if launch.module:
        return problems + check_module(script, script_args, context, "accelerate launch -m")
    if Path(script).name in ARGPARSE_PROGRAMS or Path(script).name == TRAIN_PROGRAM:
        return problems + check_command([script, *script_args], context)
    return problems + check_script(script, script_args, context, "accelerate launch")


def accelerate_config_problems(repo: Path, name: str) -> list[str]:
    """The config file exists and accelerate's own loader takes it (unknown keys are an error there), and so
    does the DeepSpeed file it names."""
    path = repo / name
    if not path.is_file():
        return [f"accelerate launch --config_file {name}: no such file in the repository"]
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        config = load_config_from_file(str(path))
    except Exception as error:  # accelerate raises what its dataclasses raise
        return [f"accelerate launch --config_file {name}: {type(error).__name__}: {error}"]
    deepspeed_file = (getattr(config, "deepspeed_config", None) or {}).get("deepspeed_config_file")
    if deepspeed_file:  # relative to where the launch runs: the repository
        try:
            json.loads((repo / deepspeed_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            return [
                f"accelerate launch --config_file {name}: deepspeed_config_file {deepspeed_file}: {error}"
            ]
    return []


def makefile_targets(text: str) -> set[str]:
    """Target names of the rules (not variable-named ones like ``$(STAMP)``, nor special ones like .PHONY)."""
    targets = set()
    for line in text.splitlines():
        match = re.match(r"^([^\s#][^=]*?)\s*::?(?!=)", line)
        if match:
            targets |= {t for t in match.group(1).split() if "$" not in t and not t.startswith(".")}
    return targets


def makefile_variables(text: str) -> set[str]:
    """Variables the Makefile assigns or reads (``NAME ?= ...``, ``$(NAME)``, ``${NAME}``)."""
    assigned = re.findall(r"^ *([A-Za-z_][A-Za-z0-9_]*)\s*(?:\?|:|\+|::)?=", text, flags=re.MULTILINE)
    return set(assigned) | set(re.findall(r"\$[({]([A-Za-z_][A-Za-z0-9_]*)[)}]", text))


def check_make(args: list[str], repo: Path) -> list[str]:
    """``make [TARGET ...] [VAR=value ...]``: each target a rule of the Makefile, each variable one it uses."""
    text = (repo / "Makefile").read_text(encoding="utf-8")
    targets, variables = makefile_targets(text), makefile_variables(text)
    problems = []
    for arg in args:
        if arg.startswith("-"):
            problems.append(f"make {arg}: make's own options are not checked (`# not checked:` if needed)")
        elif ASSIGNMENT.match(arg):
            name = arg.split("=", 1)[0]
            if name not in variables:
                problems.append(f"make {arg}: the Makefile uses no variable {name}")
        elif arg not in targets:
            problems.append(
                f"make {arg}: no such target in the Makefile (targets: {', '.join(sorted(targets))})"
            )
    return problems


def check_curl(args: list[str]) -> list[str]:
    """curl only against this machine (a local server a guide starts)."""
    urls = [a for a in args if "://" in a or re.match(r"^[\w.-]+:\d+(/|$)", a)]
    hosts = [urlsplit(url if "://" in url else f"http://{url}").hostname for url in urls]
    if not hosts or any(host not in LOCAL_HOSTS for host in hosts):
        return [f"curl {shlex.join(args)}: only requests to localhost are allowed in doc blocks"]
    return []


# ---------------------------------------------------------------------------------------------------------------
# python blocks


def compile_block(block: Block):
    """The block as code whose line numbers are the Markdown file's, so a traceback points at the doc line."""
    return compile("\n" * block.line + block.text + "\n", str(block.path), "exec")


def model_names(tree: ast.AST) -> set[str]:
    """String literals a snippet loads a model from: the first argument (or ``model_name_or_path``) of
    ``*.from_pretrained(...)`` and of ``...Reranker(...)`` / ``CrossEncoder(...)`` calls."""
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if func != "from_pretrained" and not func.endswith("Reranker") and func != "CrossEncoder":
            continue
        candidates = node.args[:1] + [k.value for k in node.keywords if k.arg == "model_name_or_path"]
        names |= {c.value for c in candidates if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return names


def string_literals(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


# ---------------------------------------------------------------------------------------------------------------
# stand-in model folders


@dataclass(frozen=True)
class DocModel:
    """How to build a stand-in for a model name the docs use, with random tiny weights.

    kind: ``cross_encoder``, ``llm`` or ``layerwise``: a rerankforge folder of that family (saved untrained by the
    family's own model class, as training saves it); ``classifier``: a plain one-logit XLM-R classifier (as
    BAAI/bge-reranker-*); ``causal_lm``: a plain causal LM (as bge-reranker-v2-gemma or SmolLM2); ``qwen3``: a
    plain Qwen3 folder laid out as Qwen3-Reranker.
    """

    kind: str
    architecture: str = "llama"
    num_layers: int = 2
    start_layer: int = 1
    calibrated: bool = False  # with a calibration and a fusion (what a run with evaluation data saves)


def save_untrained_reranker(family_name: str, base: Path, out: Path, **settings) -> None:
    """The family's model as training builds it before its first step (no LoRA), saved as training saves it."""
    from rerankforge.trainer.families import get_family

    family = get_family(family_name)
    config = family.config_class(
        model_name_or_path=str(base), output_dir=str(out), use_cpu=True,
        report_to="none", **settings,
    )  # fmt: skip
    tokenizer = family.model_class.load_tokenizer(config)
    model = family.model_class.for_training(config, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


class DocModels:
    """Builds each stand-in folder once, on first use, at ``root / name`` (``root`` is the snippets' cwd)."""

    def __init__(self, root: Path):
        self.root = root
        self.built: set[str] = set()

    def ensure(self, name: str, model: DocModel, fixture: Callable[[str], Any]) -> None:
        """``fixture``: the test's ``request.getfixturevalue``, so conftest's tiny sources are made only when a
        doc needs them."""
        if name in self.built:
            return
        out = self.root / name
        out.parent.mkdir(parents=True, exist_ok=True)
        if model.kind == "cross_encoder":
            save_untrained_reranker("cross_encoder", fixture("tiny_bert_dir"), out)
        elif model.kind == "classifier":
            copy_folder(fixture("tiny_xlmr_dir"), out)
        elif model.kind == "causal_lm":
            copy_folder(self.decoder(model.architecture, model.num_layers, fixture), out)
        elif model.kind == "qwen3":
            copy_folder(fixture("qwen3_dir"), out)
        elif model.kind in ("llm", "layerwise"):
            settings: dict[str, Any] = dict(use_lora=False, activation_checkpointing=False)
            if model.kind == "layerwise":
                settings["start_layer"] = model.start_layer
            base = self.decoder(model.architecture, model.num_layers, fixture)
            save_untrained_reranker(model.kind, base, out, **settings)
        else:
            raise ValueError(f"{name}: unknown DocModel kind {model.kind!r}")
        if model.calibrated:
            from rerankforge.inference.modeling.fusion import Fusion
            from rerankforge.trainer.calibration import calibrate, save_calibration

            scores = [i / 10 for i in range(-20, 20)]
            spec = save_calibration(
                out, calibrate(scores, [i % 3 == 0 or i > 30 for i in range(40)], "platt", "stand-in")
            )
            spec.fusion = Fusion("interpolation", 0.6, "stand-in").to_dict()
            spec.save(out)
        self.built.add(name)

    def decoder(self, architecture: str, num_layers: int, fixture: Callable[[str], Any]) -> Path:
        """A plain tiny decoder folder (conftest's), with as many layers as the real model where docs count them."""
        if num_layers == 2:
            return fixture("tiny_llm_dirs")(architecture)
        from conftest import tiny_decoder

        folder = self.root / ".bases" / f"{architecture}-{num_layers}"
        if not folder.is_dir():
            tokenizer = fixture("llm_tokenizer")
            tiny_decoder(architecture, len(tokenizer), num_layers=num_layers).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        return folder


def copy_folder(source: Path, out: Path) -> None:
    import shutil

    shutil.copytree(source, out, dirs_exist_ok=True)
