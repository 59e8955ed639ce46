// The test program's main. Tests of multi-worker training start this same program as the
// workers (train/distributed.h), so a process started that way runs a worker instead of tests.
#include <gtest/gtest.h>

#include "train/distributed.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  if (cst::is_worker_process()) return cst::run_training_worker("cst_tests");
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
