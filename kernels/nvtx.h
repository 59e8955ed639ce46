// Named ranges for profiler timelines (Nsight Systems): `NvtxRange range("layer 3 attention");`
// marks the enclosing scope. NVTX is header-only and costs next to nothing when no profiler is
// attached; in a CPU-only build the range does nothing.
#pragma once
#include <string>

#ifdef CST_HAVE_CUDA
#include <nvtx3/nvToolsExt.h>
#endif

namespace cst {

class NvtxRange {
 public:
  explicit NvtxRange(const char* name) {
#ifdef CST_HAVE_CUDA
    nvtxRangePushA(name);
#else
    (void)name;
#endif
  }
  explicit NvtxRange(const std::string& name) : NvtxRange(name.c_str()) {}
  ~NvtxRange() {
#ifdef CST_HAVE_CUDA
    nvtxRangePop();
#endif
  }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace cst
