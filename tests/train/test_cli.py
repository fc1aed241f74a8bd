"""The tinykg command end to end: training runs, results file schema, determinism, clean errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinykg.cli import main

REQUIRED_KEYS = {"model", "dataset", "bits", "seed", "metrics", "activation_bytes", "peak_memory_bytes", "epoch_seconds", "epochs"}


def _train(tmp_path, *extra, name="r.json"):
    out = tmp_path / name
    code = main(["train", "--synthetic", "toy", "--epochs", "2", "--quiet", "--out", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("model", ["kgcn", "kgnn-ls", "ripplenet", "ckan"])
def test_cli_train_each_model_writes_results_schema(tmp_path, model):
    result = _train(tmp_path, "--model", model, "--bits", "2")
    assert REQUIRED_KEYS <= set(result)
    assert result["model"] == model and result["bits"] == 2 and result["epochs"] == 2
    assert set(result["metrics"]) == {"auc", "f1"}
    assert 0.0 <= result["metrics"]["auc"] <= 1.0
    assert result["peak_memory_bytes"] is None  # CPU
    assert result["cuda_graph"] is False
    # Exact accounting: the compressed step holds far less than the same step uncompressed.
    assert 0 < result["activation_bytes"] * 8 <= result["activation_bytes_fp32"]


def test_cli_train_same_seed_same_numbers(tmp_path):
    a = _train(tmp_path, "--seed", "3", name="a.json")
    b = _train(tmp_path, "--seed", "3", name="b.json")
    c = _train(tmp_path, "--seed", "4", name="c.json")
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert a["history"] != c["history"]


def test_cli_train_uncompressed_baseline(tmp_path):
    result = _train(tmp_path, "--bits", "32")
    assert result["compression"] is None
    assert result["activation_bytes"] == result["activation_bytes_fp32"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/nonexistent/dir"], "nonexistent"),
        (["train", "--synthetic", "toy", "--set", "no_such_param=3", "--epochs", "1", "--quiet"], "no_such_param"),
        (["train", "--synthetic", "toy", "--batch-size", "100000", "--epochs", "1", "--quiet"], "batch_size"),
        # --set values have their setting's type, checked before anything is trained.
        (["train", "--synthetic", "toy", "--set", "drop_last=maybe", "--quiet"], "drop_last must be true or false"),
        (["train", "--synthetic", "toy", "--set", "l2_weight=-1", "--quiet"], "l2_weight must be a number >= 0"),
        (["train", "--synthetic", "toy", "--set", "embedding_dim=8.5", "--quiet"], "embedding_dim must be an integer"),
        (["train", "--model", "kgat", "--synthetic", "toy", "--set", "layer_sizes=[8,x]", "--quiet"], "layer_sizes must be a list"),
        (["train", "--synthetic", "toy", "--data", "/nonexistent/dir"], "--synthetic"),
        (["train", "--synthetic", "toy", "--checkpoint", __file__], "is a file"),
        (["train", "--synthetic", "toy", "--out", str(Path(__file__).parent)], "is a directory"),
        (["train", "--synthetic", "toy", "--cuda-graph", "--quiet"], "needs --device cuda"),
    ],
)
def test_cli_bad_input_one_line_error(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinykg: error:") and message in err[0]


def test_cli_bad_option_exits_nonzero_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for argv in (["train", "--bits", "3"], ["train", "--epochs", "zero"], ["frobnicate"]):
        proc = subprocess.run([sys.executable, "-m", "tinykg", *argv], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr


def test_cli_corrupt_dataset_reports_file_and_line(tmp_path, capsys):
    (tmp_path / "ratings_final.txt").write_text("0\t1\t1\n0\t2\t0\n1\t1\n")
    (tmp_path / "kg_final.txt").write_text("1\t0\t3\n")
    assert main(["train", "--data", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ratings_final.txt:3" in err and "\n" not in err
    assert not list(tmp_path.glob("*.json"))


def test_cli_data_info_real_lastfm(lastfm_dir, capsys):
    assert main(["data", "info", str(lastfm_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["users"], info["items"], info["interactions"], info["entities"], info["relations"], info["triples"]) == (
        1872, 3846, 42346, 9366, 60, 15518,
    )


@pytest.mark.parametrize("model", ["kgat", "kgin", "bprmf"])
def test_cli_train_topk_models_write_results_schema(tmp_path, model):
    result = _train(tmp_path, "--model", model, "--bits", "2")
    assert REQUIRED_KEYS <= set(result)
    assert result["model"] == model and result["bits"] == 2
    assert {"recall@20", "ndcg@20"} <= set(result["metrics"])
    assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())


def test_cli_topk_rejects_checkpoint(tmp_path, capsys):
    assert main(["train", "--model", "kgat", "--synthetic", "toy", "--quiet", "--checkpoint", str(tmp_path)]) == 2
    assert "CTR models" in capsys.readouterr().err


def test_write_json_atomic_gives_the_file_open_permissions(tmp_path):
    # mkstemp's 0600 must not leak into the results file: other users of a shared run directory read it.
    import os
    import stat

    from tinykg.train.run import write_json_atomic

    umask = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_cli_set_accepts_python_and_shell_spellings(tmp_path):
    result = _train(tmp_path, "--set", "drop_last=False", "--set", "head_bits=None", "--epochs", "1")
    assert result["hyperparameters"]["drop_last"] is False and result["hyperparameters"]["head_bits"] is None
    result = _train(tmp_path, "--set", "drop_last=yes", "--epochs", "1", name="yes.json")
    assert result["hyperparameters"]["drop_last"] is True


def test_cli_results_name_the_hyperparameter_set_and_the_backend_that_ran(tmp_path):
    result = _train(tmp_path, "--epochs", "1", "--backend", "torch")
    assert result["hparams"] == "synthetic"
    assert result["compression"]["backend"] == "torch" and result["compression"]["backend_used"] == "torch"
    result = _train(tmp_path, "--epochs", "1", "--hparams", "lastfm", name="lastfm.json")
    assert result["hparams"] == "lastfm" and result["hyperparameters"]["batch_size"] == 128


def _write(directory: Path, files: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_cli_prints_what_the_reader_noted(tmp_path, capsys):
    data = _write(tmp_path / "d", {"kg_final.txt": "0\t0\t3\n1\t1\t3\n2\t0\t4\n",
                                   "ratings_final.txt": "0\t0\t1\n0\t1\t0\n0\t0\t1\n1\t1\t1\n1\t2\t0\n"})
    assert main(["data", "info", str(data)]) == 0
    assert "note: ratings_final.txt: 1 repeated (user, item) row dropped" in capsys.readouterr().out
    assert main(["data", "info", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"] == [
        "ratings_final.txt: 1 repeated (user, item) row dropped (the first of each pair is kept)"]


def test_cli_ctr_model_on_positives_only_is_a_clear_error(tmp_path, capsys):
    # A KGAT-format folder (positives and a fixed test split) with a CTR model ended with "auc nan".
    data = _write(tmp_path / "kgat", {"kg_final.txt": "0\t0\t3\n1\t1\t3\n2\t0\t4\n",
                                      "train.txt": "0 0 1\n1 2\n2 0\n", "test.txt": "0 2\n1 0 1\n"})
    assert main(["train", "--data", str(data), "--model", "kgcn", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "positive rows only and a fixed test split (KGAT format): the CTR model kgcn needs 0-labelled rows" in err


def test_cli_reports_a_failed_allocation_in_one_line(monkeypatch, capsys):
    import tinykg.cli as cli

    def allocate(_args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 128000000064 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(cli, "_cmd_train", allocate)
    assert main(["train", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("tinykg: error: out of memory (")
    monkeypatch.setattr(cli, "_cmd_train", lambda _args: (_ for _ in ()).throw(RuntimeError("another failure")))
    with pytest.raises(RuntimeError, match="another failure"):  # not every RuntimeError is memory
        main(["train", "--quiet"])


@pytest.mark.parametrize("name, key", [
    ("lastfm-kgcn", "lastfm"), ("Last.FM", "lastfm"), ("music", "lastfm"), ("book-crossing-ripplenet", "book"),
    ("BX", "book"), ("facebook-kg", "synthetic"), ("amazon-musical-instruments", "synthetic"),
    ("books", "book"), ("bookcrossing2", "book"), ("lastfm2k", "lastfm"), ("LastFM1K", "lastfm"), ("last-fm-1k", "lastfm"),
])
def test_dataset_key_reads_whole_words_of_the_name(name, key):
    from tinykg.train.run import dataset_key

    assert dataset_key(name) == key


def test_cli_rating_threshold_reaches_the_reader(tmp_path, capsys):
    data = _write(tmp_path / "rb", {
        "t.inter": "user_id:token\titem_id:token\trating:float\nuA\ti1\t0.9\nuA\ti2\t0.1\nuB\ti3\t0.8\n",
        "t.link": "item_id:token\tentity_id:token\ni1\te1\ni2\te2\ni3\te3\n",
        "t.kg": "head_id:token\trelation_id:token\ttail_id:token\ne1\tr\te2\ne2\tr\te3\n",
    })
    assert main(["data", "info", str(data)]) == 2
    assert "--rating-threshold sets it" in capsys.readouterr().err
    assert main(["data", "info", str(data), "--rating-threshold", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["positives"] == 2
    assert main(["data", "info", str(data), "--rating-threshold", "none", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["positives"] == 3
