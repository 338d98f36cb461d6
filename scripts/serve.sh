#!/usr/bin/env bash
# Set up (or refresh) .venv, then run listenpost on embedded defaults:
# an embedded nats-server, a local Ray, router_rules/.
#
# With a CUDA GPU the default model is Qwen/Qwen3-Omni-30B-A3B-Captioner (from the
# hub or LISTENPOST_CAPTIONER__MODEL). Without one, unless a model is set, a tiny
# random-weight checkpoint is built offline and served on the CPU build of vLLM:
# everything runs for real, but its captions are noise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }; then
  if [ -z "${LISTENPOST_CAPTIONER__MODEL:-}" ]; then
    tiny=.cache/models/tiny-qwen3-omni
    .venv/bin/listenpost model build-tiny "$tiny"
    export LISTENPOST_CAPTIONER__MODEL=$tiny
  fi
  export LISTENPOST_CAPTIONER__DTYPE=${LISTENPOST_CAPTIONER__DTYPE:-float32}
  export LISTENPOST_CAPTIONER__ENFORCE_EAGER=${LISTENPOST_CAPTIONER__ENFORCE_EAGER:-true}
  export LISTENPOST_CAPTIONER__MAX_MODEL_LEN=${LISTENPOST_CAPTIONER__MAX_MODEL_LEN:-2048}
  export LISTENPOST_CAPTIONER__CPU_KVCACHE_GIB=${LISTENPOST_CAPTIONER__CPU_KVCACHE_GIB:-2}
else
  export LISTENPOST_CAPTIONER__NUM_GPUS=${LISTENPOST_CAPTIONER__NUM_GPUS:-1}
fi
exec .venv/bin/listenpost serve "$@"
