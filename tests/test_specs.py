"""Model specs keep what caches are keyed on: identities byte-identical to the code before specs,
and a run folder made before the change resumes with no model call."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cai.backends.specs import model_spec
from cai.config import load_pipeline
from cai.generate import generate
from cai.records import RecordStore

FIXTURE = Path(__file__).parent / "data" / "pre_spec_run"  # made by cai at 89aae7c; see old_pipeline.yaml


@pytest.mark.parametrize("key, expected", sorted(json.loads((FIXTURE / "identities.json").read_text()).items()))
def test_identities_are_byte_identical_to_before_specs(key, expected):
    backend, fields = json.loads(key)
    model = fields.pop("model")
    assert model_spec(backend=backend, model=model, options=fields).identity() == expected


def _new_pipeline(folder: Path) -> Path:
    """The fixture's old pipeline, its flat model keys moved into policy/judge specs."""
    old = yaml.safe_load((folder / "old_pipeline.yaml").read_text())
    new = {k: v for k, v in old.items() if k not in ("backend", "model")}
    new["policy"] = {"backend": old["backend"], "model": old["model"]}
    new["out"] = str(folder / "run")  # `out` is relative to the working directory
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(new, sort_keys=False))
    return path


def _records(run: Path) -> dict[str, dict]:
    return {r["id"]: {k: v for k, v in r.items() if k != "created"} for r in RecordStore(run / "records")}


def test_a_run_made_before_specs_resumes_with_no_model_call(tmp_path):
    folder = shutil.copytree(FIXTURE, tmp_path / "fixture")
    config = load_pipeline(_new_pipeline(folder))
    assert (config.judge.backend, config.judge.model) == ("scripted", "judge")  # followed the policy's backend
    old = _records(folder / "run")
    summary = generate(config)
    assert summary["counts"]["model_calls"] == 0 and summary["counts"]["resumed"] == len(old) == 6
    # Same fingerprints: the old records are this run's records, and no new shard was written.
    assert len(list((folder / "run" / "records").glob("shard-*"))) == 1
    # Without its records, the run is rebuilt from the old cache alone: every call key is unchanged.
    shutil.rmtree(folder / "run" / "records")
    again = generate(load_pipeline(folder / "pipeline.yaml"))
    assert again["counts"]["model_calls"] == 0 and again["counts"]["cache_hits"] == 66
    assert _records(folder / "run") == old
