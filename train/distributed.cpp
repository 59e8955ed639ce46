#include "train/distributed.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "kernels/device.h"
#include "kernels/error.h"

extern char** environ;

namespace cst {

namespace {
constexpr size_t kTextCapacity = size_t(1) << 20;  // bytes of the task and of the result
constexpr size_t kSlotValues = size_t(1) << 20;    // doubles per worker and exchange round (8 MiB)
constexpr const char* kWorkerVariable = "CST_WORKER";  // "<shared memory fd>:<rank>"
}  // namespace

// The memory every worker of a group maps: set up by run_workers before it starts them.
struct SharedBlock {
  pthread_barrier_t barrier;
  int32_t size;
  uint8_t id[128];
  uint64_t task_bytes, result_bytes;
  char task[kTextCapacity];
  char result[kTextCapacity];

  // The exchange slots follow the header: size x kSlotValues doubles.
  double* slot(int rank) { return reinterpret_cast<double*>(this + 1) + size_t(rank) * kSlotValues; }
  static size_t bytes_for(int size) { return sizeof(SharedBlock) + size_t(size) * kSlotValues * sizeof(double); }
};

namespace {

std::string errno_text() { return std::strerror(errno); }

void copy_text(char* destination, uint64_t& length, const std::string& text, const char* what) {
  if (text.size() > kTextCapacity) fail("the workers' ", what, " is ", text.size(), " bytes, over the limit of ", kTextCapacity);
  std::memcpy(destination, text.data(), text.size());
  length = text.size();
}

// Maps a group's shared memory from its file descriptor.
SharedBlock* map_block(int fd, size_t bytes) {
  void* memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (memory == MAP_FAILED) fail("cannot map the workers' shared memory (", bytes, " bytes): ", errno_text());
  return static_cast<SharedBlock*>(memory);
}

// A new group's shared memory: the barrier for `size` processes and the task.
std::pair<int, SharedBlock*> create_block(int size, const std::string& task) {
  const int fd = memfd_create("cst-workers", 0);  // inherited by the workers (no close-on-exec)
  if (fd < 0) fail("cannot create the workers' shared memory: ", errno_text());
  const size_t bytes = SharedBlock::bytes_for(size);
  if (ftruncate(fd, off_t(bytes)) != 0) fail("cannot size the workers' shared memory (", bytes, " bytes): ", errno_text());
  SharedBlock* block = map_block(fd, bytes);
  pthread_barrierattr_t attributes;
  pthread_barrierattr_init(&attributes);
  pthread_barrierattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
  if (pthread_barrier_init(&block->barrier, &attributes, unsigned(size)) != 0)
    fail("cannot create the workers' barrier for ", size, " processes");
  pthread_barrierattr_destroy(&attributes);
  block->size = size;
  block->result_bytes = 0;
  copy_text(block->task, block->task_bytes, task, "task");
  return {fd, block};
}

// Describes how a worker ended, or "" when it exited with status 0.
std::string failure_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status) == 0 ? "" : "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + strsignal(WTERMSIG(status));
  return "stopped unexpectedly";
}

// Waits for every worker; at the first failure stops the rest and fails naming the worker.
void wait_for_workers(std::vector<pid_t> workers) {
  std::vector<bool> running(workers.size(), true);
  size_t left = workers.size();
  while (left > 0) {
    bool any_finished = false;
    for (size_t rank = 0; rank < workers.size(); ++rank) {
      if (!running[rank]) continue;
      int status = 0;
      const pid_t finished = waitpid(workers[rank], &status, WNOHANG);
      if (finished == 0) continue;
      running[rank] = false;
      --left;
      any_finished = true;
      const std::string failure = finished < 0 ? "could not be waited for: " + errno_text() : failure_of(status);
      if (failure.empty()) continue;
      // The others would wait at their next barrier forever.
      for (size_t other = 0; other < workers.size(); ++other)
        if (running[other]) kill(workers[other], SIGTERM);
      for (size_t other = 0; other < workers.size(); ++other)
        if (running[other]) waitpid(workers[other], &status, 0);
      fail("worker ", rank, " of ", workers.size(), " ", failure, "; the other workers were stopped");
    }
    if (!any_finished) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

WorkerGroup::WorkerGroup() = default;

WorkerGroup::WorkerGroup(SharedBlock* block, int rank) : block_(block), rank_(rank), size_(block->size) {}

WorkerGroup::~WorkerGroup() = default;

void WorkerGroup::barrier() {
  if (size_ == 1) return;
  const int status = pthread_barrier_wait(&block_->barrier);
  if (status != 0 && status != PTHREAD_BARRIER_SERIAL_THREAD) fail("worker barrier failed: ", std::strerror(status));
}

void WorkerGroup::sum(std::span<double> values) {
  if (size_ == 1) return;
  for (size_t begin = 0; begin < values.size(); begin += kSlotValues) {
    const size_t count = std::min(kSlotValues, values.size() - begin);
    std::memcpy(block_->slot(rank_), values.data() + begin, count * sizeof(double));
    barrier();
    for (size_t i = 0; i < count; ++i) {
      double total = 0;
      for (int rank = 0; rank < size_; ++rank) total += block_->slot(rank)[i];  // same order everywhere
      values[begin + i] = total;
    }
    barrier();  // every worker has read the slots before the next round overwrites them
  }
}

void WorkerGroup::share_id(std::span<uint8_t, 128> id) {
  if (size_ == 1) return;  // rank 0 alone keeps its own
  if (rank_ == 0) std::memcpy(block_->id, id.data(), id.size());
  barrier();
  std::memcpy(id.data(), block_->id, id.size());
  barrier();
}

void WorkerGroup::sum_gradients(const std::vector<Tensor>& gradients) {
  if (size_ == 1 || gradients.empty()) return;
  if (!gradient_path_chosen_) {
    gradient_path_chosen_ = true;
    if (gradients[0].device == Device::cuda) {
      std::string why_not;
      CST_ON_CUDA(nccl_ = cuda::nccl_gradient_sum(*this, why_not));
      if (!nccl_ && is_main())
        std::fprintf(stderr, "note: %s; the workers sum gradients through host memory\n", why_not.c_str());
    }
  }
  if (nccl_) nccl_->sum(gradients);
  else sum_on_host(gradients);
}

std::string WorkerGroup::gradient_path() const {
  if (!gradient_path_chosen_) return "";
  return nccl_ ? "nccl" : "host memory";
}

void WorkerGroup::sum_on_host(const std::vector<Tensor>& gradients) {
  std::vector<double> values;
  for (const Tensor& gradient : gradients) {
    const std::vector<float> host = to_host_f32(gradient);
    values.insert(values.end(), host.begin(), host.end());
  }
  sum(values);
  size_t offset = 0;
  for (const Tensor& gradient : gradients) {
    std::vector<float> host(values.begin() + ptrdiff_t(offset), values.begin() + ptrdiff_t(offset + size_t(gradient.numel())));
    offset += host.size();
    const std::vector<int64_t> shape(gradient.shape.begin(), gradient.shape.begin() + gradient.rank);
    copy_tensor(gradient, make_view(host.data(), shape, DType::f32, Device::cpu));
  }
}

std::string run_workers(int count, const std::string& task) {
  if (count < 2) fail("run_workers needs at least 2 workers, got ", count);
  auto [fd, block] = create_block(count, task);

  // Everything the children need is built before fork: between fork and exec only
  // async-signal-safe calls are allowed.
  std::vector<std::string> inherited;
  for (char** entry = environ; *entry; ++entry)
    if (std::strncmp(*entry, kWorkerVariable, std::strlen(kWorkerVariable)) != 0) inherited.push_back(*entry);
  std::vector<std::vector<std::string>> environments(size_t(count), inherited);
  std::vector<std::vector<char*>> environment_pointers(environments.size());
  for (int rank = 0; rank < count; ++rank) {
    environments[size_t(rank)].push_back(std::string(kWorkerVariable) + "=" + std::to_string(fd) + ":" + std::to_string(rank));
    for (std::string& entry : environments[size_t(rank)]) environment_pointers[size_t(rank)].push_back(entry.data());
    environment_pointers[size_t(rank)].push_back(nullptr);
  }
  char program_name[] = "cst-worker";
  char* arguments[] = {program_name, nullptr};
  const pid_t parent = getpid();
  std::fflush(stdout);
  std::fflush(stderr);

  std::vector<pid_t> workers;
  for (int rank = 0; rank < count; ++rank) {
    const pid_t pid = fork();
    if (pid < 0) {
      for (pid_t worker : workers) kill(worker, SIGTERM);
      fail("cannot start worker ", rank, ": ", errno_text());
    }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // the workers end with the launcher
      if (getppid() != parent) _exit(1);
      execve("/proc/self/exe", arguments, environment_pointers[size_t(rank)].data());
      _exit(127);
    }
    workers.push_back(pid);
  }
  std::string result;
  try {
    wait_for_workers(workers);
    result.assign(block->result, block->result_bytes);
  } catch (...) {
    munmap(block, SharedBlock::bytes_for(count));
    close(fd);
    throw;
  }
  munmap(block, SharedBlock::bytes_for(count));
  close(fd);
  return result;
}

bool is_worker_process() { return std::getenv(kWorkerVariable) != nullptr; }

int run_worker_process(const WorkerMain& main, const char* program_name) {
  int rank = -1;
  try {
    int fd = -1;
    const std::string variable = std::getenv(kWorkerVariable);
    if (std::sscanf(variable.c_str(), "%d:%d", &fd, &rank) != 2 || fd < 0 || rank < 0)
      fail(kWorkerVariable, "='", variable, "' is not <fd>:<rank>");
    struct stat file;
    if (fstat(fd, &file) != 0 || size_t(file.st_size) < sizeof(SharedBlock))
      fail(kWorkerVariable, ": descriptor ", fd, " is not the workers' shared memory");
    SharedBlock* block = map_block(fd, size_t(file.st_size));
    if (rank >= block->size || size_t(file.st_size) != SharedBlock::bytes_for(block->size))
      fail(kWorkerVariable, ": rank ", rank, " does not fit the group's shared memory");
    WorkerGroup group(block, rank);
    const std::string result = main(group, std::string(block->task, block->task_bytes));
    if (rank == 0) copy_text(block->result, block->result_bytes, result, "result");
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: worker %d: error: %s\n", program_name, rank, error.what());
    return 1;
  }
}

}  // namespace cst
