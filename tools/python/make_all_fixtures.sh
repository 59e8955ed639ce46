#!/usr/bin/env bash
# Regenerates every golden fixture under tests/fixtures from the real libraries
# (pip install -r tools/python/requirements.txt first). Order matters: the trl step and
# generation fixtures reuse the model fixtures.
set -euo pipefail
cd "$(dirname "$0")/../.."
for script in make_model_fixtures make_trl_step_fixtures make_generate_fixtures make_ops_fixtures \
              make_safetensors_fixtures make_parquet_fixtures make_tokenizer_fixtures \
              make_trl_tokenization_fixtures make_demo_fixtures; do
  echo "== tools/python/$script.py"
  python3 "tools/python/$script.py"
done
