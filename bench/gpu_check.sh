#!/usr/bin/env bash
# The one GPU check: run it on one H100/H200 with no network and no package registry (the project and its
# dependencies already installed: the swarm image, or `make setup` done while online). Offline data, the
# unmodified train.py twice through a real runner (120 s budget each), then tok/s, MFU, steps, peak VRAM,
# compile seconds cold and warm, evaluation seconds, overhead and the sigma of the two val_bpb, printed and
# written to gpu_check.json. Finishes in under 9 minutes (a hard stop at 9).
#   bench/gpu_check.sh [--gpu N] [--out FILE]
#   bench/gpu_check.sh --cpu-dry-run      # the same path on the CPU with a tiny budget (CI runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
case " $* " in
  *" --cpu-dry-run "*|*" --smoke "*) ;;
  *) command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi here; on a CPU machine use --cpu-dry-run" >&2; exit 2; } ;;
esac
# nothing here may reach the network: fail fast instead of waiting on a registry or a dataset mirror
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1
exec timeout --kill-after=20 540 "$PY" bench/gpu_check.py "$@"
