"""The distilabel 1.5.3 side of bench/distilabel_vs_cai.py; run with the distilabel venv's python.

    .venv-distilabel/bin/python bench/_distilabel_side.py IN.json OUT.json   (from the repository root)

IN.json: {"model": checkpoint folder, "max_new_tokens": {stage: n}, "repetition_penalty": r,
"rows": [{"id", "prompt", "critique_request", "revision_request"}]}. The same one-round
SL-CAI pipeline as cai's: respond -> critique -> revise, each a distilabel ChatGeneration
task on TransformersLLM (transformers on CPU, greedy), with the conversation continued as
cai continues it. Writes the rows it got back and the pipeline's wall-clock seconds.
"""

# No `from __future__ import annotations`: distilabel checks that a step's parameter is annotated
# with the StepInput type itself, and the steps live at module level so worker processes can import them.
import json
import sys
import time

from distilabel.models.llms import TransformersLLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts, StepInput, step
from distilabel.steps.tasks import ChatGeneration


@step(inputs=["prompt"], outputs=["messages"])
def ToRespond(inputs: StepInput):
    for row in inputs:
        row["messages"] = [{"role": "user", "content": row["prompt"]}]
    yield inputs


@step(inputs=["prompt", "initial", "critique_request"], outputs=["messages"])
def ToCritique(inputs: StepInput):
    for row in inputs:
        row["messages"] = [{"role": "user", "content": row["prompt"]},
                           {"role": "assistant", "content": row["initial"] or ""},
                           {"role": "user", "content": row["critique_request"]}]
    yield inputs


@step(inputs=["messages", "critique", "revision_request"], outputs=["messages"])
def ToRevise(inputs: StepInput):
    for row in inputs:
        row["messages"] = row["messages"] + [{"role": "assistant", "content": row["critique"] or ""},
                                             {"role": "user", "content": row["revision_request"]}]
    yield inputs


def main(src: str, dst: str) -> None:
    spec = json.loads(open(src).read())

    def llm(stage: str) -> TransformersLLM:
        return TransformersLLM(
            model=spec["model"], torch_dtype="float32", device="cpu",
            generation_kwargs={"max_new_tokens": spec["max_new_tokens"][stage], "do_sample": False,
                               "temperature": 1.0, "top_p": 1.0, "repetition_penalty": spec["repetition_penalty"]},
        )

    started = time.perf_counter()
    with Pipeline(name="cai-bench-sl-cai") as pipeline:
        load = LoadDataFromDicts(data=spec["rows"], batch_size=len(spec["rows"]))
        respond = ChatGeneration(name="respond", llm=llm("respond"), input_batch_size=len(spec["rows"]),
                                 output_mappings={"generation": "initial"})
        critique = ChatGeneration(name="critique", llm=llm("critique"), input_batch_size=len(spec["rows"]),
                                  output_mappings={"generation": "critique"})
        revise = ChatGeneration(name="revise", llm=llm("revise"), input_batch_size=len(spec["rows"]),
                                output_mappings={"generation": "revision"})
        load >> ToRespond() >> respond >> ToCritique() >> critique >> ToRevise() >> revise
    distiset = pipeline.run(use_cache=False)
    seconds = time.perf_counter() - started
    rows = []
    for config in distiset.values():
        for split in config.values():
            for r in split:
                rows.append({k: r.get(k) for k in ("id", "initial", "critique", "revision")})
    with open(dst, "w") as fh:
        json.dump({"seconds": seconds, "rows": rows}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
