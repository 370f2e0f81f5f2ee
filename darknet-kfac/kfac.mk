# darknet-kfac inside Darknet's own Makefile (included by patches/0003).
# Adds our objects to libdarknet, our headers to the include path and the
# libraries we use: OpenBLAS (cblas_ssyrk/sgemm, LAPACK ssyevd) on the CPU,
# cuBLAS/cuSOLVER on the GPU.
.DEFAULT_GOAL := all

KFAC_OBJ := kfac_config.o kfac_network.o kfac_factors.o kfac_inverse.o \
            kfac_precondition.o kfac_fisher.o kfac_state.o kfac_util.o
ifeq ($(GPU), 1)
KFAC_OBJ += kfac_kernels.o
LDFLAGS += -lcusolver
endif

VPATH := $(VPATH):$(KFAC_DIR)
COMMON += -I$(KFAC_DIR)
OBJ += $(KFAC_OBJ)
LDFLAGS += -lopenblas

# Darknet compiles with -Ofast; K-FAC's NaN/Inf checks must not be optimised away.
$(OBJDIR)kfac_%.o: CFLAGS += -fno-finite-math-only -std=gnu99
$(addprefix $(OBJDIR),$(KFAC_OBJ)): $(wildcard $(KFAC_DIR)/*.h)

print-ldflags:
	@echo $(LDFLAGS)
