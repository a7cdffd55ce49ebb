#!/usr/bin/env bash
# GPU benchmark in one go: agent overhead (MLP, CNN, transformer), real models
# (ResNet-18, GPT-2, ViT, conv CNN: bench/real_overhead.py) and the agent
# scaling sweep on a CUDA device, results under OUT.
#
#   bench/gpu.sh OUT [--device cuda] [--quick]
#
# Assumes a CUDA build of torch is already installed in the active Python (this
# script never installs torch); it pip-installs only this repository (agent +
# parity + bench extras, no network beyond what pip needs for those). `--device
# cpu` is a dry run of the same path on a machine without a GPU.
set -euo pipefail

out=${1:?usage: bench/gpu.sh OUT [--device cuda] [--quick]}
shift
device=cuda
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute: the rest runs from the repository root
cd "$(dirname "$0")/.."
py=${PYTHON:-python}

if [ "${GPU_BENCH_NO_INSTALL:-0}" != 1 ]; then
  # Pinning torch to the installed version keeps the CUDA build that is there.
  "$py" -m pip install -q -e '.[agent,parity,bench,models]' \
    "torch==$("$py" -c 'import torch; print(torch.__version__)')"
fi

"$py" - "$device" <<'PY' | tee "$out/machine.txt"
import platform, subprocess, sys
import torch
device = sys.argv[1]
print("python", platform.python_version(), "torch", torch.__version__)
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: use --device cpu for a dry run")
    print("device", torch.cuda.get_device_name(device), "CUDA", torch.version.cuda)
else:
    print("device", device)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True).stdout.strip()
print("glasscockpit commit", commit or "unknown")
PY

if [ "$quick" = 1 ]; then
  overhead=(--models mlp --repeats 1 --block-s 0.02)
  scaling=(--quick --repeats 1 --block-s 0.02)
else
  overhead=(--models mlp,cnn,transformer --repeats 5 --memory)
  scaling=(--repeats 3)
fi

"$py" -m bench.agent_overhead --device "$device" "${overhead[@]}" \
  --json "$out/agent_overhead.json" | tee "$out/agent_overhead.md"
# Models nobody here wrote (issue 18): ResNet-18 (GroupNorm), GPT-2, ViT-tiny, the
# conv-heavy CNN; needs the `models` extra (torchvision, timm, transformers).
if [ "$quick" = 1 ]; then
  real=(--models convnet --repeats 1 --steps 4)
else
  real=(--models convnet,gpt2,vit,resnet18 --repeats 3 --steps 30)
fi
"$py" -m bench.real_overhead --device "$device" "${real[@]}" \
  --json "$out/real_overhead.json" | tee "$out/real_overhead.md"
"$py" -m bench.scaling --device "$device" --no-server "${scaling[@]}" \
  --json "$out/scaling.json" --plots "$out"
echo "results in $out"
