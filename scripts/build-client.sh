#!/usr/bin/env bash
# Build nova's compiled client (nova_core/warm_client.c) for a virtual environment in
# which nova-core is installed: commands a warm helper serves then start no Python.
#
#   bash scripts/build-client.sh [VENV [OUTPUT]]     # defaults: .venv, VENV/bin/nova
#
# Without OUTPUT, pip's `nova` script is renamed to VENV/bin/nova-python (the client
# runs it whenever no helper takes a command) and the client takes its place. A later
# `pip install` of nova-core writes pip's script back as `nova`: Nova then works as
# before, without the client, until this runs again. Needs a C compiler (CC, default cc).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$(realpath "${1:-.venv}")
bin="$venv/bin"
output="${2:-$bin/nova}"
script="$bin/nova-python"
is_script() { [ -f "$1" ] && [ "$(head -c 2 "$1")" = "#!" ]; }

if [ "$output" = "$bin/nova" ] && is_script "$bin/nova"; then
    mv -f "$bin/nova" "$script"  # pip's script, written (again) by pip install
fi
if ! is_script "$script"; then
    if is_script "$bin/nova"; then
        script="$bin/nova"  # a client elsewhere (OUTPUT given) runs pip's script where it is
    else
        echo "build-client: no nova script in $bin: install nova-core into $venv first" >&2
        exit 1
    fi
fi
# the interpreter as pip wrote it into the script (its sys.executable); a script that starts
# through /bin/sh (a path with spaces) names the venv's python
python=$(head -n 1 "$script" | sed 's/^#!//')
case "$python" in
    */python*) [ -x "$python" ] || python="$bin/python" ;;
    *) python="$bin/python" ;;
esac
path0=$(dirname "$(realpath "$script")")  # sys.path[0] for the script: its folder, links resolved
for value in "$python" "$script" "$path0"; do
    case "$value" in
        *[\"\\]*) echo "build-client: cannot build for a path with quotes or backslashes: $value" >&2; exit 1 ;;
    esac
done

${CC:-cc} -O2 -Wall -Wextra -o "$output.new" \
    -DNOVA_PYTHON="\"$python\"" -DNOVA_SCRIPT="\"$script\"" -DNOVA_PATH0="\"$path0\"" \
    nova_core/warm_client.c
mv -f "$output.new" "$output"
# the client and Python must name the same helper: compare their keys
client_key=$(NOVA_WARM_PRINT_KEY=1 "$output")
python_key=$(NOVA_WARM_PRINT_KEY=1 "$python" "$script")
if [ "$client_key" != "$python_key" ]; then
    echo "build-client: the client's warm-helper key differs from Python's; removing it" >&2
    diff <(echo "$python_key") <(echo "$client_key") >&2 || true
    rm -f "$output"
    if [ "$output" = "$bin/nova" ] && [ "$script" = "$bin/nova-python" ]; then mv -f "$script" "$bin/nova"; fi
    exit 1
fi
