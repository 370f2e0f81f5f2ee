# darknet-kfac: K-FAC for Darknet.  `make demo` runs the demo, `make test` the tests.
#
#   make [GPU=1] [CUDNN=1] [OPENCV=1] [DARKNET_SRC=<checkout>]   build darknet + K-FAC
#   make setup        install the Debian packages the build needs (root), or print how
#   make demo         SGD and K-FAC side by side on OpenCV's handwritten digits
#   make test         the test suite (CPU)
#   make bench        the CPU benchmark written into BENCHMARKS.md
#
# Darknet itself is never copied into this repo: it is fetched as the pinned Debian
# source package (tools/fetch_darknet.sh) or taken from DARKNET_SRC, copied into
# build/, and patched there with patches/series.

GPU ?= 0
CUDNN ?= 0
OPENCV ?= 0
DARKNET_SRC ?=
# CUDA architectures for GPU builds (compute capability without the dot)
CUDA_ARCH ?= 75 80 90

$(foreach v,GPU CUDNN OPENCV,$(if $(filter 0 1,$($(v))),,$(error $(v)=$($(v)): must be 0 or 1)))
ifeq ($(CUDNN),1)
ifneq ($(GPU),1)
$(error CUDNN=1 needs GPU=1)
endif
endif

TOP := $(abspath .)
BUILD := build
CACHE := $(BUILD)/cache
VARIANT := $(if $(filter 1,$(GPU)),gpu,cpu)$(if $(filter 1,$(CUDNN)),-cudnn)$(if $(filter 1,$(OPENCV)),-opencv)
DK := $(BUILD)/darknet-$(VARIANT)
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

.PHONY: all darknet setup fetch demo test bench bench-gpu clean distclean
all: darknet $(COMPARE)

# Installs the Debian packages the build needs (as root), or names them and stops.
# Every build checks first; the check itself is a few dpkg queries.
setup:
	@tools/setup.sh $(if $(filter 1,$(OPENCV)),opencv)

$(BUILD)/darknet-debian/.fetched: tools/fetch_darknet.sh | setup
	tools/fetch_darknet.sh $(CACHE) $(BUILD)/darknet-debian
	touch $@

fetch: $(if $(DARKNET_SRC),,$(BUILD)/darknet-debian/.fetched)

# A fresh copy of the pristine tree with our patches, redone whenever a patch changes.
$(DK)/.patched: $(PATCHES) tools/apply_patches.sh $(if $(DARKNET_SRC),,$(BUILD)/darknet-debian/.fetched)
	tools/apply_patches.sh $(PRISTINE) $(DK) patches

darknet: $(DK)/.patched | setup
	$(MAKE) -C $(DK) -j2 GPU=$(GPU) CUDNN=$(CUDNN) OPENCV=$(OPENCV) \
	    CUDA_ARCH="$(CUDA_ARCH)" NVCC="$(NVCC)" KFAC_DIR=$(TOP)/darknet-kfac
	@echo "built $(DK)/darknet and libdarknet.a with darknet-kfac ($(VARIANT))"


$(COMPARE): tools/kfac_compare.c darknet
	$(CC) -O2 -Wall -I$(DK)/include -I$(DK)/src -I$(TOP)/darknet-kfac \
	    $(if $(filter 1,$(GPU)),-DGPU -I$(dir $(NVCC))../include) $(if $(filter 1,$(CUDNN)),-DCUDNN) \
	    $< $(DK)/libdarknet.a \
	    $(shell $(MAKE) -s -C $(DK) KFAC_DIR=$(TOP)/darknet-kfac GPU=$(GPU) CUDNN=$(CUDNN) OPENCV=$(OPENCV) \
	        OPENBLAS_LIB=$(OPENBLAS_LIB) NVCC="$(NVCC)" print-ldflags) -o $@

demo: all
	tools/demo.sh

test: all
	tests/run.sh $(DK)

bench: all
	tools/bench.sh $(DK)

# GPU benchmark (needs a GPU; builds the GPU variant itself): BENCHMARKS.md's GPU part
bench-gpu:
	tools/bench_gpu.sh

clean:
	rm -rf $(BUILD)/darknet-cpu* $(BUILD)/darknet-gpu* $(BUILD)/kfac_compare* $(BUILD)/tests

distclean:
	rm -rf $(BUILD)
