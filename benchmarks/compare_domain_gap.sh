#!/usr/bin/env bash
# Does AdvMIM's alignment help where a domain gap exists? `advmim compare` on the phantom with a
# second, unlabeled source: labeled cases from the source phantom, unlabeled images from the
# target-domain phantom (the same anatomy under another contrast, bias field and noise; other
# patients), validated and tested on the target phantom's split. Both networks are scored.
#
#   STUDY=main benchmarks/compare_domain_gap.sh       # supervised, CTCT, AdvMIM (published
#                                                     # optimisers)
#   STUDY=control ...                                 # supervised and CTCT with AdvMIM's
#                                                     # optimiser (lr 0.05, clipping 5)
#   STUDY=masked_only ...                             # AdvMIM without the adversarial term
#   STUDY=adversarial_only ...                        # AdvMIM without the masked-domain terms
#
# Everything else is benchmarks/compare_phantom.sh's (CONFIG, ITERATIONS 600, SEEDS "0 1 2",
# VAL_EVERY, PYTHON, SMOKE=1), with LABELED 3 labeled source cases by default. Each study
# writes its own OUTPUT (runs/domain_gap_<study>); interrupted, the same command resumes. What
# benchmarks/RESULTS.md reports ran as 1-thread processes side by side on 2 cores:
#   export OMP_NUM_THREADS=1
#   STUDY=main SEEDS=0 benchmarks/compare_domain_gap.sh & STUDY=main SEEDS="1 2" ...; wait
#   STUDY=main benchmarks/compare_domain_gap.sh      # collects the three seeds
set -euo pipefail
cd "$(dirname "$0")/.."

STUDY=${STUDY:-main}
case "$STUDY" in
    main) study=(--methods supervised ctct advmim) ;;
    control) study=(--methods supervised ctct --model.lr 0.05 --model.grad_clip_norm 5) ;;
    masked_only) study=(--methods advmim --model.adversarial_weight 0) ;;
    adversarial_only)
        study=(--methods advmim --model.masked_sup_weight 0 --model.masked_pseudo_weight 0) ;;
    *)
        echo "STUDY must be main, control, masked_only or adversarial_only, got '$STUDY'" >&2
        exit 2 ;;
esac
suffix=""
[[ "${SMOKE:-0}" == 1 ]] && suffix=_smoke
export OUTPUT=${OUTPUT:-runs/domain_gap_${STUDY}${suffix}}
export LABELED=${LABELED:-3}
exec benchmarks/compare_phantom.sh "${study[@]}" \
    --data.unlabeled_layout phantom --data.eval_source second "$@"
