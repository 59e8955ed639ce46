// The CST/DPO training loop (the data flow is in docs/ARCHITECTURE.md):
// batch -> reference log-probs (adapters off, or the precomputed cache) -> policy forward ->
// objective (train/objective.h) -> backward into the LoRA gradients -> after
// gradient_accumulation_steps micro-batches: clip, AdamW, schedule -> log, evaluate, checkpoint.
#pragma once
#include <string>

#include "train/options.h"
#include "train/run_log.h"

namespace cst {

struct TrainingOutcome {
  long steps = 0;
  Metrics last_train;  // the last logged training metrics
  Metrics last_eval;   // the last evaluation (empty without an eval set)
  std::string adapter_dir;
  std::string gradient_path;  // how the workers summed gradients (WorkerGroup::gradient_path)
};

// Trains as the options say; with num_processes > 1 through that many worker processes
// (train/distributed.h), returning rank 0's outcome.
TrainingOutcome run_training(const TrainOptions& options);
// The body of a worker process started by run_training (call it from main when
// is_worker_process()). Returns the exit status.
int run_training_worker(const char* program_name);

}  // namespace cst
