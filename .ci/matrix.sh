#!/usr/bin/env bash
# The version matrix and the wheel check (.ci/run calls this after the suite on the lock):
#   oldest  every range in pyproject.toml at its lower bound, exactly
#   newest  the newest release of each dependency on the registry (inside its range)
#   wheel   `pip wheel --no-deps .` installed into a fresh virtualenv outside the checkout, beside
#           torch 2.13 and the oldest supported versions; `groupo train --smoke`, `groupo report`
#           and `groupo presets` run from a temporary directory
# torch stays 2.13 (the CPU build) everywhere: any other version pulls gigabytes of CUDA wheels.
# The GPU check (benchmarks/gpu_check.sh) covers torch 2.11 with CUDA.
# Time here: each virtualenv installs in 1-3 minutes, the subset runs in about 1.5, the wheel check
# in about 3: about 12 minutes, well inside CI's 90 beside the ~14 of the rest of .ci/run.
#
#   bash .ci/matrix.sh [oldest] [newest] [wheel]     # default: all three
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-python3}
TORCH="torch==2.13.0"
PYTEST="pytest==9.2.0"
# The subset: every test file that calls into a dependency whose version varies here (transformers,
# peft, safetensors, gguf, math-verify, tensorboard, rich, pyyaml, numpy): loading, LoRA, log-probs,
# generation, training and resuming, export, evaluation, the architecture matrix (transformers' own
# model classes), LoRA targets and variants (PEFT's), padding-free attention, the report, the sinks,
# the recipes' smoke runs, the symbolic checker, config files. Left out: files that test groupo's own pure functions
# (the algorithms' math, reward parsing, the sandbox, data generators, the planner), whose results
# do not depend on these versions, and the vLLM and TRL files, which need their extras.
SUBSET=(tests/test_versions.py tests/test_models.py tests/test_logprobs.py tests/test_rollout.py tests/test_trainer.py
        tests/test_attention_kernel.py tests/test_kv.py tests/test_prefixes.py
        tests/test_export_chat.py tests/test_eval.py tests/test_report.py tests/test_sinks.py
        tests/test_smoke.py tests/test_rewards.py tests/test_rewards_symbolic.py tests/test_config.py
        tests/test_data_loaders.py tests/test_presets_cli.py tests/test_architectures.py
        tests/test_lora_targets.py tests/test_packing.py)
# Not pinned to their bounds: torch (above) and packaging, whose floor (20.9) is huggingface-hub's;
# pytest 9 needs packaging >= 24, so the test virtualenvs cannot hold the floor.
UNPINNED="torch packaging"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/groupo-matrix.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# pyproject.toml's runtime requirements as "name bound requirement", one a line (a requirement without a
# lower bound is an error: the matrix could not test its oldest version).
requirements() {
    "$PY" - "$ROOT/pyproject.toml" <<'EOF'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
for d in deps:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+).*", d)
    if not m:
        sys.exit(f"pyproject.toml: dependency {d!r} has no lower bound (name>=version): the matrix tests it")
    print(m.group(1), m.group(2), d.replace(" ", ""))
EOF
}

venv() {  # venv DIR: a fresh virtualenv with torch 2.13 (CPU)
    "$PY" -m venv "$1"
    "$1/bin/python" -m pip install --quiet --upgrade pip
    "$1/bin/python" -m pip install --quiet "$TORCH"
}

show_versions() {
    "$1/bin/python" -m pip list --format=freeze 2>/dev/null \
        | grep -iE '^(torch|transformers|peft|safetensors|gguf|pyyaml|rich|math-verify|numpy|tensorboard|huggingface.hub|tokenizers)==' \
        | tr '\n' ' '
    echo
}

oldest_pins() {
    requirements | while read -r name bound _; do
        case " $UNPINNED " in *" $name "*) ;; *) echo "$name==$bound" ;; esac
    done
}

run_subset() {  # run_subset DIR LABEL
    "$1/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
    echo "== matrix $2: $(show_versions "$1")"
    "$1/bin/python" -c "from groupo.versions import check_versions; check_versions()"
    "$1/bin/python" -m pytest -q "${SUBSET[@]}"
}

oldest() {
    local v="$WORK/oldest"
    venv "$v"
    oldest_pins > "$WORK/oldest.txt"
    "$v/bin/python" -m pip install --quiet --only-binary=:all: -c <(echo "$TORCH") -r "$WORK/oldest.txt" "$PYTEST"
    run_subset "$v" oldest
}

newest() {
    local v="$WORK/newest"
    venv "$v"
    # shellcheck disable=SC2046
    "$v/bin/python" -m pip install --quiet --upgrade -c <(echo "$TORCH") \
        $(requirements | awk '$1 != "torch" {print $3}') "$PYTEST"
    run_subset "$v" newest
}

wheel() {
    local v="$WORK/wheel" tmp="$WORK/elsewhere"
    venv "$v"
    "$v/bin/python" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$ROOT"
    local whl
    whl=$(ls "$WORK"/dist/groupo-*.whl)
    oldest_pins > "$WORK/oldest.txt"
    "$v/bin/python" -m pip install --quiet -c <(echo "$TORCH") -c "$WORK/oldest.txt" "$whl"
    echo "== wheel $(basename "$whl"): $(show_versions "$v")"
    mkdir -p "$tmp" && cd "$tmp"
    # from here the checkout is out of reach: groupo must come from the wheel
    "$v/bin/python" -c "import groupo, sys; f = groupo.__file__; print('groupo from', f); \
sys.exit(0 if '/site-packages/' in f else 'groupo was not imported from the installed wheel')"
    # a fresh model cache: the built-in model is fetched and converted by this install's gguf and transformers
    GROUPO_CACHE="$WORK/cache" "$v/bin/groupo" train --smoke run.dir="$tmp/run"
    compgen -G "$tmp/run/final/*.safetensors" >/dev/null || { echo "no weights in $tmp/run/final"; exit 1; }
    rm -f "$tmp/run/report.html"
    "$v/bin/groupo" report "$tmp/run"
    test -s "$tmp/run/report.html"
    "$v/bin/groupo" presets | tee "$WORK/presets.txt"
    for p in grpo dr_grpo dapo gspo cispo; do grep -qw "$p" "$WORK/presets.txt"; done
    cd "$ROOT"
    echo "== wheel: train --smoke, report, presets passed outside the checkout"
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(oldest newest wheel)
for step in "${steps[@]}"; do
    case "$step" in
        oldest|newest|wheel) "$step" ;;
        *) echo "usage: bash .ci/matrix.sh [oldest] [newest] [wheel]" >&2; exit 2 ;;
    esac
done
