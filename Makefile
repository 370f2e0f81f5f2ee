# darknet-kfac: K-FAC for Darknet.  `make demo` runs the demo, `make test` the tests.
#
#   make [GPU=1] [CUDNN=1] [OPENCV=1] [MPI=1] [DARKNET_SRC=<checkout>]   build darknet + K-FAC
#                     (MPI=1: training across processes with mpirun, build/darknet-*-mpi)
#   make setup        install the Debian packages the build needs (root), or print how
#   make demo         SGD and K-FAC side by side on OpenCV's handwritten digits
#   make test         the test suite (CPU)
#   make test-sanitize  the same suite with AddressSanitizer and UndefinedBehaviorSanitizer
#   make fuzz [FUZZ_SECONDS=N]  libFuzzer on the [kfac] parser and the state-file reader
#   make bench        the CPU benchmark written into BENCHMARKS.md
#   make demo-mpi     the demo CNN on 1 and 2 ranks (mpirun), SGD and K-FAC, with the
#                     split of an update's time (compute, collectives, decompositions)
#   make bench-mpi    BENCHMARKS.md's measurements of training across processes (CPU)
#   make bench-threads  OpenBLAS thread counts against factor sizes, idle and loaded
#   make bench-yolo   K-FAC's cost per update on a full-size yolov3-tiny, CPU
#   make bench-steps  the step rules (SGD, kl_clip, adaptive, auto) on the project's nets
#   make study [STUDY_ARGS=...]  SGD against K-FAC over batch sizes 64-2048, on the demo
#                     CNN and the digits autoencoder: CSVs and gnuplot PNGs in build/study
#                     (tools/batch_study.py; many hours at its defaults on 2 cores,
#                     STUDY_ARGS=--quick: a few minutes)
#   make bench-retrain [RETRAIN_ARGS=...]  SGD vs K-FAC: GoogLeNet-like nets (scratch and
#                     retrained) and a detector from a pretrained backbone (mAP curves)
#   make bench-retrain-quick  the same flows as a smoke test (1 seed, a few updates)
#
# Darknet itself is never copied into this repo: it is fetched as the pinned Debian
# source package (tools/fetch_darknet.sh) or taken from DARKNET_SRC, copied into
# build/, and patched there with patches/series.

GPU ?= 0
CUDNN ?= 0
OPENCV ?= 0
# MPI=1: darknet-kfac's data-parallel training across processes (Open MPI; NCCL for
# device buffers on GPU builds): build/darknet-cpu-mpi, build/darknet-gpu-mpi
MPI ?= 0
MPICC ?= mpicc
# SANITIZE=1: Darknet, darknet-kfac, kfac_compare and the tests with ASan and UBSan
# (build/darknet-cpu-sanitize); `make test-sanitize` builds and runs it
SANITIZE ?= 0
# FUZZ=1: the same with clang and libFuzzer's instrumentation (build/darknet-cpu-fuzz),
# for `make fuzz`; FUZZ_SECONDS: how long each target runs
FUZZ ?= 0
FUZZ_SECONDS ?= 60
DARKNET_SRC ?=
# CUDA architectures for GPU builds (compute capability without the dot)
CUDA_ARCH ?= 75 80 90

$(foreach v,GPU CUDNN OPENCV SANITIZE FUZZ MPI,$(if $(filter 0 1,$($(v))),,$(error $(v)=$($(v)): must be 0 or 1)))
ifneq ($(filter 1,$(SANITIZE) $(FUZZ)),)
ifeq ($(MPI),1)
$(error MPI=1 with SANITIZE=1 or FUZZ=1: the sanitizer builds are single-process; leave MPI=0)
endif
endif
ifneq ($(filter 1,$(SANITIZE) $(FUZZ)),)
ifeq ($(GPU),1)
$(error SANITIZE=1 and FUZZ=1 are for the CPU build: leave GPU=0)
endif
endif
ifeq ($(shell echo '$(FUZZ_SECONDS)' | grep -Ex '[0-9]+'),)
$(error FUZZ_SECONDS=$(FUZZ_SECONDS): must be a whole number of seconds)
endif
ifeq ($(CUDNN),1)
ifneq ($(GPU),1)
$(error CUDNN=1 needs GPU=1)
endif
endif

TOP := $(abspath .)
BUILD := build
CACHE := $(BUILD)/cache
VARIANT := $(if $(filter 1,$(GPU)),gpu,cpu)$(if $(filter 1,$(CUDNN)),-cudnn)$(if $(filter 1,$(OPENCV)),-opencv)$(if $(filter 1,$(MPI)),-mpi)$(if $(filter 1,$(SANITIZE)),-sanitize)$(if $(filter 1,$(FUZZ)),-fuzz)
# Darknet's own optimisation (-Ofast) is kept with the sanitizers, so that the suite
# checks the arithmetic it checks in the release build; every finding stops the
# program (no recovery), so a test cannot pass over one.
SANITIZE_FLAGS := -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
FUZZ_FLAGS := -g -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
# Every function of Darknet's objects and ours starts on a 64-byte boundary.  Without
# it, an edit anywhere in the library shifted Darknet's gemm loops by 16 bytes and
# changed SGD's time per update by 16% (0.0245 against 0.029 s on the demo CNN, the
# same source: BENCHMARKS.md), so that a comparison across commits measured the
# layout.  Padding only: the same instructions, the same bits.
DK_ALIGN := -falign-functions=64
DK_OPTS := $(if $(filter 1,$(FUZZ)),CC=clang CPP=clang++ OPTS="$(FUZZ_FLAGS)",OPTS="-Ofast $(DK_ALIGN)$(if $(filter 1,$(SANITIZE)), $(SANITIZE_FLAGS))")
DK := $(BUILD)/darknet-$(VARIANT)
# the options DK was built with: Darknet's Makefile does not rebuild on new flags, so a
# change of them makes a fresh copy (the rule below rewrites the file only then)
DK_OPTS_FILE := $(DK).opts
# the demo's driver, one per variant (its structs follow GPU/CUDNN)
COMPARE := $(BUILD)/kfac_compare$(if $(filter-out cpu,$(VARIANT)),-$(VARIANT))
PRISTINE := $(if $(DARKNET_SRC),$(abspath $(DARKNET_SRC)),$(BUILD)/darknet-debian)
PATCHES := patches/series $(wildcard patches/*.patch)
NVCC ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })

ifeq ($(GPU),1)
ifeq ($(NVCC),)
$(error GPU=1 but nvcc was not found: put CUDA's bin directory on PATH)
endif
$(info nvcc found ($(NVCC)): GPU build on, CUDA_ARCH=$(CUDA_ARCH))
endif

# MPI=1: the compiler and linker flags of the MPI library, from Open MPI's wrapper
# (another MPI: give MPI_CFLAGS and MPI_LIBS yourself).  Expanded when used, so that
# `make setup` (a prerequisite of the build) may install Open MPI first.
ifeq ($(MPI),1)
MPI_CFLAGS ?= $(shell $(MPICC) --showme:compile 2>/dev/null)
MPI_LIBS ?= $(shell $(MPICC) --showme:link 2>/dev/null)
MPI_FOUND := $(shell command -v $(MPICC) 2>/dev/null)
$(info $(if $(MPI_FOUND),$(MPICC) found ($(MPI_FOUND), $(shell $(MPICC) --showme:version 2>&1)): MPI build on,$(MPICC) not found: MPI build on once tools/setup.sh mpi has installed Open MPI))
endif
# what Darknet's own Makefile needs to build and link darknet-kfac's MPI files
DK_MPI_OPTS = MPI=$(MPI) KFAC_MPI_CFLAGS="$(MPI_CFLAGS)" KFAC_MPI_LIBS="$(MPI_LIBS)"

.PHONY: FORCE all darknet setup fetch demo test test-sanitize fuzz bench bench-gpu bench-threads bench-steps bench-yolo clean distclean
.PHONY: demo-mpi bench-mpi
.PHONY: bench-retrain bench-retrain-googlenet bench-retrain-detect bench-retrain-quick
all: darknet $(COMPARE)

# Installs the Debian packages the build needs (as root), or names them and stops.
# Every build checks first; the check itself is a few dpkg queries.
setup:
	@tools/setup.sh $(if $(filter 1,$(OPENCV)),opencv) $(if $(filter 1,$(MPI)),mpi)

$(BUILD)/darknet-debian/.fetched: tools/fetch_darknet.sh | setup
	tools/fetch_darknet.sh $(CACHE) $(BUILD)/darknet-debian
	touch $@

fetch: $(if $(DARKNET_SRC),,$(BUILD)/darknet-debian/.fetched)

# A fresh copy of the pristine tree with our patches, redone whenever a patch or the
# build options (DK_OPTS_FILE) change.
$(DK)/.patched: $(PATCHES) tools/apply_patches.sh $(DK_OPTS_FILE) $(if $(DARKNET_SRC),,$(BUILD)/darknet-debian/.fetched)
	tools/apply_patches.sh $(PRISTINE) $(DK) patches

$(DK_OPTS_FILE): FORCE
	@mkdir -p $(BUILD)
	@echo '$(DK_OPTS)' | cmp -s - $@ || echo '$(DK_OPTS)' >$@

FORCE:

darknet: $(DK)/.patched | setup
	@$(if $(filter 1,$(MPI)),test -n "$(strip $(MPI_LIBS))" || { echo "MPI=1: $(MPICC) --showme:link gives nothing (Open MPI missing: tools/setup.sh mpi; another MPI: set MPI_CFLAGS and MPI_LIBS)" >&2; exit 1; })
	$(MAKE) -C $(DK) -j2 GPU=$(GPU) CUDNN=$(CUDNN) OPENCV=$(OPENCV) $(DK_OPTS) \
	    CUDA_ARCH="$(CUDA_ARCH)" NVCC="$(NVCC)" KFAC_DIR=$(TOP)/darknet-kfac $(DK_MPI_OPTS)
	@echo "built $(DK)/darknet and libdarknet.a with darknet-kfac ($(VARIANT))"


$(COMPARE): tools/kfac_compare.c darknet
	$(CC) -O2 -Wall $(if $(filter 1,$(SANITIZE)),$(SANITIZE_FLAGS)) -I$(DK)/include -I$(DK)/src -I$(TOP)/darknet-kfac \
	    $(if $(filter 1,$(GPU)),-DGPU -I$(dir $(NVCC))../include) $(if $(filter 1,$(CUDNN)),-DCUDNN) \
	    $< $(DK)/libdarknet.a \
	    $(shell $(MAKE) -s -C $(DK) KFAC_DIR=$(TOP)/darknet-kfac GPU=$(GPU) CUDNN=$(CUDNN) OPENCV=$(OPENCV) \
	        OPENBLAS_LIB=$(OPENBLAS_LIB) NVCC="$(NVCC)" $(DK_MPI_OPTS) print-ldflags) -o $@

# bench_gpu's CPU build: per-update timing of a cfg on random input (tools/bench_yolo.sh)
# (the variant's own: with GPU=1 it is bench_gpu itself)
$(BUILD)/bench_update-$(VARIANT): tests/gpu/bench_gpu.c darknet
	$(CC) -O2 -Wall -I$(DK)/include -I$(DK)/src -I$(TOP)/darknet-kfac \
	    $(if $(filter 1,$(GPU)),-DGPU -I$(dir $(NVCC))../include) $(if $(filter 1,$(CUDNN)),-DCUDNN) \
	    $< $(DK)/libdarknet.a \
	    $(shell $(MAKE) -s -C $(DK) KFAC_DIR=$(TOP)/darknet-kfac GPU=$(GPU) CUDNN=$(CUDNN) OPENCV=$(OPENCV) \
	        OPENBLAS_LIB=$(OPENBLAS_LIB) NVCC="$(NVCC)" $(DK_MPI_OPTS) print-ldflags) -o $@

# K-FAC's cost per update on a full-size yolov3-tiny (416x416), CPU (BENCHMARKS.md)
bench-yolo: $(BUILD)/bench_update-$(VARIANT)
	tools/bench_yolo.sh $(BUILD)/bench_update-$(VARIANT)

# OpenBLAS thread counts against factor sizes (BENCHMARKS.md, "OpenBLAS threads")
$(BUILD)/bench_threads: tools/bench_threads.c darknet
	$(CC) -O2 -Wall -I$(DK)/include -I$(DK)/src -I$(TOP)/darknet-kfac $< $(DK)/libdarknet.a -lopenblas -lm -pthread -o $@

# the step rules on the project's nets (BENCHMARKS.md, "The step rule")
bench-steps: all
	tools/step_rules.sh

bench-threads: $(BUILD)/bench_threads
	tools/bench_threads.sh $(BUILD)/bench_threads

demo: all
	@command -v gnuplot >/dev/null || tools/setup.sh gnuplot
	tools/demo.sh

# the demo CNN on 1 and 2 ranks (mpirun), SGD and K-FAC, and where an update's time goes
demo-mpi:
	$(MAKE) MPI=1 all
	tools/demo_mpi.sh $(BUILD)/kfac_compare-cpu-mpi

# the collectives' seconds by buffer size (tools/bench_comm.c; MPI=1 builds)
$(BUILD)/bench_comm: tools/bench_comm.c darknet
	$(MPICC) -O2 -Wall -I$(DK)/include -I$(DK)/src -I$(TOP)/darknet-kfac $< $(DK)/libdarknet.a \
	    $(shell $(MAKE) -s -C $(DK) KFAC_DIR=$(TOP)/darknet-kfac GPU=$(GPU) CUDNN=$(CUDNN) OPENCV=$(OPENCV) \
	        OPENBLAS_LIB=$(OPENBLAS_LIB) NVCC="$(NVCC)" $(DK_MPI_OPTS) print-ldflags) -o $@

# BENCHMARKS.md, "Training across processes": the demo CNN and the GoogLeNet-like net
# on 1 and 2 ranks (3 runs each, medians) and the collectives over shared memory and TCP
bench-mpi:
	$(MAKE) MPI=1 all $(BUILD)/bench_comm
	tools/bench_mpi.sh $(BUILD)/kfac_compare-cpu-mpi $(BUILD)/bench_comm

# tools/batch_study.py --help for STUDY_ARGS
STUDY_ARGS ?=
.PHONY: study
study: all
	@command -v gnuplot >/dev/null || tools/setup.sh gnuplot
	tools/batch_study.py --compare $(COMPARE) $(STUDY_ARGS)

# The distributed tests (tests/test_mpi.sh) run on the MPI variant, which `make test`
# builds when Open MPI is installed (as root it installs it; otherwise they say SKIP).
TEST_MPI_DK := $(if $(filter 1,$(MPI)),$(DK),$(if $(filter cpu,$(VARIANT)),$(BUILD)/darknet-cpu-mpi))
test: all
ifeq ($(VARIANT),cpu)
	@if command -v $(MPICC) >/dev/null 2>&1 || tools/setup.sh mpi; then $(MAKE) MPI=1 all; \
	else echo "make test: Open MPI is not installed (tools/setup.sh mpi): the distributed tests will say SKIP"; fi
endif
	KFAC_TEST_CFLAGS="$(if $(filter 1,$(SANITIZE)),$(SANITIZE_FLAGS))" KFAC_MPI_DK="$(TEST_MPI_DK)" \
	    $(if $(filter 1,$(MPI)),CC=$(MPICC)) tests/run.sh $(DK)

# The whole CPU suite under the sanitizers.  LeakSanitizer's reports of Darknet's own
# leaks (never of darknet-kfac's) are suppressed by tests/sanitize/lsan.supp, which
# names each one.
test-sanitize:
	$(MAKE) SANITIZE=1 all
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1 \
	UBSAN_OPTIONS=print_stacktrace=1 \
	LSAN_OPTIONS=suppressions=$(TOP)/tests/sanitize/lsan.supp:print_suppressions=0 \
	KFAC_TEST_CFLAGS="$(SANITIZE_FLAGS)" tests/run.sh $(BUILD)/darknet-cpu-sanitize

# libFuzzer on the [kfac] parser and the state-file reader (tests/fuzz), each for
# FUZZ_SECONDS; fails on any crash, leak or sanitizer report (the input is kept in
# build/fuzz/artifacts, to become a case of tests/fuzz/regress)
fuzz:
	@tools/setup.sh fuzz
	$(MAKE) FUZZ=1 darknet
	tests/fuzz/run.sh $(BUILD)/darknet-cpu-fuzz $(FUZZ_SECONDS)

bench: all
	tools/bench.sh $(DK)

# GPU benchmark (needs a GPU; builds the GPU variant itself): BENCHMARKS.md's GPU part
bench-gpu:
	tools/bench_gpu.sh

# SGD vs K-FAC on retraining tasks (README, "Retraining flows"): the GoogLeNet-like
# nets from scratch and retrained (tools/retrain_googlenet.sh), the digits detector
# from a pretrained backbone with mAP per checkpoint (tools/retrain_detect.sh); tables
# and gnuplot PNGs in build/retrain/.  RETRAIN_ARGS go to both scripts (e.g.
# RETRAIN_ARGS='--seeds 1 --kfac "damping=0.01"').  The plots need gnuplot, which
# tools/setup.sh installs as root (or names).
RETRAIN_ARGS ?=
bench-retrain: bench-retrain-googlenet bench-retrain-detect

bench-retrain-googlenet: all
	@tools/setup.sh gnuplot
	tools/retrain_googlenet.sh $(RETRAIN_ARGS)

bench-retrain-detect: all
	@tools/setup.sh gnuplot
	tools/retrain_detect.sh $(RETRAIN_ARGS)

bench-retrain-quick: all
	@tools/setup.sh gnuplot
	tools/retrain_googlenet.sh --quick
	tools/retrain_detect.sh --quick

clean:
	rm -rf $(BUILD)/darknet-cpu* $(BUILD)/darknet-gpu* $(BUILD)/kfac_compare* $(BUILD)/tests

distclean:
	rm -rf $(BUILD)
