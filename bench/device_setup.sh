#!/usr/bin/env bash
# Source on the device machine (run from the repo root): installs the carried wheels (.whl/, the versions the
# project pins) into /tmp/site, ahead of the device image's own transformers 5.x.
set -e
if [ ! -f /tmp/site/.kit_installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  touch /tmp/site/.kit_installed
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -c "import torch, transformers, bitsandbytes, mistral_common; print('torch', torch.__version__, 'transformers', transformers.__version__, 'bnb', bitsandbytes.__version__, 'mistral_common', mistral_common.__version__, torch.cuda.get_device_name(0))"
set +e
