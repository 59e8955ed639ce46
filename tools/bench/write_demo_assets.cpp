// write_demo_assets DIR [SEED]: writes the demo's assets (the tiny Mistral with its ChatML
// tokenizer as model.bin, and the CST training rows as train.jsonl; see train/demo_assets.h) into
// DIR, so that tools/gpu_check.sh can train and generate end to end on a machine that has only
// the carried programs: no Python, no network, no model download.
//
// Prints one "<what>: <path>" line per file it wrote.
#include <cstdio>
#include <string>

#include "kernels/error.h"
#include "kernels/program.h"
#include "train/demo_assets.h"

int main(int argc, char** argv) {
  return cst::run_program("write_demo_assets", [&] {
    if (argc < 2 || argc > 3) cst::fail("usage: write_demo_assets DIR [SEED]");
    uint64_t seed = 42;  // the seed cst_train --demo uses by default
    if (argc == 3) {
      size_t used = 0;
      const std::string text = argv[2];
      try {
        seed = std::stoull(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != text.size()) cst::fail("SEED: '", text, "' is not a non-negative integer");
    }
    const cst::demo::DemoFiles files = cst::demo::write_demo_assets(argv[1], seed);
    std::printf("model: %s\ntrain: %s\nheldout: %s\n", files.model_bin.c_str(), files.train_jsonl.c_str(),
                files.heldout_jsonl.c_str());
    return 0;
  });
}
