#!/usr/bin/env bash
# The one command: set up the venvs if needed, then run the whole benchmark.
#   bash benchmarks/run.sh [--quick] [--only taskq,arq] [--rounds N] [...]
# Options: python benchmarks/bench.py --help (run in benchmarks/.venvs/harness).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
libs=(taskq saq arq taskiq dramatiq huey streaq)
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --only) libs=(${args[$((i + 1))]//,/ }) ;;
        --only=*) v="${args[$i]#--only=}"; libs=(${v//,/ }) ;;
    esac
done
# Creates the missing venvs (and re-syncs taskq's after a pyproject.toml change);
# a no-op when all are ready.
only=()
for name in "${libs[@]}"; do
    [ "$name" != ceiling ] && only+=("$name")
done
bash "$here/setup.sh" "${only[@]}"
# taskq is measured as the tree stands now: a copy of it is installed (not linked), so
# edits made while the benchmark runs are not measured.
if [[ " ${only[*]} " == *" taskq "* ]]; then
    root="$(cd "$here/.." && pwd)"
    snapshot="$(mktemp -d)"
    cp -r "$root/pyproject.toml" "$root/README.md" "$root/taskq" "$snapshot/"
    "$here/.venvs/taskq/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-deps --no-build-isolation --force-reinstall "$snapshot" \
        2> >(grep -v "^WARNING: Location '" >&2)
    rm -rf "$snapshot"
fi
exec "$here/.venvs/harness/bin/python" "$here/bench.py" "$@"
