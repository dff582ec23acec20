"""`cai train dpo` step time vs raw TRL DPOTrainer with identical settings, same run, as a ratio.

    python bench/train_dpo.py [--data RUN_DIR] [--steps 8] [--batch-size 4] [--max-length 128]

Both arms train the embedded SmolLM2-135M-Instruct (plain checkpoint) with LoRA
(r 16, alpha 32, all linear layers but lm_head), fp32 on CPU, the same pairs, seed,
batch size, max_length, learning rate and beta. Raw TRL is a DPOConfig + DPOTrainer
built by hand; ours is `cai.train.train` (the same code `cai train dpo` runs, with
its progress bar and reports). Step time = median wall time between consecutive
optimizer steps after the first (warm-up) step, taken by the same callback in both.
Without --data a scripted run (instant, fake answers) is generated in a temporary
folder: step time depends on lengths, not on content.

Target (issue): ours <= 1.1x raw.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import ForeignLoad  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


def scripted_run(folder: Path, n: int) -> Path:
    from cai.config import load_pipeline
    from cai.generate import generate

    config = load_pipeline(None, backend="scripted", limit=n, rounds=1, out=str(folder / "run"))
    generate(config)
    return folder / "run"


def raw_trl(data: Path, model_path: str, a) -> list[float]:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from cai.train import data as views

    train = views.pairs(views.locate(str(data)))
    tok = AutoTokenizer.from_pretrained(model_path)
    args = DPOConfig(output_dir=tempfile.mkdtemp(), save_strategy="no", report_to="none", logging_steps=1,
                     per_device_train_batch_size=a.batch_size, learning_rate=5e-5, max_steps=a.steps,
                     seed=0, data_seed=0, bf16=False, use_cpu=True, gradient_checkpointing=False,
                     disable_tqdm=True, max_length=a.max_length, beta=0.1, loss_type=["sigmoid"])
    timer = StepTimer()
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), args=args,
                         train_dataset=train, processing_class=tok, callbacks=[timer],
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    return timer.step_seconds()


def ours(data: Path, model_path: str, a, out: Path) -> list[float]:
    from cai.train.run import train
    from cai.train.config import load_train_config

    timer = StepTimer()
    config = load_train_config(None, algo="dpo", data=str(data), out=str(out), model=model_path,
                               max_steps=a.steps, batch_size=a.batch_size, max_length=a.max_length, lr=5e-5,
                               beta=0.1, seed=0)
    train(config, callbacks=[timer])
    return timer.step_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="run directory (default: a scripted run of --pairs prompts)")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each arm, alternated raw/ours")
    a = parser.parse_args()
    from cai.models import embedded_checkpoint

    model_path = embedded_checkpoint().path
    load = ForeignLoad().start()
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or scripted_run(Path(tmp), a.pairs)
        print(f"model {model_path}\ndata {data}\nsteps {a.steps}, batch {a.batch_size}, max_length {a.max_length}, "
              f"LoRA r16, fp32, torch threads {torch.get_num_threads()}")
        raws, mines = [], []
        for i in range(a.repeats):  # alternated, so a neighbour's burst does not land on one arm only
            raws.append(statistics.median(raw_trl(data, model_path, a)))
            mines.append(statistics.median(ours(data, model_path, a, Path(tmp) / f"out{i}")))
    load.stop()
    # The least disturbed repeat of each arm: on a shared machine noise only ever adds time.
    r, m = min(raws), min(mines)
    print(f"{'arm':<22}{'best median s/step':>19}   per-repeat medians")
    print(f"{'raw TRL DPOTrainer':<22}{r:>19.3f}   {', '.join(f'{x:.3f}' for x in raws)}")
    print(f"{'cai train dpo':<22}{m:>19.3f}   {', '.join(f'{x:.3f}' for x in mines)}")
    ratio = m / r
    print(f"target: ours/raw step time <= 1.1x: {'MET' if ratio <= 1.1 else 'NOT MET'} ({ratio:.3f}x)")
    print(load.describe())


if __name__ == "__main__":
    main()
