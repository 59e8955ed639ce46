#include "train/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace cst {

namespace fs = std::filesystem;

std::string save_checkpoint(const std::string& output_dir, const TrainerState& state,
                            const LoraAdapter& adapter, const AdamW& optimizer,
                            const std::string& base_model_name) {
  const fs::path final_dir = fs::path(output_dir) / ("checkpoint-" + std::to_string(state.step));
  const fs::path temporary = final_dir.string() + ".tmp";
  fs::remove_all(temporary);
  fs::create_directories(temporary);
  adapter.save_peft(temporary.string(), base_model_name);
  optimizer.save((temporary / "optimizer.safetensors").string());
  nlohmann::json json = {{"step", state.step},
                         {"epoch", state.data_position.epoch},
                         {"batch_in_epoch", state.data_position.batch_in_epoch},
                         {"seed", state.seed},
                         {"reward_running_mean", state.reward_mean.mean},
                         {"reward_running_count", state.reward_mean.count}};
  {
    std::ofstream out(temporary / "trainer_state.json");
    out << json.dump(2) << "\n";
    if (!out.flush()) fail("cannot write ", (temporary / "trainer_state.json").string());
  }
  fs::remove_all(final_dir);
  fs::rename(temporary, final_dir);
  return final_dir.string();
}

TrainerState load_checkpoint(const std::string& checkpoint_dir, int seed, LoraAdapter& adapter, AdamW& optimizer) {
  const fs::path dir(checkpoint_dir);
  const fs::path state_path = dir / "trainer_state.json";
  std::ifstream in(state_path);
  if (!in) fail("--resume_from_checkpoint: ", state_path.string(), " not found (is ", checkpoint_dir, " a cst checkpoint?)");
  TrainerState state;
  try {
    nlohmann::json json = nlohmann::json::parse(in);
    state.step = json.at("step").get<long>();
    state.data_position.epoch = json.at("epoch").get<int64_t>();
    state.data_position.batch_in_epoch = json.at("batch_in_epoch").get<int64_t>();
    state.seed = json.at("seed").get<int>();
    // A float written as JSON reads back exactly. Older checkpoints have no running mean.
    state.reward_mean.mean = json.value("reward_running_mean", 0.0f);
    state.reward_mean.count = json.value("reward_running_count", int64_t(0));
  } catch (const nlohmann::json::exception& e) {
    fail(state_path.string(), ": ", e.what());
  }
  // The seed drives the data order and the dropout masks: another seed cannot continue the run.
  if (state.seed != seed)
    fail(checkpoint_dir, " was trained with --seed ", state.seed, "; resume with the same seed (got ", seed, ")");
  LoraConfig saved = LoraAdapter::read_peft_config(checkpoint_dir);
  const LoraConfig& current = adapter.config();
  if (saved.r != current.r || saved.targets != current.targets || saved.alpha != current.alpha ||
      saved.use_rslora != current.use_rslora)
    fail(checkpoint_dir, ": the checkpoint's adapter (r=", saved.r, ", alpha=", saved.alpha,
         ", rslora=", saved.use_rslora, ", ", saved.targets.size(), " target modules) does not match this run's (r=",
         current.r, ", alpha=", current.alpha, ", rslora=", current.use_rslora, ", ", current.targets.size(), ")");
  adapter.load_peft_weights(checkpoint_dir);
  optimizer.load((dir / "optimizer.safetensors").string());
  return state;
}

std::vector<std::string> list_checkpoints(const std::string& output_dir) {
  std::vector<std::pair<long, std::string>> found;
  std::error_code missing;
  for (const fs::directory_entry& entry : fs::directory_iterator(output_dir, missing)) {
    const std::string name = entry.path().filename().string();
    const std::string prefix = "checkpoint-";
    if (!entry.is_directory() || name.rfind(prefix, 0) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    found.emplace_back(std::stol(digits), entry.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> directories;
  for (auto& [step, path] : found) directories.push_back(std::move(path));
  return directories;
}

std::string resolve_checkpoint(const std::string& requested, const std::string& output_dir) {
  if (requested != "latest") return requested;
  const std::vector<std::string> checkpoints = list_checkpoints(output_dir);
  if (checkpoints.empty())
    fail("--resume_from_checkpoint latest: ", output_dir, " holds no checkpoint-<step> directory");
  return checkpoints.back();
}

void remove_old_checkpoints(const std::string& output_dir, int keep) {
  if (keep <= 0) return;
  const std::vector<std::string> checkpoints = list_checkpoints(output_dir);
  for (size_t i = 0; i + size_t(keep) < checkpoints.size(); ++i) fs::remove_all(checkpoints[i]);
}

}  // namespace cst
