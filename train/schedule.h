// Learning-rate schedules, as transformers' get_scheduler computes them for optimizer step s
// (0-based, the rate used by the update that makes step s + 1) of S total with W warmup steps:
//   warmup (s < W):  lr * s / W
//   linear:          lr * max(0, (S - s) / (S - W))
//   cosine:          lr * 0.5 (1 + cos(pi (s - W) / (S - W)))
//   constant:        lr
#pragma once
#include <string>

namespace cst {

struct LearningRateSchedule {
  std::string type = "linear";  // linear, cosine, constant
  double peak = 5e-5;
  long total_steps = 1;
  long warmup_steps = 0;
  double at(long step) const;
};

// Warmup steps from --warmup_steps, else ceil(warmup_ratio * total) as transformers does.
long warmup_steps_for(long total_steps, int warmup_steps, double warmup_ratio);

}  // namespace cst
