// What a run shows and records: metrics.jsonl (one JSON object per logged step, trl's metric
// names), a live progress bar on a terminal or plain log lines otherwise, and an SVG plot of the
// training curves at the end.
#pragma once
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace cst {

using Metrics = std::map<std::string, double>;

// Evaluation reward accuracy per system prompt: this prefix + "system_<k>" (train/trainer.cpp).
inline constexpr const char* kPerSystemAccuracy = "eval_rewards/accuracies/";

class RunLog {
 public:
  // append: continue an existing metrics.jsonl (resume).
  RunLog(const std::string& output_dir, long total_steps, bool append);
  // Records one logged step (training or evaluation metrics) in metrics.jsonl and on screen.
  void record(long step, const Metrics& metrics);
  // Redraws the progress bar (terminal only).
  void progress(long step, double loss, double accuracy, double tokens_per_second);
  void message(const std::string& line);  // a log line that does not disturb the bar
  // Writes training_curves.svg from everything recorded.
  void write_plot() const;

 private:
  std::string output_dir_;
  long total_steps_;
  bool terminal_;
  std::ofstream metrics_file_;
  std::vector<std::pair<long, Metrics>> history_;
  std::chrono::steady_clock::time_point start_;
  long first_step_ = -1;
  bool bar_visible_ = false;
};

// An SVG line chart of one or more series sharing the x axis; small and dependency-free.
struct PlotSeries {
  std::string title;
  std::vector<std::pair<double, double>> points;
};
std::string render_svg_plot(const std::vector<PlotSeries>& panels, const std::string& x_label);

}  // namespace cst
