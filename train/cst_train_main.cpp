// cst_train model.bin data.parquet [flags]: LoRA + DPO/CST fine-tuning (see --help).
#include <cstdio>
#include <exception>

#include "train/demo.h"
#include "train/distributed.h"
#include "train/options.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  if (cst::is_worker_process()) return cst::run_training_worker("cst_train");  // --num_processes
  cst::TrainOptions options;
  try {
    if (!cst::parse_train_options(argc - 1, argv + 1, options)) return 0;  // --help
  } catch (const cst::Error& error) {
    std::fprintf(stderr, "cst_train: %s\n", error.what());
    return 2;
  }
  try {
    if (options.demo) return cst::run_demo(options) ? 0 : 1;
    cst::run_training(options);
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "cst_train: error: %s\n", error.what());
    return 1;
  }
}
