#!/usr/bin/env bash
# GPU smoke test: every task's GPU path, `debug=fast`, on CUDA; then the `gpu`-marked tests.
#   FIVEFOLD_DATA_DIR=/path/to/data tests/gpu_smoke.sh [out dir]     (about 5-10 min on one GPU)
# Each step prints PASS / FAIL / SKIP (data it needs is absent) and the script exits 1 if any step failed.
# Lightning fits must report `used: True (cuda)`; tasks that compute on CPU only must refuse trainer=gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=offline WANDB_SILENT=true
DATA="${FIVEFOLD_DATA_DIR:-$PWD/datasets}"
OUT="${1:-${OUT:-$(mktemp -d)}}"
mkdir -p "$OUT"
failed=0

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA device visible to torch; run this on a GPU machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

# step NAME NEEDS(path under the data root, or -) EXPECT(gpu-fit | ok | refused) run.py args...
step() {
    local name=$1 needs=$2 expect=$3
    shift 3
    if [[ $needs != - && ! -e $DATA/$needs ]]; then
        echo "SKIP $name: $DATA/$needs is absent"
        return
    fi
    local dir="$OUT/$name" start=$SECONDS status=0
    FIVEFOLD_DATA_DIR="$DATA" python run.py "$@" "hydra.run.dir=$dir" >"$OUT/$name.log" 2>&1 || status=$?
    local ok=1
    case $expect in
        gpu-fit) [[ $status -eq 0 && -f $dir/metrics.json ]] && grep -q "GPU available: True (cuda), used: True" "$OUT/$name.log" || ok=0 ;;
        ok) [[ $status -eq 0 && -f $dir/metrics.json ]] || ok=0 ;;
        refused) [[ $status -eq 2 ]] && grep -q "computes on CPU only" "$OUT/$name.log" || ok=0 ;;
    esac
    if [[ $ok -eq 1 ]]; then
        echo "PASS $name ($((SECONDS - start)) s)"
    else
        echo "FAIL $name (exit $status; log $OUT/$name.log)"
        tail -5 "$OUT/$name.log"
        failed=1
    fi
}

GPU=(debug=fast trainer.accelerator=gpu)
step polarity_xor - gpu-fit experiment=polarity_xor hydra.mode=RUN "${GPU[@]}"
step polarity_fashion_mnist images/fashion-mnist gpu-fit experiment=polarity_fashion_mnist hydra.mode=RUN "${GPU[@]}"
step erc_synthetic - gpu-fit task=erc dataset=synthetic_erc "${GPU[@]}"
step erc_mosi erc/mosi gpu-fit experiment=erc_cmath_mosi hydra.mode=RUN "${GPU[@]}"
step memorability_captions video/memorability gpu-fit experiment=memorability_train_captions hydra.mode=RUN "${GPU[@]}"
step memorability_crop_resmem_cuda video/clips ok experiment=memorability_crop hydra.mode=RUN debug=fast model.predictor.device=cuda
step memorability_crop_refuses_gpu - refused experiment=memorability_crop hydra.mode=RUN "${GPU[@]}"
step recsys_refuses_gpu - refused experiment=recsys_tcd_ml100k hydra.mode=RUN "${GPU[@]}"
step cqil_refuses_gpu - refused task=cqil model=cqil_stories260k cqil=stories260k "${GPU[@]}"
step cqil_distributed llm/stories260K ok task=cqil model=cqil_stories260k cqil=stories260k cqil.mode=distributed debug=fast

# NCCL ranks against sequential mode (needs 2 GPUs; skipped with the reason otherwise).
if FIVEFOLD_DATA_DIR="$DATA" python -m pytest -q -n 0 -m gpu -rs >"$OUT/pytest_gpu.log" 2>&1; then
    echo "PASS pytest -m gpu ($(tail -1 "$OUT/pytest_gpu.log"))"
else
    echo "FAIL pytest -m gpu (log $OUT/pytest_gpu.log)"
    tail -5 "$OUT/pytest_gpu.log"
    failed=1
fi
echo "logs and run dirs: $OUT"
exit $failed
