// An emulated NCCL for the emulated GPU (tests/emulation/): built as libnccl.so.2 in the build
// folder, where cst_emulated_tests finds it first (its run path), so the multi-GPU data-parallel
// test drives train/distributed_cuda.cu's NCCL path on the CPU: the library loaded at run time,
// the unique id passed from rank 0 to the others, one communicator per worker process, the
// gradients all-reduced in one group per step.
//
// It implements the calls cst makes, with the rules NCCL documents for them, and fails loudly
// (a message on stderr and an error code) where real NCCL would fail, hang or sum garbage:
//   ncclGetUniqueId     creates the group's shared file; its path is the id
//   ncclCommInitRank    joins it; every rank must give the same size, a rank of its own, and a
//                       CUDA device of its own (NCCL refuses two ranks on one GPU)
//   ncclGroupStart/End  collectives between them are queued and run together at the last End
//   ncclAllReduce       float32 sums only; both buffers must be device memory of `count` floats,
//                       and every rank must make the same calls with the same counts
//   ncclCommDestroy     leaves the group
// The ranks are processes (the workers); they meet in a file mapped by each, with a barrier of
// atomics. A sum adds the ranks' values in rank order, so every rank gets bit-identical results,
// as NCCL guarantees.
#include <fcntl.h>
#include <nccl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

// From the emulated CUDA runtime (tests/emulation/cuda_runtime.cpp), which the test program
// exports to the libraries it loads; so is its cudaGetDevice.
extern "C" bool cstEmulatedDeviceRange(const void* pointer, size_t bytes);

namespace {

constexpr int kMaxRanks = 8;
constexpr size_t kSlotBytes = size_t(32) << 20;  // what one rank may all-reduce in one group
constexpr int kMaxQueued = 4096;                 // collectives in one group
constexpr auto kPatience = std::chrono::seconds(120);
constexpr char kIdMagic[] = "cst-emulated-nccl:";

// One rank's part of the shared file: what its current group of all-reduces sums.
struct Slot {
  int device;
  int queued;                  // all-reduces in the group
  uint64_t counts[kMaxQueued]; // their element counts, in call order
};

struct SharedState {
  int size;  // set by rank 0 at init; the others check it
  std::atomic<int> arrived;
  std::atomic<int> generation;
  Slot slots[kMaxRanks];
};

constexpr size_t kFileBytes = sizeof(SharedState) + kMaxRanks * kSlotBytes;

struct QueuedAllReduce {
  const float* send;
  float* receive;
  size_t count;
};

}  // namespace

struct ncclComm {
  int size = 0, rank = 0;
  SharedState* state = nullptr;
  float* data = nullptr;  // kMaxRanks slots of kSlotBytes
  std::vector<QueuedAllReduce> queue;
  size_t queued_bytes = 0;  // of the queue's all-reduces together
};

namespace {

// NCCL's groups belong to the calling thread.
thread_local int group_depth = 0;
thread_local std::vector<ncclComm*> communicators_in_group;

ncclResult_t failure(ncclResult_t code, const std::string& message) {
  std::fprintf(stderr, "emulated NCCL: %s\n", message.c_str());
  return code;
}

// Waits until every rank of the communicator has arrived (a sense-reversing barrier).
ncclResult_t barrier(ncclComm& comm) {
  SharedState& state = *comm.state;
  const int generation = state.generation.load();
  if (state.arrived.fetch_add(1) + 1 == comm.size) {
    state.arrived.store(0);
    state.generation.fetch_add(1);
    return ncclSuccess;
  }
  const auto deadline = std::chrono::steady_clock::now() + kPatience;
  while (state.generation.load() == generation) {
    if (std::chrono::steady_clock::now() > deadline)
      return failure(ncclSystemError, "rank " + std::to_string(comm.rank) + " waited " +
                                          std::to_string(kPatience.count()) +
                                          " s for the other ranks");
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return ncclSuccess;
}

float* slot_data(ncclComm& comm, int rank) {
  return comm.data + size_t(rank) * (kSlotBytes / sizeof(float));
}

// Runs the queued all-reduces of one communicator: each rank writes its values to its slot, all
// check that they made the same calls, and each adds the slots in rank order.
ncclResult_t run_queue(ncclComm& comm) {
  Slot& mine = comm.state->slots[comm.rank];
  mine.queued = int(comm.queue.size());
  size_t offset = 0;
  for (size_t i = 0; i < comm.queue.size(); ++i) {
    const QueuedAllReduce& op = comm.queue[i];
    mine.counts[i] = op.count;
    std::memcpy(slot_data(comm, comm.rank) + offset, op.send, op.count * sizeof(float));
    offset += op.count;
  }
  if (ncclResult_t result = barrier(comm); result != ncclSuccess) return result;
  const Slot& first = comm.state->slots[0];
  for (int rank = 1; rank < comm.size; ++rank) {
    const Slot& other = comm.state->slots[rank];
    if (other.queued != first.queued)
      return failure(ncclInvalidUsage, "rank " + std::to_string(rank) + " made " +
                                           std::to_string(other.queued) +
                                           " all-reduces in a group, rank 0 made " +
                                           std::to_string(first.queued));
    for (int i = 0; i < first.queued; ++i)
      if (other.counts[i] != first.counts[i])
        return failure(ncclInvalidUsage, "all-reduce " + std::to_string(i) + " of the group has " +
                                             std::to_string(other.counts[i]) + " elements on rank " +
                                             std::to_string(rank) + ", " +
                                             std::to_string(first.counts[i]) + " on rank 0");
  }
  offset = 0;
  for (const QueuedAllReduce& op : comm.queue) {
    for (size_t k = 0; k < op.count; ++k) {
      float sum = 0.0f;
      for (int rank = 0; rank < comm.size; ++rank) sum += slot_data(comm, rank)[offset + k];
      op.receive[k] = sum;
    }
    offset += op.count;
  }
  comm.queue.clear();
  comm.queued_bytes = 0;
  return barrier(comm);  // nobody refills a slot before every rank has read it
}

std::string id_path(const ncclUniqueId& id) {
  const size_t prefix = sizeof(kIdMagic) - 1;
  if (std::strncmp(id.internal, kIdMagic, prefix) != 0) return "";
  return std::string(id.internal + prefix, strnlen(id.internal + prefix, NCCL_UNIQUE_ID_BYTES - prefix));
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  char path[] = "/tmp/cst-emulated-nccl-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return failure(ncclSystemError, std::string("cannot create ") + path);
  const bool sized = ftruncate(fd, off_t(kFileBytes)) == 0;
  close(fd);
  if (!sized) return failure(ncclSystemError, std::string("cannot size ") + path);
  std::memset(id->internal, 0, NCCL_UNIQUE_ID_BYTES);
  std::snprintf(id->internal, NCCL_UNIQUE_ID_BYTES, "%s%s", kIdMagic, path);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* communicator, int size, ncclUniqueId id, int rank) {
  if (size < 1 || size > kMaxRanks || rank < 0 || rank >= size)
    return failure(ncclInvalidArgument, "rank " + std::to_string(rank) + " of " +
                                            std::to_string(size) + " (at most " +
                                            std::to_string(kMaxRanks) + " ranks)");
  const std::string path = id_path(id);
  if (path.empty()) return failure(ncclInvalidArgument, "the unique id was not made by ncclGetUniqueId");
  const int fd = open(path.c_str(), O_RDWR);
  if (fd < 0) return failure(ncclSystemError, "cannot open the group's file " + path);
  void* mapping = mmap(nullptr, kFileBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (mapping == MAP_FAILED) return failure(ncclSystemError, "cannot map " + path);
  auto* comm = new ncclComm;
  comm->size = size;
  comm->rank = rank;
  comm->state = static_cast<SharedState*>(mapping);
  comm->data = reinterpret_cast<float*>(static_cast<char*>(mapping) + sizeof(SharedState));
  int device = -1;
  cudaGetDevice(&device);
  comm->state->slots[rank].device = device;
  if (rank == 0) comm->state->size = size;  // the file starts zeroed, so others wait for this
  *communicator = comm;

  if (ncclResult_t result = barrier(*comm); result != ncclSuccess) return result;
  if (comm->state->size != size)
    return failure(ncclInvalidUsage, "rank " + std::to_string(rank) + " was told the group has " +
                                         std::to_string(size) + " ranks, rank 0 " +
                                         std::to_string(comm->state->size));
  for (int other = 0; other < size; ++other)  // every rank checks every pair, so all of them fail
    if (other != rank && comm->state->slots[other].device == device)
      return failure(ncclInvalidUsage, "ranks " + std::to_string(std::min(rank, other)) + " and " +
                                           std::to_string(std::max(rank, other)) +
                                           " both use CUDA device " + std::to_string(device));
  if (ncclResult_t result = barrier(*comm); result != ncclSuccess) return result;
  if (rank == 0) unlink(path.c_str());  // every rank has it mapped
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  munmap(comm->state, kFileBytes);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (group_depth == 0) return failure(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--group_depth > 0) return ncclSuccess;
  std::vector<ncclComm*> communicators;
  communicators.swap(communicators_in_group);
  for (ncclComm* comm : communicators)
    if (ncclResult_t result = run_queue(*comm); result != ncclSuccess) return result;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* receive, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
  if (comm == nullptr) return failure(ncclInvalidArgument, "ncclAllReduce on a null communicator");
  if (type != ncclFloat32 || op != ncclSum)
    return failure(ncclInvalidArgument, "this emulation sums float32 only");
  const size_t bytes = count * sizeof(float);
  if (!cstEmulatedDeviceRange(send, bytes) || !cstEmulatedDeviceRange(receive, bytes))
    return failure(ncclInvalidArgument, "an all-reduce of " + std::to_string(count) +
                                            " floats on a buffer that is not device memory of that size");
  if (comm->queued_bytes + bytes > kSlotBytes || comm->queue.size() == size_t(kMaxQueued))
    return failure(ncclInvalidUsage, "a group of all-reduces past this emulation's " +
                                         std::to_string(kSlotBytes >> 20) + " MiB or " +
                                         std::to_string(kMaxQueued) + " calls");
  comm->queue.push_back({static_cast<const float*>(send), static_cast<float*>(receive), count});
  comm->queued_bytes += bytes;
  if (group_depth > 0) {
    if (comm->queue.size() == 1) communicators_in_group.push_back(comm);
    return ncclSuccess;
  }
  return run_queue(*comm);
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclSystemError: return "system error (emulated NCCL; its message is above)";
    case ncclInvalidArgument: return "invalid argument (emulated NCCL; its message is above)";
    case ncclInvalidUsage: return "invalid usage (emulated NCCL; its message is above)";
    default: return "error (emulated NCCL; its message is above)";
  }
}

}  // extern "C"
