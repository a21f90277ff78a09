#!/usr/bin/env bash
# Exports the emo-sd15 preset (random weights) once and records wall time, peak memory and file sizes.
# Too slow for CI: run by hand. Usage: bash bench/export_sd15.sh [OUT_DIR]
set -euo pipefail
out=${1:-build/emo-sd15}
/usr/bin/time -v .venv/bin/emote export --preset emo-sd15 --out "$out" --force --quiet 2> "$out.time.log" || { tail -20 "$out.time.log"; exit 1; }
grep -E "Elapsed|Maximum resident" "$out.time.log"
du -b "$out"/* | sort -k2
