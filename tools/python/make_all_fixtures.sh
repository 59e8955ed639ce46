#!/usr/bin/env bash
# Regenerates every golden fixture under tests/fixtures from the real libraries
# (pip install -r tools/python/requirements.txt first). Order matters: the trl step and
# generation fixtures reuse the model fixtures.
#
# The Llama 3.1-style model (RoPE type llama3) and its generations need transformers 4.43 or later,
# newer than the seed recipe's 4.42.4 that every other fixture uses: set LLAMA3_PYTHON to a Python
# with such a transformers (and torch, peft) to regenerate them too; without it they are left as
# committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
for script in make_model_fixtures make_trl_step_fixtures make_generate_fixtures make_ops_fixtures \
              make_safetensors_fixtures make_parquet_fixtures make_tokenizer_fixtures \
              make_trl_tokenization_fixtures make_demo_fixtures; do
  echo "== tools/python/$script.py"
  python3 "tools/python/$script.py"
done
if [[ -n "${LLAMA3_PYTHON:-}" ]]; then
  echo "== tools/python/make_model_fixtures.py --llama3 (with $LLAMA3_PYTHON)"
  "$LLAMA3_PYTHON" tools/python/make_model_fixtures.py --llama3
  echo "== tools/python/make_generate_fixtures.py --llama3 (with $LLAMA3_PYTHON)"
  "$LLAMA3_PYTHON" tools/python/make_generate_fixtures.py --llama3
else
  echo "== skipped make_model_fixtures.py --llama3 and make_generate_fixtures.py --llama3: set LLAMA3_PYTHON to a Python with transformers >= 4.43"
fi
