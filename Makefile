# Front door. `make` builds the programs into the repository root, `make test` runs every test.
BUILD ?= build
JOBS ?= $(shell nproc)
PROGRAMS := cst_train cst_convert cst_export cst_generate cst_eval
DEBIAN_PACKAGES := cmake ninja-build g++ libopenblas-dev libsentencepiece-dev libsnappy-dev \
                   libzstd-dev zlib1g-dev nlohmann-json3-dev libgtest-dev

.PHONY: all deps configure test sanitize fuzz demo bench gpu-check gpu-prepare fixtures clean

all: configure
	cmake --build $(BUILD) -j $(JOBS)
	@for p in $(PROGRAMS); do [ -x $(BUILD)/$$p ] && ln -sf $(BUILD)/$$p $$p || true; done

configure: $(BUILD)/build.ninja

$(BUILD)/build.ninja: CMakeLists.txt
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

# Installs the Debian packages the build needs, only those that are missing.
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "deps: all Debian packages present"; fi

test: deps all
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

# The tests again under AddressSanitizer and UndefinedBehaviorSanitizer, in a build without nvcc
# ($(SANITIZE_BUILD)); a leak, an out-of-bounds access or undefined behaviour fails the run: the
# CPU tests, then, where the CUDA headers are installed, the CUDA kernels' suites on the emulated
# GPU (the kernels compiled as C++, so their index arithmetic is checked too). The suites on
# fibers run without leak checks: a fiber whose block fails (as some tests make them) is never
# resumed, so what its frames hold is never freed.
SANITIZE_BUILD ?= build-sanitize
SANITIZE_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
EMULATOR_SUITES := BlockEmulator.*:*AttentionEmulated*
EMULATED_KERNEL_SUITES := CudaEmulation.*:CudaKernels.*:*AttentionCuda*:*AttentionHopper*
sanitize: $(SANITIZE_BUILD)/build.ninja
	cmake --build $(SANITIZE_BUILD) -j $(JOBS) --target cst_tests
	OMP_WAIT_POLICY=passive $(SANITIZE_BUILD)/cst_tests --gtest_filter='-$(EMULATOR_SUITES)'
	ASAN_OPTIONS=detect_leaks=0 $(SANITIZE_BUILD)/cst_tests --gtest_filter='$(EMULATOR_SUITES)'
	if grep -q '^build cst_emulated_tests ' $(SANITIZE_BUILD)/build.ninja; then \
	  cmake --build $(SANITIZE_BUILD) -j $(JOBS) --target cst_emulated_tests && \
	  ASAN_OPTIONS=detect_leaks=0 OMP_WAIT_POLICY=passive $(SANITIZE_BUILD)/cst_emulated_tests \
	    --gtest_filter='$(EMULATED_KERNEL_SUITES)'; \
	else echo "no CUDA headers: the emulated GPU's suites are not sanitized"; fi

$(SANITIZE_BUILD)/build.ninja: CMakeLists.txt | deps
	cmake -S . -B $(SANITIZE_BUILD) -G Ninja -DCST_CUDA=OFF \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS=$(SANITIZE_FLAGS)" \
	  "-DCMAKE_EXE_LINKER_FLAGS=$(SANITIZE_FLAGS)"

# The readers' mutation fuzzer (tools/fuzz/fuzz_readers.cpp) in the sanitizer build: each good
# file below gets FUZZ_ITERATIONS damaged copies, which must be read or refused with a cst error.
FUZZ_ITERATIONS ?= 1000
FIXTURES := tests/fixtures
FUZZ_INPUTS := table:$(FIXTURES)/parquet/dictionary_snappy_v1.parquet \
  table:$(FIXTURES)/parquet/messages_hf.parquet table:$(FIXTURES)/parquet/delta_encodings_v2.parquet \
  table:$(FIXTURES)/parquet/hf_datasets.jsonl table:$(FIXTURES)/parquet/messages_array.json \
  safetensors:$(FIXTURES)/safetensors/python_written.safetensors \
  model:$(FIXTURES)/safetensors/tiny_hf \
  tokenizer:$(FIXTURES)/tokenizer/byte_level/llama3/tokenizer.json \
  tokenizer:$(FIXTURES)/tokenizer/chatml/tokenizer.model
fuzz: $(SANITIZE_BUILD)/build.ninja
	cmake --build $(SANITIZE_BUILD) -j $(JOBS) --target fuzz_readers
	cd $(SANITIZE_BUILD) && for input in $(FUZZ_INPUTS); do \
	  ./fuzz_readers $${input%%:*} $(CURDIR)/$${input#*:} $(FUZZ_ITERATIONS) || exit 1; done

demo: all
	./cst_train --demo

bench: all
	tools/bench/run_bench.sh

# On a machine with the build's libraries: build the GPU tests, cst_train, cst_generate and the
# benchmarks and bundle them with their shared libraries (build-gpu/bin, build-gpu/lib) for a GPU
# machine that lacks them.
gpu-prepare: deps
	tools/gpu_check.sh --prepare

# On the GPU machine, with build-gpu/bin and build-gpu/lib: tests, a training run and a generation
# on CUDA, the DPO step benchmark against PyTorch + PEFT, kernel benchmarks, sanitizers, most telling
# first, within CST_CHECK_SECONDS (default 330; later steps are cut or skipped when it runs out, so
# give the machine's run about a minute more); the report goes to $OUT (default gpu_report/).
gpu-check:
	tools/gpu_check.sh

# Regenerates the golden fixtures (needs Python with torch, transformers, peft, trl, pyarrow).
fixtures:
	tools/python/make_all_fixtures.sh

clean:
	rm -rf $(BUILD) $(SANITIZE_BUILD) $(PROGRAMS)
