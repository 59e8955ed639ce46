# Front door. `make` builds the programs into the repository root, `make test` runs every test.
BUILD ?= build
JOBS ?= $(shell nproc)
PROGRAMS := cst_train cst_convert cst_export cst_generate cst_eval
DEBIAN_PACKAGES := cmake ninja-build g++ libopenblas-dev libsentencepiece-dev libsnappy-dev \
                   libzstd-dev zlib1g-dev nlohmann-json3-dev libgtest-dev

.PHONY: all deps configure test demo bench gpu-check gpu-prepare fixtures clean

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
	rm -rf $(BUILD) $(PROGRAMS)
