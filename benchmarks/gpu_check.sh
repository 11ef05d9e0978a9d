#!/usr/bin/env bash
# The GPU check, one call on a GPU machine without network: groupo installed from its wheel into that
# machine's own Python, the tests marked `gpu`, then benchmarks/gpu_step.py on a random ~0.5B and
# ~1.5B Qwen2 (LoRA r16, 16 prompts x 8 samples x 256 tokens), in about 8 minutes.
#
#   bash benchmarks/gpu_check.sh --dry-run   # here (CPU, registry reachable): build what travels,
#                                            # check its size, print the plan, run the CPU-safe parts
#   bash benchmarks/gpu_check.sh             # on the GPU machine, with benchmarks/wheelhouse carried
#
# The GPU machine has Python 3.12, torch 2.11 (CUDA 13), transformers 5.17, peft, accelerate,
# safetensors, tensorboard, rich and pyyaml, and no network. So the dry run builds, into the
# git-ignored benchmarks/wheelhouse/ (copied to the GPU machine with the working tree):
#   - groupo's wheel: `pip wheel --no-deps .`
#   - the pure-Python wheels groupo and the tests may find missing or out of range there, at the
#     lock's versions (constraints.txt), for Python 3.12:
#     `pip download --only-binary=:all: --python-version 3.12 --no-deps` (PURE below, ~10 MB)
# The check then makes a virtualenv over the machine's Python (it sees that Python's packages, its
# torch and CUDA as they are; nothing is written into the machine's Python), installs into it from
# the wheelhouse with --no-index --no-deps only what is missing or outside groupo's ranges, and
# groupo's wheel.
# Results: printed, and as JSON under $OUT when the caller sets it (to collect them afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HOUSE=benchmarks/wheelhouse
LIMIT_MIB=64  # what may travel to the GPU machine with the working tree
PURE="gguf math-verify latex2sympy2_extended antlr4-python3-runtime sympy mpmath peft packaging
      pytest iniconfig pluggy Pygments"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
[ $# -le $DRY ] || { echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2; }

# gpu_step.py runs: name, time limit (s), its flags (Qwen2.5-0.5B's and -1.5B's shapes; the rest default:
# LoRA r16, 16 prompts x 8 samples, 256 new tokens, micro-batch 16)
SIZES=("0.5B|120|--steps 3"
       "1.5B|180|--steps 2 --layers 28 --hidden 1536 --heads 12 --kv-heads 2 --intermediate 8960")

lock_version() {  # the version constraints.txt pins for $1
    grep -i "^$1==" constraints.txt | head -1 | cut -d= -f3
}

build_wheelhouse() {
    local py=$1
    rm -rf "$HOUSE" && mkdir -p "$HOUSE"
    "$py" -m pip wheel --quiet --no-deps -w "$HOUSE" .
    local specs=() name ver
    for name in $PURE; do
        ver=$(lock_version "$name")
        [ -n "$ver" ] || { echo "constraints.txt has no version for $name" >&2; exit 1; }
        specs+=("$name==$ver")
    done
    "$py" -m pip download --quiet --only-binary=:all: --python-version 3.12 --no-deps -d "$HOUSE" "${specs[@]}"
}

check_size() {
    local tree house total
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    house=$(du -sb "$HOUSE" | cut -f1)
    total=$((tree + house))
    awk -v t="$tree" -v h="$house" -v d="$HOUSE" -v l="$LIMIT_MIB" 'BEGIN { m = 1048576;
        printf "travels: working tree %.1f MiB + %s %.1f MiB = %.1f MiB (limit %d MiB)\n", t/m, d, h/m, (t+h)/m, l }' 
    ls -1 "$HOUSE"
    [ "$total" -le $((LIMIT_MIB * 1048576)) ] || { echo "too big to travel" >&2; exit 1; }
}

plan() {
    cat <<EOF
on the GPU machine it runs:
  python3 -m venv --without-pip \$VENV + a .pth of python3's sys.path  # sees the machine's torch 2.11 / CUDA
  pip install --no-index --no-deps --target \$VENV/...site-packages <wheels of $HOUSE missing there or out of range>
  pip install --no-index --no-deps --target \$VENV/...site-packages $HOUSE/groupo-*.whl
  python -c 'groupo.versions.check_versions()'; pip check   # reported, not fatal
  timeout 200 python -P -m pytest -m gpu tests/test_gpu.py   # groupo from the wheel, not the checkout
EOF
    local size rest
    for size in "${SIZES[@]}"; do
        rest=${size#*|}
        echo "  timeout ${rest%%|*} python benchmarks/gpu_step.py ${rest#*|} --out \$OUT/gpu_step_${size%%|*}.json"
    done
}

# The wheelhouse's wheels that the virtualenv lacks, or holds outside groupo's declared ranges.
needed_wheels() {
    "$1" - "$HOUSE" <<'EOF'
import sys, zipfile
from importlib import metadata
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

house = Path(sys.argv[1])
groupo = next(house.glob("groupo-*.whl"))
with zipfile.ZipFile(groupo) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
ranges = {canonicalize_name(r.name): r.specifier for r in
          (Requirement(x.split(":", 1)[1]) for x in lines if x.startswith("Requires-Dist:"))
          if r.marker is None or r.marker.evaluate({"extra": ""})}
for whl in sorted(house.glob("*.whl")):
    name = parse_wheel_filename(whl.name)[0]
    if name == "groupo":
        continue
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(whl); continue
    if name in ranges and not ranges[name].contains(Version(have).base_version, prereleases=True):
        print(whl)
EOF
}

install() {
    local py=$1 venv=$2 site missing
    # A virtualenv that sees everything the machine's Python sees (a .pth of its sys.path), even
    # where that Python is itself a virtualenv or has no venv/ensurepip (hence --without-pip and
    # the machine's own pip with --target); what is installed here shadows the machine's copy.
    "$py" -m venv --without-pip "$venv"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$py" -c 'import os, sys; print("\n".join(p for p in sys.path if p and os.path.isdir(p)))' > "$site/_machine.pth"
    missing=$(needed_wheels "$venv/bin/python")
    if [ -n "$missing" ]; then
        echo "installing from the wheelhouse: $(echo "$missing" | xargs -n1 basename | tr '\n' ' ')"
        # shellcheck disable=SC2086
        "$py" -m pip install --quiet --no-index --no-deps --target "$site" $missing
    fi
    "$py" -m pip install --quiet --no-index --no-deps --target "$site" "$HOUSE"/groupo-*.whl
    "$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
names = ["torch", "transformers", "peft", "accelerate", "safetensors", "tensorboard", "rich", "pyyaml",
         "numpy", "gguf", "math-verify", "sympy", "packaging", "pytest", "groupo"]
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "missing"
print("python", __import__("sys").version.split()[0], " ".join(f"{n} {version(n)}" for n in names))
print("cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
EOF
    "$venv/bin/python" - <<'EOF' || echo "the check goes on with GROUPO_SKIP_VERSION_CHECK=1"
from groupo.versions import VersionError, check_versions
try:
    check_versions()
except VersionError as e:
    raise SystemExit(f"VERSION CHECK FAILED: {e}")
print("versions: in groupo's ranges")
EOF
    "$py" -m pip check || echo "pip check (the machine's Python) reports the above (not fatal)"
}

summary() {  # summary PYTHON JSON...: one Markdown row per size from gpu_step.py's JSON files
    local py=$1
    shift
    "$py" - "$@" <<'EOF'
import json, sys
from pathlib import Path
print("| model | params | GPU | step s | gen s | upd s | gen tok/s | train tok/s | GPU GB | MFU upd | MFU step |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    if not Path(path).exists():
        print(f"| {Path(path).stem} | (no result) |"); continue
    d = json.loads(Path(path).read_text())
    m = d["median"]

    def f(key, fmt):
        return "n/a" if m.get(key) is None else format(m[key], fmt)

    print(f"| {Path(path).stem.removeprefix('gpu_step_')} | {d['params']['params'] / 1e6:.0f}M "
          f"| {d['machine'].get('gpu') or d['machine'].get('cpu')} | {f('step_s', '.2f')} | {f('gen_s', '.2f')} "
          f"| {f('update_s', '.2f')} | {f('gen_tok_s', '.0f')} | {f('train_tok_s', '.0f')} | {f('gpu_peak_gb', '.1f')} "
          f"| {f('mfu_update', '.1%')} | {f('mfu_step', '.1%')} |")
EOF
}

if [ $DRY = 1 ]; then
    PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
    build_wheelhouse "$PY"
    check_size
    plan
    echo "--dry-run: the same install over this machine's $PY, then what runs without CUDA:"
    VENV=$(mktemp -d)/venv
    install "$PY" "$VENV"
    "$VENV/bin/python" -P -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -rs  # each skips: no CUDA
    GROUPO_SKIP_VERSION_CHECK=1 "$VENV/bin/python" -P benchmarks/gpu_step.py --small --device cpu --steps 2 \
        --out "$(dirname "$VENV")/gpu_step_small.json"
    summary "$VENV/bin/python" "$(dirname "$VENV")/gpu_step_small.json"
    rm -rf "$(dirname "$VENV")"
    echo "dry run passed: carry $HOUSE with the working tree and run: bash benchmarks/gpu_check.sh"
    exit 0
fi

PY=${PYTHON:-$(command -v python3 || command -v python)}
ls "$HOUSE"/groupo-*.whl >/dev/null 2>&1 || {
    echo "no $HOUSE/groupo-*.whl: run 'bash benchmarks/gpu_check.sh --dry-run' where the registry is reachable," \
         "and carry $HOUSE with the working tree" >&2; exit 1; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device here')"
OUTDIR=${OUT:-$(mktemp -d)}
VENV=$(mktemp -d)/venv
started=$SECONDS
install "$PY" "$VENV"
export GROUPO_SKIP_VERSION_CHECK=1  # reported above; a version out of range should not hide the results
# -P: the checkout is not put on sys.path, so groupo comes from the wheel (the resume test's
# subprocesses use the checkout's copy of the same code)
status=0
timeout 200 "$VENV/bin/python" -P -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -rs \
    --junitxml="$OUTDIR/gpu_tests.xml" || status=$?
echo "gpu tests: exit $status after $((SECONDS - started)) s"
outs=()
for size in "${SIZES[@]}"; do
    name=${size%%|*}
    rest=${size#*|}
    limit=${rest%%|*}
    out="$OUTDIR/gpu_step_$name.json"
    outs+=("$out")
    echo "== gpu_step.py ~$name"
    # shellcheck disable=SC2086
    timeout "$limit" "$VENV/bin/python" -P benchmarks/gpu_step.py ${rest#*|} --out "$out" || status=$?
    echo "after $((SECONDS - started)) s"
done
summary "$VENV/bin/python" "${outs[@]}" | tee "$OUTDIR/gpu_step_table.md"
exit $status
