#!/usr/bin/env bash
# The wheels a lent GPU machine lacks for bench/full_scale.py and bench/imagpose_train_bench.py, into .whl/
# (git-ignored). The shared device-prep fetches diffusers, transformers, peft, insightface and the like;
# huggingface-hub 2.x then needs httpx2 and its own dependencies, and the IMAGPose bench draws its pose
# maps with controlnet-aux, whose import needs importlib-metadata. Found on an H200 machine, 2026-12-04
# (python 3.12, torch 2.11): each of these was missing or too old there. Run from the project's root:
#   bash bench/device_prep.sh
# then start the device command with the line it prints, carrying .whl.
set -eu
[ -f requirements.txt ] || { echo "run from the project's root"; exit 1; }
../shared/tools/device-prep > /dev/null
for spec in httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 idna==3.20 anyio==4.16.0 h11==0.16.0 \
            regex==2026.11.19 hf-xet==1.8.0 click==8.5.1 filelock==4.3.2 fsspec==2026.9.0 packaging==26.4 \
            tqdm==4.70.1 typing-extensions==4.16.0 importlib-metadata==10.2.0 \
            "$(grep -iE '^controlnet-aux==' requirements.txt)"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$spec"
done
du -sh .whl
echo 'start the device command with:'
echo 'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 || exit;'
