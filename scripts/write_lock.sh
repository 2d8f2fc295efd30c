#!/usr/bin/env bash
# Write requirements/lock.txt from a venv whose test suite just passed (make lock runs it
# after make test-latest). Usage: scripts/write_lock.sh PYTHON LOCKFILE
# Keeps the lock's header comment; drops the editable roadinterp itself and the model-weight
# wheels (requirements/models.txt pins those); writes torch without its +cpu local label so
# that pip takes the CPU wheel on this machine's disk.
set -euo pipefail
py="$1"; lock="$2"
models="$(dirname "$lock")/models.txt"
skip="$(grep -vE '^\s*(#|$)' "$models" | sed -E 's/[=<>!~].*//' | paste -sd'|' -)"
tmp="$(mktemp "$lock.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
grep -E '^#' "$lock" > "$tmp" || true
"$py" -m pip freeze --exclude-editable 2>/dev/null \
  | grep -viE "^(${skip})==" \
  | sed -E 's/^(torch==[0-9.]+)\+cpu$/\1/' >> "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$lock"
trap - EXIT
echo "wrote $lock ($(grep -cvE '^#' "$lock") packages)"
