#!/usr/bin/env bash
# Reproduce the shipped demo weights from nothing, on a 2-core CPU (`make weights`).
# Every step resumes where it stopped: run it again after an interruption.
# Needs espeak-ng (apt-get install espeak-ng). Wall time: see emote/weights/demo/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
data=build/data
work=build/train
mkdir -p "$data" "$work"

[ -f "$data/train/meta.json" ] || { rm -rf "$data/train.partial"; $py -m training.data --out "$data/train" --samples 1600 --seed 1; }
[ -f "$data/heldout/meta.json" ] || { rm -rf "$data/heldout.partial"; $py -m training.data --out "$data/heldout" --samples 48 --seed 2 --workers 1; }

$py -m training.train --data "$data/train" --work "$work" --stage vae
$py -m training.train --data "$data/train" --work "$work" --stage encode
# the decoder sharpens on the frozen encoder's latents while the UNet trains: one core each
$py -m training.train --data "$data/train" --work "$work" --stage decoder --threads 1 &
decoder=$!
$py -m training.train --data "$data/train" --work "$work" --stage image --threads 1
$py -m training.train --data "$data/train" --work "$work" --stage audio --threads 1
$py -m training.train --data "$data/train" --work "$work" --stage reader --threads 1
$py -m training.train --data "$data/train" --work "$work" --stage video --threads 1
wait "$decoder"
$py -m training.lipsync --data "$data/train" --heldout "$data/heldout" --work "$work"
$py -m training.train --data "$data/train" --work "$work" --ship
$py -m training.evaluate --heldout "$data/heldout" --samples 8 -o build/eval
# the few-step student of the weights just shipped (emote/weights/demo-fast; resumes, or continues the committed state)
$py -m training.distill --work build/distill --threads 1
$py -m training.distill --work build/distill --ship
$py -m training.distill --work build/distill --eval --samples 8
