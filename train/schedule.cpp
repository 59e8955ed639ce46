#include "train/schedule.h"

#include <algorithm>
#include <cmath>

namespace cst {

double LearningRateSchedule::at(long step) const {
  if (step < warmup_steps) return peak * double(step) / double(std::max(1L, warmup_steps));
  if (type == "constant") return peak;
  const double progress_steps = double(std::max(1L, total_steps - warmup_steps));
  if (type == "cosine") {
    const double progress = double(step - warmup_steps) / progress_steps;
    return peak * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
  }
  return peak * std::max(0.0, double(total_steps - step) / progress_steps);
}

long warmup_steps_for(long total_steps, int warmup_steps, double warmup_ratio) {
  if (warmup_steps > 0) return warmup_steps;
  return long(std::ceil(warmup_ratio * double(total_steps)));
}

}  // namespace cst
