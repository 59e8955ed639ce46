// Data parallelism: several worker processes train one adapter together.
//
// `cst_train ... --num_processes N` starts N workers (this program again, ranks 0..N-1; on CUDA,
// worker r drives GPU r) and waits for them. Every worker loads the model and the data and
// builds the same batches. Of each optimizer step's N x A micro-batches (A =
// gradient_accumulation_steps), worker r runs micro-batches r*A .. r*A + A-1, with the loss scaled
// by 1 / (N*A). Before clipping and AdamW the workers' LoRA gradients are summed, so the sum is
// exactly the gradient that one worker computes with N*A accumulation steps (up to float rounding
// in the order of the additions), and every worker applies the same update and keeps the same
// adapter. Rank 0 alone prints progress and writes logs, checkpoints and the adapter.
//
// How they talk: a block of shared memory that the launcher maps before starting the workers
// holds a process-shared barrier and one exchange slot per worker. A sum writes each worker's
// values into its slot, waits at the barrier, and adds the slots in rank order, so every worker
// gets bit-identical sums. On GPUs the gradients go through NCCL instead (loaded at run time from
// libnccl.so.2, so single-GPU use never needs it); without NCCL they go through host memory.
//
// Failure: when a worker exits with an error the launcher stops the others (they would wait at
// the next barrier forever) and fails with the worker's rank; the worker has printed its error.
#pragma once
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace cst {

struct SharedBlock;  // the mapped memory of a group (distributed.cpp)

// The sum of f32 gradient tensors over the workers, in place.
class GradientSum {
 public:
  virtual ~GradientSum() = default;
  virtual void sum(const std::vector<Tensor>& gradients) = 0;
};

// One worker's view of its group.
class WorkerGroup {
 public:
  WorkerGroup();  // a process training alone: rank 0 of 1, every sum is the identity
  WorkerGroup(SharedBlock* block, int rank);
  ~WorkerGroup();
  WorkerGroup(const WorkerGroup&) = delete;
  WorkerGroup& operator=(const WorkerGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_main() const { return rank_ == 0; }

  // Elementwise sums over the workers; every worker receives the same values.
  void sum(std::span<double> values);
  // Sums f32 gradient tensors (on the backend's device) over the workers, in place: NCCL when
  // they live on GPUs and libnccl.so.2 loads on every worker, else through host memory.
  void sum_gradients(const std::vector<Tensor>& gradients);
  // How sum_gradients has summed so far: "nccl", "host memory", or "" (alone, or not yet called).
  std::string gradient_path() const;
  // Waits until every worker has arrived.
  void barrier();
  // The 128-byte NCCL unique id: rank 0 passes its id, every worker receives rank 0's.
  void share_id(std::span<uint8_t, 128> id);

 private:
  void sum_on_host(const std::vector<Tensor>& gradients);

  SharedBlock* block_ = nullptr;
  int rank_ = 0, size_ = 1;
  bool gradient_path_chosen_ = false;
  std::unique_ptr<GradientSum> nccl_;  // null: host path
};

// The work of one worker: the task text it was given -> the result text (rank 0's is returned by
// run_workers).
using WorkerMain = std::function<std::string(WorkerGroup& group, const std::string& task)>;

// Starts `count` workers (this program, /proc/self/exe, again, with CST_WORKER set), gives each
// the task text, waits for all, and returns rank 0's result. Fails naming the first worker that
// exited with an error or was killed, after stopping the others.
std::string run_workers(int count, const std::string& task);

// In a program's main: true when this process was started by run_workers.
bool is_worker_process();
// Runs this worker: joins the group, calls main, hands rank 0's result back. Returns the exit
// status (errors are printed with the worker's rank).
int run_worker_process(const WorkerMain& main, const char* program_name);

namespace cuda {  // train/distributed_cuda.cu
// Makes GPU `index` the current device of this process (before any other CUDA work).
void select_device(int index);
// NCCL all-reduce over the group, or null (with the reason in why_not) when libnccl.so.2 or one
// of its functions cannot be loaded here. Collective: every worker of the group must call it.
std::unique_ptr<GradientSum> nccl_gradient_sum(WorkerGroup& group, std::string& why_not);
}  // namespace cuda

}  // namespace cst
