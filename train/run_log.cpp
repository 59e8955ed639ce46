#include "train/run_log.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kernels/error.h"

namespace cst {

RunLog::RunLog(const std::string& output_dir, long total_steps, bool append)
    : output_dir_(output_dir), total_steps_(total_steps), terminal_(isatty(fileno(stderr))),
      start_(std::chrono::steady_clock::now()) {
  const std::string path = output_dir + "/metrics.jsonl";
  metrics_file_.open(path, append ? std::ios::app : std::ios::trunc);
  if (!metrics_file_) fail("cannot write ", path);
}

static std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  long s = long(seconds);
  std::ostringstream text;
  if (s >= 3600) text << s / 3600 << "h";
  text << std::setw(s >= 3600 ? 2 : 1) << std::setfill('0') << (s % 3600) / 60 << "m" << std::setw(2)
       << std::setfill('0') << s % 60 << "s";
  return text.str();
}

void RunLog::message(const std::string& line) {
  if (bar_visible_) std::fputs("\r\033[K", stderr);
  std::fprintf(stderr, "%s\n", line.c_str());
  bar_visible_ = false;
}

void RunLog::record(long step, const Metrics& metrics) {
  nlohmann::json json = {{"step", step}};
  for (const auto& [name, value] : metrics) json[name] = std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr);
  metrics_file_ << json.dump() << "\n";
  metrics_file_.flush();
  history_.emplace_back(step, metrics);
  if (!terminal_) {  // plain log lines for files and CI
    std::ostringstream line;
    line << "step " << step << "/" << total_steps_;
    for (const char* name : {"loss", "rewards/accuracies", "rewards/margins", "grad_norm", "learning_rate",
                             "tokens/s", "memory_gib", "eval_loss", "eval_rewards/accuracies"})
      if (auto found = metrics.find(name); found != metrics.end())
        line << "  " << name << "=" << std::setprecision(4) << found->second;
    for (const auto& [name, value] : metrics)  // per system prompt (the trainer's legend names them)
      if (name.starts_with(kPerSystemAccuracy)) line << "  " << name << "=" << std::setprecision(4) << value;
    message(line.str());
  }
}

void RunLog::progress(long step, double loss, double accuracy, double tokens_per_second) {
  if (!terminal_) return;
  if (first_step_ < 0) first_step_ = step - 1;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double per_step = elapsed / double(std::max(1L, step - first_step_));
  const int width = 28;
  const int filled = int(double(width) * double(step) / double(std::max(1L, total_steps_)));
  std::string bar(size_t(std::clamp(filled, 0, width)), '#');
  bar.resize(size_t(width), '.');
  std::fprintf(stderr, "\r\033[K[%s] %ld/%ld  loss %.4f  acc %.2f  %.0f tok/s  ETA %s", bar.c_str(),
               step, total_steps_, loss, accuracy, tokens_per_second,
               format_duration(per_step * double(total_steps_ - step)).c_str());
  bar_visible_ = true;
  if (step >= total_steps_) {
    std::fputs("\n", stderr);
    bar_visible_ = false;
  }
}

void RunLog::write_plot() const {
  std::vector<std::string> names = {"loss", "rewards/accuracies", "rewards/margins", "eval_loss",
                                    "eval_rewards/accuracies", "learning_rate"};
  std::set<std::string> per_system;
  for (const auto& [step, metrics] : history_)
    for (const auto& [name, value] : metrics)
      if (name.starts_with(kPerSystemAccuracy)) per_system.insert(name);
  names.insert(names.end(), per_system.begin(), per_system.end());
  std::vector<PlotSeries> panels;
  for (const std::string& name : names) {
    PlotSeries series{name, {}};
    for (const auto& [step, metrics] : history_)
      if (auto found = metrics.find(name); found != metrics.end() && std::isfinite(found->second))
        series.points.emplace_back(double(step), found->second);
    if (!series.points.empty()) panels.push_back(series);
  }
  if (panels.empty()) return;
  const std::filesystem::path path = std::filesystem::path(output_dir_) / "training_curves.svg";
  const std::filesystem::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary);
    out << render_svg_plot(panels, "step");
    if (!out.flush()) fail("cannot write ", temporary.string());
  }
  std::filesystem::rename(temporary, path);
}

std::string render_svg_plot(const std::vector<PlotSeries>& panels, const std::string& x_label) {
  const int panel_width = 360, panel_height = 220, margin = 48, columns = 2;
  const int rows = int((panels.size() + columns - 1) / columns);
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << columns * panel_width
      << "\" height=\"" << rows * panel_height << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  for (size_t p = 0; p < panels.size(); ++p) {
    const PlotSeries& series = panels[p];
    const double left = double(int(p) % columns * panel_width + margin);
    const double top = double(int(p) / columns * panel_height + 24);
    const double width = panel_width - margin - 16, height = panel_height - 24 - 36;
    double x_min = series.points.front().first, x_max = x_min;
    double y_min = series.points.front().second, y_max = y_min;
    for (const auto& [x, y] : series.points) {
      x_min = std::min(x_min, x); x_max = std::max(x_max, x);
      y_min = std::min(y_min, y); y_max = std::max(y_max, y);
    }
    if (x_max == x_min) x_max = x_min + 1;
    if (y_max == y_min) { y_max += 0.5; y_min -= 0.5; }
    auto sx = [&](double x) { return left + (x - x_min) / (x_max - x_min) * width; };
    auto sy = [&](double y) { return top + height - (y - y_min) / (y_max - y_min) * height; };
    svg << "<text x=\"" << left << "\" y=\"" << top - 8 << "\" font-weight=\"bold\">" << series.title << "</text>\n";
    svg << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << width << "\" height=\"" << height
        << "\" fill=\"none\" stroke=\"#999\"/>\n";
    svg << "<text x=\"" << left - 4 << "\" y=\"" << top + 10 << "\" text-anchor=\"end\">" << std::setprecision(3) << y_max << "</text>\n";
    svg << "<text x=\"" << left - 4 << "\" y=\"" << top + height << "\" text-anchor=\"end\">" << std::setprecision(3) << y_min << "</text>\n";
    svg << "<text x=\"" << left << "\" y=\"" << top + height + 14 << "\">" << x_min << "</text>\n";
    svg << "<text x=\"" << left + width << "\" y=\"" << top + height + 14 << "\" text-anchor=\"end\">" << x_max << "</text>\n";
    svg << "<text x=\"" << left + width / 2 << "\" y=\"" << top + height + 28 << "\" text-anchor=\"middle\">" << x_label << "</text>\n";
    svg << "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
    for (const auto& [x, y] : series.points) svg << sx(x) << "," << sy(y) << " ";
    svg << "\"/>\n";
  }
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace cst
