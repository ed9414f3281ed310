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
exec "$here/.venvs/harness/bin/python" "$here/bench.py" "$@"
