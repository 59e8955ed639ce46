// Checkpoints: everything needed to continue a run with bit-identical losses on the CPU backend.
//
//   <output_dir>/checkpoint-<step>/
//     adapter_config.json, adapter_model.safetensors   the LoRA adapter (PEFT format)
//     optimizer.safetensors                            AdamW moments and step count
//     trainer_state.json                               step, data position, seed, bco_pair's
//                                                      running reward mean
// A checkpoint is written into checkpoint-<step>.tmp and renamed into place, so a crash never
// leaves a half-written checkpoint behind a valid name.
#pragma once
#include <string>
#include <vector>

#include "data/batch.h"
#include "kernels/preference_loss.h"
#include "model/lora.h"
#include "train/optimizer.h"

namespace cst {

struct TrainerState {
  long step = 0;                     // optimizer steps completed
  PairLoader::Position data_position;
  int seed = 0;
  RewardRunningMean reward_mean;     // bco_pair's delta (zero for the other losses)
};

// Returns the checkpoint directory.
std::string save_checkpoint(const std::string& output_dir, const TrainerState& state,
                            const LoraAdapter& adapter, const AdamW& optimizer,
                            const std::string& base_model_name);
// Fails when the checkpoint's seed or LoRA settings differ from this run's.
TrainerState load_checkpoint(const std::string& checkpoint_dir, int seed, LoraAdapter& adapter, AdamW& optimizer);

// The checkpoint-<step> directories of output_dir (complete ones: not .tmp), by increasing step.
std::vector<std::string> list_checkpoints(const std::string& output_dir);
// --resume_from_checkpoint's value as a directory: "latest" is the last checkpoint of output_dir
// (an error when there is none), anything else is taken as given.
std::string resolve_checkpoint(const std::string& requested, const std::string& output_dir);
// Removes the oldest checkpoints of output_dir until `keep` remain (keep = 0: removes none).
void remove_old_checkpoints(const std::string& output_dir, int keep);

}  // namespace cst
