// The GPU side of data parallelism (train/distributed.h): one GPU per worker, and the gradient
// sum through NCCL. libnccl.so.2 is opened at run time, so programs built here start on machines
// without NCCL and single-GPU training never needs it; nccl.h supplies the types and the exact
// function signatures the loaded symbols are checked against at compile time.
#include <dlfcn.h>

#include <array>
#include <cstring>
#include <string>

#include "kernels/cuda_common.cuh"
#include "train/distributed.h"

#if __has_include(<nccl.h>)
#include <nccl.h>
#define CST_HAVE_NCCL_HEADER 1
#endif

namespace cst::cuda {

void select_device(int index) {
  int count = 0;
  CUDA_CHECK(cudaGetDeviceCount(&count));
  if (index >= count) fail("worker ", index, " needs GPU ", index, " but only ", count, " are visible");
  CUDA_CHECK(cudaSetDevice(index));
}

#ifdef CST_HAVE_NCCL_HEADER
namespace {

static_assert(sizeof(ncclUniqueId) == 128, "NCCL's unique id is 128 bytes");

// The NCCL functions cst calls, looked up in libnccl.so.2.
struct NcclLibrary {
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) init_rank = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclCommDestroy) destroy = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;

  void check(ncclResult_t result, const char* call) const {
    if (result != ncclSuccess) fail("NCCL ", call, " failed: ", error_string(result));
  }
};

template <class Function>
bool look_up(void* library, const char* name, Function& function, std::string& why_not) {
  function = reinterpret_cast<Function>(dlsym(library, name));
  if (!function) why_not = std::string("libnccl.so.2 has no ") + name;
  return function != nullptr;
}

bool load_nccl(NcclLibrary& nccl, std::string& why_not) {
  void* library = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    why_not = std::string("cannot load libnccl.so.2 (") + dlerror() + ")";
    return false;
  }
  return look_up(library, "ncclGetUniqueId", nccl.get_unique_id, why_not) &&
         look_up(library, "ncclCommInitRank", nccl.init_rank, why_not) &&
         look_up(library, "ncclAllReduce", nccl.all_reduce, why_not) &&
         look_up(library, "ncclGroupStart", nccl.group_start, why_not) &&
         look_up(library, "ncclGroupEnd", nccl.group_end, why_not) &&
         look_up(library, "ncclCommDestroy", nccl.destroy, why_not) &&
         look_up(library, "ncclGetErrorString", nccl.error_string, why_not);
}

class NcclGradientSum : public GradientSum {
 public:
  NcclGradientSum(const NcclLibrary& nccl, ncclComm_t communicator) : nccl_(nccl), communicator_(communicator) {}
  ~NcclGradientSum() override { nccl_.destroy(communicator_); }

  // One grouped launch: NCCL fuses the per-tensor all-reduces, on the backend's stream so they
  // follow the backward kernels that wrote the gradients.
  void sum(const std::vector<Tensor>& gradients) override {
    nccl_.check(nccl_.group_start(), "ncclGroupStart");
    for (const Tensor& gradient : gradients)
      nccl_.check(nccl_.all_reduce(gradient.f32(), gradient.f32(), size_t(gradient.numel()), ncclFloat32, ncclSum,
                                   communicator_, stream()),
                  "ncclAllReduce");
    nccl_.check(nccl_.group_end(), "ncclGroupEnd");
  }

 private:
  NcclLibrary nccl_;
  ncclComm_t communicator_;
};

}  // namespace
#endif

std::unique_ptr<GradientSum> nccl_gradient_sum(WorkerGroup& group, std::string& why_not) {
  bool loaded = false;
#ifdef CST_HAVE_NCCL_HEADER
  NcclLibrary nccl;
  loaded = load_nccl(nccl, why_not);
#else
  why_not = "this build has no nccl.h";
#endif
  // Every worker takes the same path: NCCL only when it loaded everywhere.
  double loaded_count = loaded ? 1.0 : 0.0;
  group.sum({&loaded_count, 1});
  if (loaded_count != double(group.size())) {
    if (loaded) why_not = "libnccl.so.2 could not be loaded on every worker";
    return nullptr;
  }
#ifdef CST_HAVE_NCCL_HEADER
  ncclUniqueId id{};
  if (group.is_main()) nccl.check(nccl.get_unique_id(&id), "ncclGetUniqueId");
  std::array<uint8_t, 128> shared{};
  std::memcpy(shared.data(), &id, shared.size());
  group.share_id(shared);
  std::memcpy(&id, shared.data(), shared.size());
  ncclComm_t communicator = nullptr;
  nccl.check(nccl.init_rank(&communicator, group.size(), id, group.rank()), "ncclCommInitRank");
  return std::make_unique<NcclGradientSum>(nccl, communicator);
#else
  return nullptr;
#endif
}

}  // namespace cst::cuda
