"""`rerankforge-export --verify ENGINE`: the engine's scores against rerankforge's on real pairs, recorded in the
card; a wrong template fails it; a server that dies or never answers is reported with its log. vLLM itself runs
in its own environment (`make check-serving`, tests/test_serving_vllm.py); here sentence-transformers is the
engine and the server harness runs a stand-in process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_cross_encoder_training import toy_records
from test_sentence_transformers_export import trained_full_model

from rerankforge.trainer import serving_server
from rerankforge.trainer.export import EXIT_SERVED_DIFFERS
from rerankforge.trainer.export import main as export_main
from rerankforge.trainer.sentence_transformers_files import TEMPLATE_DIR, TEMPLATE_NAME
from rerankforge.trainer.serving_check import (
    RESULT_FILE,
    ServingCheck,
    check_pairs,
    formatted_requests,
    run_check,
)
from rerankforge.trainer.serving_commands import vllm_arguments
from rerankforge.trainer.serving_server import RerankServer, ServerError

pytest.importorskip("sentence_transformers.cross_encoder.modules.logit_score")  # sentence-transformers 6


@pytest.fixture
def bge_run(tmp_path, tiny_llm_dirs):
    return trained_full_model(tmp_path, tiny_llm_dirs("llama"))


def test_the_check_passes_records_its_figures_and_a_wrong_template_fails_it(tmp_path, bge_run):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_records(6))
    out = tmp_path / "export"
    argv = [str(bge_run), str(out), "--verify", "sentence-transformers", "--verify-data", str(data),
            "--verify-pairs", "12"]  # fmt: skip
    assert export_main(argv) == 0
    result = json.loads((out / RESULT_FILE).read_text())["sentence-transformers"]
    assert result["pairs"] == 12 and result["passed"] and result["max_difference"] < 1e-5
    card = (out / "README.md").read_text()
    assert "## Served-equals-trained check" in card and "**pass**" in card
    # a template one word off, as a hand-written one often is: the same check fails, in the card too
    template = out / TEMPLATE_DIR / f"{TEMPLATE_NAME}.jinja"
    template.write_text(template.read_text().replace('A: " }}', 'Query: " }}'))
    pairs = check_pairs(data, 12)
    failed = run_check("sentence-transformers", out, bge_run, pairs)
    assert not failed.passed and failed.max_difference > 1e-3
    card = (out / "README.md").read_text()
    assert "**FAIL**" in card and card.count("## Served-equals-trained check") == 1  # replaced, not appended
    assert json.loads((out / RESULT_FILE).read_text())["sentence-transformers"]["passed"] is False


def test_a_failed_check_is_the_commands_exit_code(tmp_path, bge_run, monkeypatch):
    import rerankforge.trainer.serving_check as serving_check

    data = write_jsonl(tmp_path / "pairs.jsonl", toy_records(2))
    real = serving_check.sentence_transformers_scores

    def shifted(*args):
        served = real(*args)
        return serving_check.Served([s + 0.01 for s in served.scores], served.version, served.seconds)

    monkeypatch.setattr(serving_check, "sentence_transformers_scores", shifted)
    argv = [
        str(bge_run),
        str(tmp_path / "out"),
        "--verify",
        "sentence-transformers",
        "--verify-data",
        str(data),
    ]
    assert export_main(argv) == EXIT_SERVED_DIFFERS


def test_check_pairs_take_positives_then_negatives_and_refuse_an_empty_file(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"query": "q", "pos": ["p1", "p2"], "neg": ["n1", "n2"]}] * 3)
    assert check_pairs(data, 5) == [("q", "p1"), ("q", "n1"), ("q", "n2"), ("q", "p1"), ("q", "n1")]
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no \\(query, passage\\) pairs"):
        check_pairs(tmp_path / "empty.jsonl", 5)


def test_vllm_gets_the_answer_tokens_as_its_score_head_and_the_rerank_template(tmp_path, bge_run):
    out = tmp_path / "export"
    assert export_main([str(bge_run), str(out)]) == 0
    arguments = vllm_arguments(out)
    overrides = json.loads(arguments[arguments.index("--hf-overrides") + 1])
    assert overrides == {"architectures": ["LlamaForSequenceClassification"], "classifier_from_token": ["Yes"],
                         "method": "no_post_processing"}  # fmt: skip
    assert arguments[arguments.index("--chat-template") + 1] == str(
        out / TEMPLATE_DIR / f"{TEMPLATE_NAME}.jinja"
    )
    assert "## vLLM" in (out / "README.md").read_text()


def test_a_server_that_exits_or_never_answers_is_reported_with_its_log():
    dies = RerankServer("stand-in", lambda port: [sys.executable, "-u", "-c", "print('no model here'); raise SystemExit(3)"],
                        timeout_s=60)  # fmt: skip
    with pytest.raises(ServerError, match="stand-in exited with code 3:\n.*no model here"), dies:
        pass
    silent = RerankServer("stand-in", lambda port: [sys.executable, "-u", "-c", "import time; print('loading'); "
                                                     "time.sleep(60)"], timeout_s=2)  # fmt: skip
    with pytest.raises(ServerError, match="not healthy after 2 s:\n.*loading"), silent:
        pass
    assert silent.process.poll() is not None  # stopped, not left running


def test_pairs_rerankforge_would_cut_are_left_out_and_counted_and_a_nan_fails(tmp_path, bge_run, monkeypatch):
    """Engines cut a long row as a whole, rerankforge each part to its budget: such pairs are not compared."""
    import rerankforge.trainer.serving_check as serving_check

    out = tmp_path / "export"
    assert export_main([str(bge_run), str(out)]) == 0
    short = [("what is a panda?", "The giant panda is a bear."), ("what is a panda?", "Paris is in France.")]
    long = [("what is a panda?", "the stone is there, cloud maybe " * 80)]
    check = run_check("sentence-transformers", out, bge_run, short + long)
    assert check.passed and check.pairs == 2 and check.over_budget == 1
    assert "1 longer pairs left out" in (out / "README.md").read_text()
    real = serving_check.sentence_transformers_scores
    monkeypatch.setattr(serving_check, "sentence_transformers_scores",
                        lambda *a: serving_check.Served([real(*a).scores[0], float("nan")], "x", 1.0))  # fmt: skip
    assert not run_check("sentence-transformers", out, bge_run, short).passed
    with pytest.raises(ValueError, match="none of the 1 pairs fits"):
        run_check("sentence-transformers", out, bge_run, long)


def test_the_training_file_is_found_beside_the_checkpoint(tmp_path):
    from rerankforge.trainer.serving_check import recorded_data

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "train.jsonl").write_text("{}\n")
    (run / "checkpoint-4").mkdir()
    record = {"mined_train_data": ["outputs/elsewhere/data/train.jsonl"]}  # relative to another directory
    for folder in (run, run / "checkpoint-4"):
        (folder / "training_args.json").write_text(json.dumps(record))
        assert recorded_data(folder) == str(run / "data" / "train.jsonl")


def test_infinity_gets_a_classifier_exports_pairs_as_the_texts_the_model_reads(tmp_path, bge_run):
    """infinity has no chat templates: each pair is written into text_format.json's template and sent as the
    document of an empty query, which the tokenizer's pair call turns into the reranker's own ids."""
    from transformers import AutoTokenizer

    from rerankforge.inference.auto import load_reranker
    from rerankforge.trainer.sequence_classification import uncut_encoder

    out = tmp_path / "seq"
    assert export_main([str(bge_run), str(out), "--as-sequence-classification"]) == 0
    pairs = [("what is a panda?", "The giant panda is a bear."), ("Où est la gare ?", "À deux rues d'ici.")]
    requests = formatted_requests(out, pairs)
    tokenizer = AutoTokenizer.from_pretrained(out)
    served = [tokenizer([[query, text]])["input_ids"][0] for query, text in requests]
    queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
    expected = uncut_encoder(load_reranker(str(bge_run), device="cpu")).encode(queries, passages)
    assert [q for q, _ in requests] == ["", ""] and served == expected
    assert formatted_requests(bge_run, pairs) is None  # no text_format.json: pairs go as they are
    check = ServingCheck("infinity", "0.0.78", 2, 1e-7, 1e-3, sent_as="formatted text")
    assert "written into text_format.json's template" in check.card_lines()[2]


SERVING_SERVER = Path(serving_server.__file__)
HEALTHY_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def test_sigterm_to_the_checking_process_stops_its_server(tmp_path):
    """A scheduler's SIGTERM to `rerankforge-export --verify` must not leave the engine's server running: the
    server runs in a process group of its own, so nothing else would stop it."""
    import os
    import signal
    import subprocess
    import time

    # the module alone (it imports nothing of rerankforge): the package's import would cost seconds
    parent = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("serving_server", {str(SERVING_SERVER)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
RerankServer = module.RerankServer
command = lambda port: [sys.executable, "-c", {HEALTHY_SERVER!r}, str(port)]
with RerankServer("stand-in", command, timeout_s=60) as server:
    print("server pid", server.process.pid, flush=True)
    time.sleep(120)
"""
    process = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    line = ""
    while not line.startswith("server pid"):  # the package's import logs come first
        line = process.stdout.readline()
        assert line, "the checking process ended before its server started"
    server_pid = int(line.split()[-1])
    os.kill(server_pid, 0)  # running
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(server_pid, signal.SIGKILL)
    pytest.fail("the server outlived the SIGTERM'd process")
