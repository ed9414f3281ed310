#!/usr/bin/env bash
# Create one virtualenv per library under benchmarks/.venvs/<name> (gitignored).
# The peers cannot share one environment (arq pins redis<6, saq's redis extra pins
# redis<8, taskiq-redis needs redis>=8), and none of them is a dependency of taskq.
#
#   bash benchmarks/setup.sh            # create the missing venvs
#   bash benchmarks/setup.sh --force    # recreate them all
#   bash benchmarks/setup.sh arq saq    # only these (plus "harness")
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venvs="$here/.venvs"
python=${PYTHON:-python3}
force=0
names=()
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        *) names+=("$arg") ;;
    esac
done

# name -> pip requirements. "harness" runs the orchestrator and draws the chart.
declare -A reqs=(
    [harness]="redis hiredis matplotlib"
    # taskq's own dependencies, and what builds it: run.sh installs taskq itself into
    # this venv at each run (a copy of the tree as it is then, not a link to it).
    [taskq]="$root setuptools>=77"
    [saq]="saq[redis,hiredis] typing_extensions"  # saq imports it without declaring it
    [arq]="arq hiredis"
    [taskiq]="taskiq taskiq-redis hiredis"
    [dramatiq]="dramatiq[redis] hiredis"
    [huey]="huey redis hiredis"
    [streaq]="streaq redis hiredis"
)
order=(harness taskq saq arq taskiq dramatiq huey streaq)
forced=("${order[@]}")
if [ ${#names[@]} -gt 0 ]; then
    order=(harness "${names[@]}")
    forced=("${names[@]}")
fi

mkdir -p "$venvs"
for name in "${order[@]}"; do
    if [ -z "${reqs[$name]+x}" ]; then
        echo "setup: unknown library '$name' (known: ${!reqs[*]})" >&2
        exit 2
    fi
    dir="$venvs/$name"
    if [ "$force" = 1 ] && [[ " ${forced[*]} " == *" $name "* ]]; then
        rm -rf "$dir"
    fi
    # taskq's venv follows the repository: reinstalled when pyproject.toml changes
    # (a new dependency), without recreating the venv.
    stamp=""
    if [ "$name" = taskq ]; then
        stamp="pyproject $(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
    fi
    if [ -x "$dir/bin/python" ] && [ -f "$dir/.ok" ] && [ "$(head -1 "$dir/.ok")" = "# ${stamp}" ]; then
        continue
    fi
    echo "setup: $name ($dir): ${reqs[$name]}"
    if [ "$name" != taskq ] || [ ! -x "$dir/bin/python" ]; then
        rm -rf "$dir"
        "$python" -m venv "$dir"
    fi
    # shellcheck disable=SC2086  # the requirement list is split on purpose
    # (this machine's pip config warns about missing local indexes: filtered out)
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check ${reqs[$name]} \
        2> >(grep -v "^WARNING: Location '" >&2)
    {
        echo "# ${stamp}"
        "$dir/bin/python" -m pip freeze --disable-pip-version-check
    } > "$dir/.ok"
done
echo "setup: venvs ready in $venvs"
