#!/usr/bin/env bash
# Download, here (where pip reaches an index), the wheels the GPU machine lacks for the check's TRL and verl steps,
# into .whl/ (git-ignored; carry it: run(carry=[".whl"])). The GPU machine's image has torch, transformers 5.17,
# accelerate, peft, numpy, pandas, pyarrow, xxhash, fsspec, tokenizers 0.23.2, huggingface-hub, anyio, click, h11,
# but no trl, datasets, verl or Ray. Exact versions, --no-deps: every dependency it lacks is named here.
#   .whl/common/  trl and datasets (the TRL step), under the image's transformers 5.17
#   .whl/verl/    verl 0.9.1 and what its engine path imports, with transformers 5.10.4 (verl needs < 5.11) and the
#                 tokenizers that transformers 5.10 accepts (<= 0.23.0: 0.22.2); installed into their own folder, put first on
#                 PYTHONPATH for the verl step only. Ray is not carried (scripts/gpu_check/ray_standin.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
get() {  # folder, then NAME==VERSION ...
  local dir=$1; shift
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d ".whl/$dir" "$@"
}
get common trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
get verl verl==0.9.1 transformers==5.10.4 tokenizers==0.22.2 hydra-core==1.3.2 omegaconf==2.3.0 \
  tensordict==0.10.0 pyvers==0.1.0 orjson==3.11.3 importlib-metadata==8.7.0 \
  codetiming==1.4.0 fastapi==0.115.14 starlette==0.46.2 pydantic==2.11.9 pydantic-core==2.33.2 \
  annotated-types==0.7.0 typing-inspection==0.4.1 sniffio==1.3.1 uvicorn==0.35.0 cachetools==6.2.0
# antlr4-python3-runtime 4.9.3 (omegaconf and hydra pin 4.9.*) is published as a source archive only: build its
# (pure Python) wheel here
"$PY" -m pip wheel --no-deps --no-build-isolation -w .whl/verl antlr4-python3-runtime==4.9.3
du -sh .whl/common .whl/verl .whl
