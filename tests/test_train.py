"""`cai train`: every algorithm runs on a tiny random model and leaves a loadable model; DPO moves the
implicit reward margin the right way; the reward model learns a separable set; bad input exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cai.cli import app
from helpers import write_pipeline

TINY_TRAIN = {"batch_size": 2, "max_length": 128, "lora_config": {"r": 4, "alpha": 8, "dropout": 0.0},
              "ppo": {"rollout_batch": 2, "mini_batch": 2, "ppo_epochs": 1, "max_new_tokens": 8},
              "grpo": {"num_generations": 2, "max_completion_length": 8}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A scripted `cai generate` run: RUN/dataset pairs, RUN/sft messages, run.json."""
    from cai.config import load_pipeline
    from cai.generate import generate

    d = tmp_path_factory.mktemp("gen")
    config = load_pipeline(write_pipeline(d, n_prompts=16, rounds=1))
    generate(config)
    return d / "out"


@pytest.fixture(scope="module")
def train_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "train.yaml"
    path.write_text(yaml.safe_dump(TINY_TRAIN))
    return path


def _train(algo, data, out, model, train_yaml, **kw):
    from cai.train.run import train
    from cai.train.config import load_train_config

    return train(load_train_config(train_yaml, algo=algo, data=str(data), out=str(out), model=model, **kw))


@pytest.mark.parametrize("algo", ["sft", "dpo", "kto", "orpo", "simpo", "reward", "ppo", "grpo"])
def test_every_algo_two_steps_leaves_a_loadable_model(algo, run_dir, tiny_model, train_yaml, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / algo
    metrics = _train(algo, run_dir, out, tiny_model, train_yaml, max_steps=2)
    assert metrics["steps"] == 2
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    loader = AutoModelForSequenceClassification if algo == "reward" else AutoModelForCausalLM
    model = loader.from_pretrained(out)
    assert not any(type(m).__name__.startswith("Lora") for m in model.modules())  # merged, plain
    assert (out / "adapter" / "adapter_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template
    info = json.loads((out / "train.json").read_text())
    run = json.loads((run_dir / "run.json").read_text())
    assert info["constitution_sha256"] == run["constitution_sha256"]
    assert info["config"]["algo"] == algo and info["config"]["max_steps"] == 2
    assert (out / "loss.png").stat().st_size > 1000
    if algo == "reward":
        import pyarrow.parquet as pq

        # Every pair of the generated data's test split is scored, none more.
        held_out = pq.read_metadata(run_dir / "dataset" / "test.parquet").num_rows
        assert held_out > 0 and metrics["heldout"]["n"] == held_out and "ci95" in metrics["heldout"]
    if algo in ("ppo", "grpo"):  # no --reward-model: one is trained first from the same data
        assert (out / "reward_model" / "config.json").is_file()
        assert metrics["reward_model"] == str(out / "reward_model")


def _logp(model, tok, prompt, answer):
    import torch

    p = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tok.apply_chat_template(prompt + answer, tokenize=True, return_dict=False)
    ids = torch.tensor([full])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    return float(logp[torch.arange(len(p) - 1, len(full) - 1), targets[len(p) - 1:]].sum())


def _implicit_margins(pol, ref, tok, rows, beta=0.1):
    """DPO's implicit reward margin per pair: beta * (chosen - rejected) log-ratio of policy to reference."""
    margins = []
    for r in rows:
        c = _logp(pol, tok, r["prompt"], r["chosen"]) - _logp(ref, tok, r["prompt"], r["chosen"])
        j = _logp(pol, tok, r["prompt"], r["rejected"]) - _logp(ref, tok, r["prompt"], r["rejected"])
        margins.append(beta * (c - j))
    return margins


def test_dpo_moves_the_implicit_reward_margin_toward_chosen(tiny_model, train_yaml, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.dataset import SCHEMAS

    rows = [{"prompt": [{"role": "user", "content": f"Question {i}: can you help me?"}],
             "chosen": [{"role": "assistant", "content": "Yes, gladly. Here is a careful and kind answer."}],
             "rejected": [{"role": "assistant", "content": "No. Go away and figure it out yourself."}],
             "id": f"q{i}", "constitution_sha256": "x", "principle_ids": ["harm"], "rounds": 1,
             "model": "m", "category": "c"} for i in range(4)]
    data = tmp_path / "pairs"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS["default"]), data / "train.parquet")
    out = tmp_path / "dpo"
    _train("dpo", data, out, tiny_model, train_yaml, max_steps=12, lr=5e-3, beta=0.1)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ref, pol = AutoModelForCausalLM.from_pretrained(tiny_model), AutoModelForCausalLM.from_pretrained(out)
    margins = _implicit_margins(pol, ref, tok, rows)
    assert all(m > 0 for m in margins), margins
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    logged = [h["rewards/margins"] for h in history if "rewards/margins" in h]
    assert logged[-1] > logged[0]


def test_reward_model_beats_chance_on_a_separable_set(tiny_model, train_yaml, tmp_path):
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    words = "apple river stone cloud paper music garden window train coffee".split()

    def row(i):
        q = " ".join(rng.choice(words) for _ in range(5))
        return {"prompt": [{"role": "user", "content": f"Tell me about {q}."}],
                "chosen": [{"role": "assistant", "content": f"{q.capitalize()}. Thank you, happy to help!"}],
                "rejected": [{"role": "assistant", "content": f"{q.capitalize()}. Whatever, I do not care."}]}

    data = tmp_path / "sep"
    data.mkdir()
    for split, n in (("train", 48), ("test", 24)):
        pq.write_table(pa.Table.from_pylist([row(i) for i in range(n)]), data / f"{split}.parquet")
    metrics = _train("reward", data, tmp_path / "rm", tiny_model, train_yaml, max_steps=30, lr=3e-3,
                     batch_size=8, lora=False)
    held = metrics["heldout"]
    assert held["n"] == 24
    assert held["accuracy"] >= 0.8 and held["ci95"][0] > 0.5, held


def test_soft_labels_filter_and_margin(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cai.train import data

    msg = [{"role": "user", "content": "q"}]
    rows = [{"prompt": msg, "chosen": msg, "rejected": msg, "chosen_prob": p, "margin": m}
            for p, m in ((0.9, 2.2), (0.55, 0.2), (None, None))]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    src = data.locate(str(tmp_path))
    kept = data.pairs(src, min_confidence=0.6, label="margin")
    assert kept["margin"] == [2.2, 0.0]  # 0.55 dropped; an unlabelled pair is kept with margin 0
    assert data.pairs(src, min_confidence=0.6, label="chosen_prob")["chosen_prob"] == [0.9, 1.0]  # p = 1
    assert {"margin", "chosen_prob"}.isdisjoint(data.pairs(src).column_names)
    kto = data.kto(src)
    assert len(kto) == 6 and sorted(kto["label"]) == [False] * 3 + [True] * 3


USER = [{"role": "user", "content": "Is the sky blue?"}]
GOOD = [{"role": "assistant", "content": "Yes, on a clear day."}]
BAD = [{"role": "assistant", "content": "No."}]
SHAPES = {  # the same preference pair in each of TRL's dataset shapes
    "conversational": {"prompt": USER, "chosen": GOOD, "rejected": BAD},
    "standard": {"prompt": "Is the sky blue?", "chosen": "Yes, on a clear day.", "rejected": "No."},
    "implicit_prompt": {"chosen": USER + GOOD, "rejected": USER + BAD},
    "from_value": {"prompt": [{"from": "user", "value": "Is the sky blue?"}],
                   "chosen": [{"from": "assistant", "value": "Yes, on a clear day."}],
                   "rejected": [{"from": "assistant", "value": "No."}]},
}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_trl_preference_shape_reads_as_the_same_conversational_pair(tmp_path, shape):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cai.train import data

    # The layout `cai push` uploads and `hf download` fetches: data/<split>-*.parquet.
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist([SHAPES[shape]] * 2), tmp_path / "data" / "train-00000-of-00001-ab12.parquet")
    src = data.locate(str(tmp_path))
    row = data.pairs(src)[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == (USER, GOOD, BAD)
    assert data.messages(src)[0] == {"prompt": USER, "completion": GOOD}
    assert data.prompts(src)["prompt"] == [USER]
    assert data.pairs(src, "test") is None


def test_save_to_disk_folders_read_like_parquet_and_stay_untouched(tmp_path):
    from datasets import Dataset, DatasetDict

    from cai.train import data

    pairs = Dataset.from_list([SHAPES["standard"]] * 3)
    DatasetDict({"train": pairs, "test": pairs.select([0])}).save_to_disk(str(tmp_path / "dict"))
    Dataset.from_list([{"messages": USER + GOOD}]).save_to_disk(str(tmp_path / "one"))
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))

    src = data.locate(str(tmp_path / "dict"))
    assert src.pairs_dir == tmp_path / "dict" and src.sft_dir is None
    assert len(data.pairs(src)) == 3 and len(data.pairs(src, "test")) == 1
    row = data.pairs(src)[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == (USER, GOOD, BAD)
    one = data.locate(str(tmp_path / "one"))  # a single Dataset is the train split
    assert one.pairs_dir is None and data.messages(one)[0] == {"prompt": USER, "completion": GOOD}
    assert data.messages(one, "test") is None
    # Reading wrote no cache files into the user's folders.
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before

    # A broken index or split folder is bad input: one line, exit 2.
    (tmp_path / "dict" / "dataset_dict.json").write_text("{not json")
    result = CliRunner().invoke(app, ["train", "dpo", "--data", str(tmp_path / "dict")])
    assert result.exit_code == 2 and f"{tmp_path / 'dict' / 'dataset_dict.json'}:1: splits:" in result.output
    (tmp_path / "one" / "dataset_info.json").unlink()
    result = CliRunner().invoke(app, ["train", "sft", "--data", str(tmp_path / "one")])
    assert result.exit_code == 2 and "unreadable save_to_disk folder" in result.output, result.output


def test_sft_data_as_conversations_or_prompt_completion(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cai.train import data

    for name, row in (("a", {"conversations": [{"from": "user", "value": "Is the sky blue?"},
                                                {"from": "assistant", "value": "Yes, on a clear day."}]}),
                      ("b", {"prompt": "Is the sky blue?", "completion": "Yes, on a clear day."})):
        (tmp_path / name).mkdir()
        pq.write_table(pa.Table.from_pylist([row]), tmp_path / name / "train.parquet")
        src = data.locate(str(tmp_path / name))
        assert src.pairs_dir is None
        assert data.messages(src)[0] == {"prompt": USER, "completion": GOOD}, name


def test_cli_train_dpo_writes_the_model(run_dir, tiny_model, train_yaml, tmp_path):
    out = tmp_path / "cli-dpo"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "cai", "train", "dpo", "--data", str(run_dir), "--out", str(out),
                           "--config", str(train_yaml), "--model", tiny_model, "--max-steps", "1",
                           "--loss-type", "ipo"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(out)
    assert "dpo: 1 steps" in proc.stderr
    assert json.loads((out / "train.json").read_text())["config"]["loss_type"] == "ipo"


@pytest.mark.parametrize("args,expect", [
    (["train", "dpo", "--data", "/nonexistent/run"], "/nonexistent/run: --data: no such directory"),
    (["train", "ppx", "--data", "."], "unknown algorithm 'ppx'"),
    (["train", "dpo", "--data", ".", "--max-steps", "0"], "--max-steps"),
])
def test_bad_input_exits_2_with_one_line(args, expect, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert expect in result.output
    assert "Traceback" not in result.output


def test_bad_yaml_field_and_missing_columns_exit_2(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "train.yaml"
    bad.write_text("batch_size: 2\nlearning_rate: 0.1\n")
    result = CliRunner().invoke(app, ["train", "dpo", "--data", str(tmp_path), "--config", str(bad)])
    assert result.exit_code == 2 and f"{bad}:2: learning_rate" in result.output
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist([{"prompt": [{"role": "user", "content": "q"}], "chosen": [], "x": 1}]),
                   data / "train.parquet")
    result = CliRunner().invoke(app, ["train", "sft", "--data", str(data)])
    # neither a pair (no `rejected`) nor SFT rows: the error names the columns it found
    assert result.exit_code == 2 and "data/ has columns chosen, prompt, x" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_reward_on_ai_feedback_labels_uses_soft_labels_and_confidence(tiny_model, train_yaml, tmp_path):
    """A `generate --feedback` run (scripted judge): pairs below min_confidence are dropped and the
    judge's chosen_prob (or with --reward-loss margin its margin) reaches RewardTrainer."""
    import pyarrow.parquet as pq

    from cai.config import load_pipeline
    from cai.generate import generate
    from cai.train import data

    generate(load_pipeline(write_pipeline(tmp_path / "gen", n_prompts=24, rounds=1), feedback=True))
    run = tmp_path / "gen" / "out"
    probs = pq.read_table(run / "dataset" / "train.parquet").column("chosen_prob").to_pylist()
    kept = data.pairs(data.locate(str(run)), min_confidence=0.6, label="margin")
    assert len(kept) == sum(p >= 0.6 for p in probs) and 0 < len(kept) < len(probs)
    assert all(m > 0 for m in kept["margin"])
    for loss in ("soft", "margin"):
        metrics = _train("reward", run, tmp_path / loss, tiny_model, train_yaml, max_steps=1, min_confidence=0.6,
                         reward_loss=loss)
        assert metrics["steps"] == 1


@pytest.mark.slow
def test_dpo_on_the_embedded_model_from_a_pushed_dataset(run_dir, embedded, train_yaml, tmp_path):
    """The real model on the user's path: `cai push --dry-run` writes the Hub layout, `cai train dpo --data`
    reads it, and DPO moves the embedded model's implicit reward margin toward the chosen answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai import hub
    from cai.train import data

    upload = tmp_path / "upload"
    hub.dry_run(run_dir, upload, "org/name")
    out = tmp_path / "dpo"
    metrics = _train("dpo", upload, out, "embedded", train_yaml, max_steps=6, lr=1e-3, beta=0.1)
    assert metrics["steps"] == 6
    info = json.loads((out / "train.json").read_text())
    assert info["base_model"] == embedded.identity
    assert info["constitution_sha256"] == json.loads((run_dir / "run.json").read_text())["constitution_sha256"]
    rows = list(data.pairs(data.locate(str(upload))))[:4]
    tok = AutoTokenizer.from_pretrained(out)
    ref, pol = AutoModelForCausalLM.from_pretrained(embedded.path), AutoModelForCausalLM.from_pretrained(out)
    margins = _implicit_margins(pol, ref, tok, rows)
    print("DPO on the embedded model, implicit reward margins:", [round(m, 3) for m in margins])
    assert all(m > 0.5 for m in margins), margins  # ~4.7 each after 6 steps at lr 1e-3
