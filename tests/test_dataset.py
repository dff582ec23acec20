"""The dataset folder: TRL's conversational preference schema, an SFT view, deterministic
splits, and trl.DPOTrainer taking it with no conversion."""

from __future__ import annotations

import datasets

from cai.dataset import split_of
from helpers import run
from helpers import write_pipeline


def test_schema_splits_and_sft_view(tmp_path):
    summary = run(write_pipeline(tmp_path, n_prompts=40))
    path = tmp_path / "out" / "dataset"
    prefs = datasets.load_dataset(str(path))
    sft = datasets.load_dataset(str(tmp_path / "out" / "sft"))
    assert set(prefs) == {"train", "test"}
    n = sum(len(s) for s in prefs.values())
    assert n == summary["counts"]["pairs"] > 0
    row = prefs["train"][0]
    assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]
    assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"
    assert row["chosen"] != row["rejected"]
    for col in ("id", "constitution_sha256", "principle_ids", "rounds", "model", "category"):
        assert col in row
    assert len(row["principle_ids"]) == row["rounds"] == 2
    assert row["constitution_sha256"] == summary["constitution"]["sha256"]
    # Splits follow the id, whatever the order or the run.
    for name, split in prefs.items():
        assert all(split_of(i, 0.25) == name for i in split["id"])
    # The SFT view is prompt + final revision, for the same rows.
    by_id = {r["id"]: r for r in prefs["train"]}
    for r in sft["train"]:
        assert r["messages"] == by_id[r["id"]]["prompt"] + by_id[r["id"]]["chosen"]


def test_split_of_is_stable_and_roughly_sized():
    ids = [f"id-{i}" for i in range(5000)]
    share = sum(split_of(i, 0.1) == "test" for i in ids) / len(ids)
    assert 0.08 < share < 0.12
    assert [split_of(i, 0.1) for i in ids] == [split_of(i, 0.1) for i in ids]


def test_dpo_trainer_takes_the_dataset_as_is(tmp_path, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    run(write_pipeline(tmp_path, n_prompts=16))
    ds = datasets.load_dataset(str(tmp_path / "out" / "dataset"))["train"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    before = [p.detach().clone() for p in model.parameters()]
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2,
                     bf16=False, use_cpu=True, report_to=[], max_length=128, logging_steps=1,
                     save_strategy="no", learning_rate=1e-2)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_each_run_dir_loads_its_own_rows(tmp_path):
    """`datasets` caches loads; two runs' folders must never be served each other's rows."""
    run(write_pipeline(tmp_path / "a", n_prompts=8))
    run(write_pipeline(tmp_path / "b", n_prompts=20))
    a = datasets.load_dataset(str(tmp_path / "a" / "out" / "dataset"))
    b = datasets.load_dataset(str(tmp_path / "b" / "out" / "dataset"))
    ids_a = {i for s in a.values() for i in s["id"]}
    ids_b = {i for s in b.values() for i in s["id"]}
    assert len(ids_a) < len(ids_b) and ids_a < ids_b
