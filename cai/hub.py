"""`cai push`: a run's current dataset, its card, constitution and run.json, to a Hub dataset repo.

The upload folder is assembled the same way for a push and for `--dry-run DIR`:

    README.md                     the card (cai.card), front matter with `configs`
    data/<split>-00000-of-00001-<sha12>.parquet   preference pairs (TRL conversational schema)
    sft/<split>-00000-of-00001-<sha12>.parquet    the SFT view (`sft` config)
    constitution.yaml             the exact constitution text the rows were made with
    run.json                      the run's config, counts, timings, versions, scrubbed of secrets
    images/principle_usage.png    the principle-usage histogram the card shows

A push is one commit made with `HfApi.create_commit`: the files above, plus a
deletion of every file under data/, sft/ and images/ that the new folder no
longer has, so pushing again updates the repo instead of piling up shards.
The token is whatever huggingface_hub resolves (HF_TOKEN, or the user's
`hf auth login`); cai never reads it into a file, and scrubs run.json of
anything that looks like a key.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

from cai.errors import InputError, Problem
from cai.redact import scrub_run, unlocated
from cai.runfiles import why_no_pairs

MANAGED_DIRS = ("data", "sft", "images")
MANAGED_FILES = ("README.md", "constitution.yaml", "run.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class PushError(Exception):
    """The Hub refused or could not be reached: exit 1 with one line."""


def check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id or "") or "--" in repo_id or ".." in repo_id or repo_id.endswith((".", "-")):
        raise InputError([Problem("--repo-id", None, "",
                                  f"{repo_id!r} is not a Hub repo id: expected ORG/NAME (letters, digits, '-', '_', '.')")])


def load_run(run_dir: str | Path) -> dict:
    """run.json, the constitution text matching its hash, principle usage; bad input is exit 2."""
    from cai import versions

    run_dir = Path(run_dir)
    where = str(run_dir / "run.json")
    if not (run_dir / "run.json").is_file():
        raise InputError([Problem(str(run_dir), None, "", "not a run directory: no run.json (run `cai generate --out DIR` first)")])
    try:
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError([Problem(where, getattr(exc, "lineno", None), "", f"not valid JSON: {exc}")]) from None
    if run.get("status") not in ("complete", "incomplete"):
        raise InputError([Problem(where, None, "status", f"the run is {run.get('status')!r}; finish it with `cai generate` before pushing")])
    sha = (run.get("constitution") or {}).get("sha256") or run.get("constitution_sha256")
    dataset_dir = run_dir / "dataset"
    if not sha or not dataset_dir.is_dir() or not list(dataset_dir.glob("*.parquet")):
        if why_no_pairs(run_dir):
            raise InputError([Problem(str(run_dir), None, "", why_no_pairs(run_dir) + "; nothing to push")])
        raise InputError([Problem(str(dataset_dir), None, "", "no dataset files; re-run `cai generate` for this run")])
    kept = versions.find_version(run_dir, sha)
    text = None
    if kept and (kept["dir"] / "constitution.yaml").is_file():
        text = (kept["dir"] / "constitution.yaml").read_text(encoding="utf-8")
        usage, principles = kept["principle_usage"], kept["principles"]
    else:  # a run made before versions were kept: use the file if it still has the run's hash
        from cai.constitution import load_constitution

        path = run.get("constitution_path") or (run.get("constitution") or {}).get("path")
        try:
            cons = load_constitution(path)
        except (InputError, TypeError, OSError):
            cons = None
        if cons is None or cons.sha256 != sha:
            raise InputError([Problem(str(path), None, "", f"the constitution no longer has the run's sha256 {sha[:12]}; "
                                      "re-run `cai generate` so the card shows the text the data was made with")])
        text = Path(path).read_text(encoding="utf-8")
        principles = [p.id for p in cons.principles]
        usage = _usage_from_dataset(dataset_dir)
    audit = None
    if (run_dir / "audit" / "report.json").is_file():
        audit = json.loads((run_dir / "audit" / "report.json").read_text(encoding="utf-8"))
    return {"run": run, "constitution_text": text, "usage": usage, "principles": principles, "audit": audit}


def _usage_from_dataset(dataset_dir: Path) -> dict[str, int]:
    import pyarrow.parquet as pq
    from collections import Counter

    usage: Counter = Counter()
    for f in dataset_dir.glob("*.parquet"):
        for ids in pq.read_table(f, columns=["principle_ids"]).column("principle_ids").to_pylist():
            usage.update(ids)
    return dict(usage)


def assemble(run_dir: str | Path, folder: str | Path, repo_id: str, license: str = "apache-2.0") -> list[str]:
    """Write the upload folder's files into `folder` (managed paths replaced); return their relative paths."""
    from cai import card

    run_dir, folder = Path(run_dir), Path(folder)
    info = load_run(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for d in MANAGED_DIRS:
        shutil.rmtree(folder / d, ignore_errors=True)
    for f in MANAGED_FILES:
        (folder / f).unlink(missing_ok=True)
    written: list[str] = []
    data_files: dict[str, dict[str, str]] = {}
    for source, target in (("dataset", "data"), ("sft", "sft")):
        for split_file in sorted((run_dir / source).glob("*.parquet")):
            # The content hash in the name makes the card's `configs` differ whenever the rows do:
            # `datasets` keys its cache on the folder's name and the README's configs, not the files,
            # so two upload folders with one name and identical patterns would share cached rows.
            digest = hashlib.sha256(split_file.read_bytes()).hexdigest()[:12]
            rel = f"{target}/{split_file.stem}-00000-of-00001-{digest}.parquet"
            (folder / target).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(split_file, folder / rel)
            written.append(rel)
            data_files.setdefault(target, {})[split_file.stem] = rel
    (folder / "constitution.yaml").write_text(info["constitution_text"], encoding="utf-8")
    run = unlocated(scrub_run(info["run"]), run_dir)
    (folder / "run.json").write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    card.principle_histogram(info["usage"], info["principles"], folder / card.HISTOGRAM)
    readme = card.build_card(run, info["constitution_text"], info["usage"], info["principles"], repo_id,
                             info["audit"], license, data_files)
    (folder / "README.md").write_text(str(readme), encoding="utf-8")
    written += ["constitution.yaml", "run.json", card.HISTOGRAM, "README.md"]
    return sorted(written)


DRY_RUN_MARKER = ".cai-dry-run"  # in a folder a dry run made: the next dry run may replace its files


def dry_run(run_dir: str | Path, out_dir: str | Path, repo_id: str, license: str = "apache-2.0") -> list[str]:
    """Assemble the upload folder into `out_dir`: an empty or missing folder, or one an earlier dry run made.

    Anything else is refused (exit 2) before a file is touched: assembling replaces data/, sft/,
    images/, README.md, run.json and constitution.yaml, which in a project folder are the user's.
    """
    from cai.rundir import check_out

    check_repo_id(repo_id)
    load_run(run_dir)  # a run that cannot be pushed leaves the folder untouched
    run, out = Path(run_dir).resolve(), Path(out_dir).expanduser().resolve()
    if out == run or run in out.parents:
        raise InputError([Problem("command line", None, "--dry-run", f"{out_dir} is inside the run folder "
                                  f"{run_dir}; name a new folder outside it")])
    if out.is_dir() and any(out.iterdir()) and not (out / DRY_RUN_MARKER).is_file():
        raise InputError([Problem("command line", None, "--dry-run", f"{out_dir} is not empty and was not made by "
                                  "`cai push --dry-run`; name a new or empty folder (its files would be replaced)")])
    check_out(out, "--dry-run")
    out.mkdir(parents=True, exist_ok=True)
    (out / DRY_RUN_MARKER).write_text("made by `cai push --dry-run`; its files are replaced by the next one\n",
                                      encoding="utf-8")
    return assemble(run_dir, out, repo_id, license)


def push(run_dir: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         license: str = "apache-2.0", endpoint: str | None = None, token: str | None = None) -> dict:
    """Create the dataset repo if needed and commit the upload folder in one commit; return what was done."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="cai-push-") as tmp:
        files = assemble(run_dir, tmp, repo_id, license)
        try:
            if not (token or _resolved_token()):
                raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
            url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
            existing = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
            stale = sorted(f for f in existing if f.split("/")[0] in MANAGED_DIRS and f not in files)
            ops = [CommitOperationDelete(path_in_repo=f) for f in stale]
            ops += [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(Path(tmp) / f)) for f in files]
            sha = json.loads((Path(tmp) / "run.json").read_text(encoding="utf-8"))["constitution_sha256"]
            commit = api.create_commit(
                repo_id, operations=ops, repo_type="dataset", revision=revision,
                commit_message=f"cai push: constitution {sha[:12]}",
                commit_description=f"Dataset made with constitution sha256 {sha}.",
            )
        except HfHubHTTPError as exc:
            raise PushError(_one_line(exc)) from exc
        except (PushError, InputError):
            raise
        except Exception as exc:  # noqa: BLE001 - the HTTP client's own errors (connect, timeout, TLS)
            raise PushError(f"cannot reach {api.endpoint}: {type(exc).__name__}: {_one_line(exc)}") from exc
    return {"repo_url": str(url), "commit_url": commit.commit_url, "commit": commit.oid,
            "files": files, "deleted": stale}


def _resolved_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
