#!/usr/bin/env bash
# The side-by-side benchmark (tools/bench_torch.py) at the CURE paper's model size: IResNet-50 or
# IResNet-100 at 112 px, embedding 512, ArcFace (s = 64, m = 0.5) over CASIA-WebFace's 10,572
# classes, the teacher step on 128 images and the CURE step on 128 forget + 128 retain images
# (K_f = 1,222, K_r = 2,500), in float32 and bfloat16, cure_jax against the PyTorch twin in eager
# and automatic mixed precision, with the share of the device's bfloat16 peak. Meant for a GPU
# (on the 2-core CPU one IResNet-100 step of that size takes minutes); random inputs, so no data
# set is read.
#
#   tools/bench_paper_size.sh r100                    # then r50
#   tools/bench_paper_size.sh r50 --rounds 3 --steps 3 --set student.batch_size=64
#
# Arguments after the depth go to tools/bench_torch.py, after these defaults (a later --set of
# the same key wins). PYTHON names the interpreter (default python3).
set -euo pipefail
depth=${1:?usage: tools/bench_paper_size.sh r50|r100 [tools/bench_torch.py arguments]}
shift
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" tools/bench_torch.py --config default --kinds teacher,cure \
    --precisions float32,bfloat16 --rounds 5 --steps 5 \
    --set model.depth="$depth" --set model.width=1.0 --set model.embedding_dim=512 \
    --set data.image_size=112 --set model.head=arcface --set model.scale=64 \
    --set model.margin=0.5 --set model.straight_through=true --set model.dropout=0.0 \
    --set data.num_identities=10572 --set teacher.batch_size=128 \
    --set student.batch_size=128 --set cure.forget_clusters=1222 \
    --set cure.retain_clusters=2500 "$@"
