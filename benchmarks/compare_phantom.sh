#!/usr/bin/env bash
# Does AdvMIM beat its baselines on the built-in phantom? `advmim compare` of supervised, CTCT
# and AdvMIM at 1 and 3 labeled cases with 3 seeds, sized for a CPU.
#
# Settings (each an environment variable; extra words go to `advmim compare` as they are):
#   CONFIG      configs/quickstart.yaml: the phantom (24 cases of 6 slices at 80 x 80, heart
#               1.6x: 17 for training, 2 validation, 5 test), the quickstart's small UNet and
#               Swin-UNet, 4 + 4 images per batch, rotation-only augmentation. Both
#               networks are scored (advmim compare --networks, default cnn transformer);
#               the 2026-11-27 table in RESULTS.md scored the CNN only.
#   ITERATIONS  600 iterations per run (model.max_iterations). The supervised baseline has
#               stopped improving there: its validation Dice gained less than 0.03 over the
#               second half, and 1200 iterations moved its test Dice by +1.2 / +0.1 points at
#               1 / 3 labeled cases (benchmarks/RESULTS.md). Check with
#                 python benchmarks/compare_curves.py $OUTPUT
#               when you change the config, and raise ITERATIONS if the last column is not
#               near 0 (finished runs are retrained only after you delete their folders).
#               CTCT's cross-teaching ramp-up is scaled with it: model.rampup_interval =
#               ITERATIONS / 200 (at least 1), so the weight reaches 0.1 at the run's end as the
#               published 150-iteration steps do at 30000. Left at 150, the weight stays below
#               0.001 for 600 iterations and CTCT is the supervised baseline with unlabeled
#               images in its batch norm.
#   LABELED     "1 3" labeled cases (data.labeled_cases).
#   SEEDS       "0 1 2".
#   VAL_EVERY   50: validation (for the best checkpoint, which is what is tested) and
#               last.ckpt every this many iterations, so a killed run loses at most that much.
#   OUTPUT      runs/compare_phantom: run folders, compare.csv, summary.md, compare.png.
#   PYTHON      python (the interpreter with advmim-lightning installed).
#   SMOKE=1     a rehearsal in a minute or two: toy networks (tests/cli/tiny.yaml), 4
#               iterations, 1 labeled case, 1 seed, into runs/compare_phantom_smoke.
#
# Interrupted? Run the same command again: finished runs are skipped, unfinished ones resume.
#   benchmarks/compare_phantom.sh
# What benchmarks/RESULTS.md reports ran as two 1-thread processes side by side on 2 cores (CPU
# results depend on the thread count), the last call only collecting the finished runs:
#   export OMP_NUM_THREADS=1
#   LABELED=1 benchmarks/compare_phantom.sh > l1.log & LABELED=3 benchmarks/compare_phantom.sh
#   wait; benchmarks/compare_phantom.sh
#   SMOKE=1 benchmarks/compare_phantom.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
configs=(-c "${CONFIG:-configs/quickstart.yaml}")
if [[ "${SMOKE:-0}" == 1 ]]; then
    configs+=(-c tests/cli/tiny.yaml)
    ITERATIONS=4 LABELED=1 SEEDS=0 VAL_EVERY=2
    OUTPUT=${OUTPUT:-runs/compare_phantom_smoke}
fi
ITERATIONS=${ITERATIONS:-600}
LABELED=${LABELED:-1 3}
SEEDS=${SEEDS:-0 1 2}
VAL_EVERY=${VAL_EVERY:-50}
RAMPUP_INTERVAL=$(( ITERATIONS / 200 > 0 ? ITERATIONS / 200 : 1 ))
OUTPUT=${OUTPUT:-runs/compare_phantom}

# shellcheck disable=SC2086  # LABELED and SEEDS are word lists
exec "$PYTHON" -m advmim_lightning compare "${configs[@]}" \
    --methods supervised ctct advmim --labeled_cases $LABELED --seeds $SEEDS \
    --output "$OUTPUT" --checkpoint best \
    --model.max_iterations "$ITERATIONS" --model.rampup_interval "$RAMPUP_INTERVAL" \
    --trainer.val_check_interval "$VAL_EVERY" \
    --checkpoint_every "$VAL_EVERY" --wandb_mode disabled "$@"
