# darknet-kfac inside Darknet's own Makefile (included by patches/0003).
# Adds our objects to libdarknet, our headers to the include path and the
# libraries we use: OpenBLAS (cblas_ssyrk/sgemm, LAPACK ssyevd) on the CPU,
# cuBLAS/cuSOLVER on the GPU.
.DEFAULT_GOAL := all

# the driver and its files, then one object per backend (darknet-kfac/backend/)
KFAC_OBJ := kfac_config.o kfac_network.o kfac_driver.o kfac_adaptive.o kfac_fisher.o kfac_clone.o kfac_split.o kfac_bn.o kfac_ekfac.o kfac_losses.o \
            kfac_inverses.o kfac_schedule.o kfac_state.o kfac_sync.o kfac_util.o kfac_worker.o kfac_backend_cpu.o
# training across processes: the single-process communicator always, MPI (and NCCL on
# GPU builds) with MPI=1; KFAC_MPI_CFLAGS and KFAC_MPI_LIBS come from the top Makefile
KFAC_OBJ += kfac_comm.o kfac_dist.o kfac_dist_factors.o
ifeq ($(MPI), 1)
KFAC_OBJ += kfac_comm_mpi.o
COMMON += -DKFAC_MPI $(KFAC_MPI_CFLAGS)
LDFLAGS += $(KFAC_MPI_LIBS)
endif
ifeq ($(GPU), 1)
KFAC_OBJ += kfac_backend_cuda.o kfac_backend_cuda_kernels.o
LDFLAGS += -lcusolver
# libcuda.so comes with the driver; a build machine without one links against the
# toolkit's stub (the binary then loads the driver's libcuda.so.1 at run time).  The
# toolkit is the first of these with cuda_runtime.h: $CUDA_HOME, the folder above
# nvcc's (a copy of nvcc, or a wrapper, may sit in /usr/local/bin), /usr/local/cuda.
KFAC_NVCC_HOME := $(patsubst %/bin/nvcc,%,$(realpath $(shell command -v $(NVCC) 2>/dev/null)))
KFAC_CUDA_HOME := $(firstword $(foreach d,$(CUDA_HOME) $(KFAC_NVCC_HOME) /usr/local/cuda $(wildcard /usr/local/cuda-*),\
                    $(if $(wildcard $(d)/include/cuda_runtime.h),$(d))) /usr/local/cuda)
LDFLAGS += -L$(KFAC_CUDA_HOME)/lib64/stubs
ifeq ($(MPI), 1)
# NCCL for device buffers (kfac_comm_nccl.c), in the toolkit's library folder
KFAC_OBJ += kfac_comm_nccl.o
LDFLAGS += -L$(KFAC_CUDA_HOME)/lib64 -lnccl
endif
endif

VPATH := $(VPATH):$(KFAC_DIR):$(KFAC_DIR)/backend
COMMON += -I$(KFAC_DIR)
OBJ += $(KFAC_OBJ)
# OPENBLAS_LIB=/abs/path/libopenblas.a (best in the environment) links that archive,
# with cblas.h beside it, instead of the system's -lopenblas: a GPU machine without
# Debian's -dev packages (tests/gpu/pack_openblas.sh, tests/gpu/README.md)
ifeq ($(OPENBLAS_LIB),)
LDFLAGS += -lopenblas
else
ifneq ($(filter /%,$(OPENBLAS_LIB)),$(OPENBLAS_LIB))
$(error OPENBLAS_LIB=$(OPENBLAS_LIB): give an absolute path)
endif
COMMON += -I$(dir $(OPENBLAS_LIB))
# whole: Darknet puts libdarknet.a after LDFLAGS, so an archive would be scanned too early
KFAC_BLAS_LINK := -Wl,--whole-archive $(OPENBLAS_LIB) -Wl,--no-whole-archive
LDFLAGS += $(KFAC_BLAS_LINK)
# a static OpenBLAS is not position-independent: libdarknet.so leaves BLAS to the program
$(SLIB): LDFLAGS := $(filter-out $(KFAC_BLAS_LINK),$(LDFLAGS))
endif

# Darknet compiles with -Ofast.  K-FAC turns fast math off: its NaN/Inf checks must
# not be folded away, and the write-back wu += scale*P - D must not be reassociated
# (with P == D it has to add exact zeros: tests/test_identity.c, test_yolo.c).
$(addprefix $(OBJDIR),$(filter-out kfac_backend_cuda_kernels.o,$(KFAC_OBJ))): CFLAGS += -fno-fast-math -std=gnu99
$(addprefix $(OBJDIR),$(KFAC_OBJ)): $(wildcard $(KFAC_DIR)/*.h $(KFAC_DIR)/backend/*.h) $(KFAC_DIR)/kfac.mk

print-ldflags:
	@echo $(LDFLAGS)
