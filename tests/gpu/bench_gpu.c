/* bench_gpu: mean time per update of one cfg on the GPU, SGD or K-FAC, with random
 * input; for tools/bench_gpu.sh and tests/gpu/run.sh.  Built without GPU (the
 * Makefile's build/bench_update) it times the CPU path the same way, for
 * tools/bench_yolo.sh.
 *
 *   bench_gpu -cfg FILE [-sgd] [-iters N] [-warmup W] [-gpu G] [-product] [-each]
 *
 *   -sgd        drop the cfg's [kfac] section: the same net on Darknet's SGD
 *   -iters N    timed updates (default 100); -warmup W untimed ones first (default 5)
 *   -product    also time the factor product of the covered layer with the largest A
 *               against cuBLAS sgemm on the same shapes (GPU builds)
 *   -each       one line per timed update (EACH u=... s=... stats=... inverse=...
 *               precond=...): the updates that refresh statistics or decompositions
 *               apart from the others
 *
 * One update = subdivisions calls of train_network_datum, as in training.  The input
 * is one random batch (uniform [0, 1)) reused for every call, so the host's data
 * generation is not timed; the truth is a random one-hot label, or for detection
 * heads ([yolo], [region]) one box per image.  The timed window starts and ends with
 * cudaDeviceSynchronize.  Output: human lines, then one machine line
 *
 *   RESULT cfg=... mode=sgd|kfac updates=N s_per_update=X stats=X inverse=X precond=X
 *
 * (stats/inverse/precond: K-FAC's seconds per update in each part, from
 * kfac_network_timing; 0 for SGD), and with -product
 *
 *   PRODUCT K=... n=... product_gflops=X sgemm_gflops=Y ratio=Z */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "darknet.h"
#include "kfac_internal.h"
#ifdef GPU
#include <cuda_runtime.h>
#include "backend/kfac_backend_cuda.h"
#endif

static void die(const char *msg, const char *arg)
{
    fprintf(stderr, "bench_gpu: %s%s\n", msg, arg ? arg : "");
    exit(1);
}

/* A copy of cfg without its [kfac] section, in a temporary file; returns its path. */
static char *cfg_without_kfac(const char *cfg)
{
    static char out[4096];
    const char *tmp = getenv("TMPDIR");
    snprintf(out, sizeof out, "%s/bench_gpu_sgd_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    FILE *in = fopen(cfg, "r");
    int fd = mkstemp(out);
    FILE *o = fd >= 0 ? fdopen(fd, "w") : NULL;
    char line[4096];
    int skip = 0;
    if (!in || !o) die("cannot read the cfg or write a temporary copy: ", cfg);
    while (fgets(line, sizeof line, in)) {
        const char *p = line;
        while (*p == ' ' || *p == '\t') ++p;
        if (*p == '[') skip = strncmp(p, "[kfac]", 6) == 0;
        if (!skip) fputs(line, o);
    }
    fclose(in);
    fclose(o);
    return out;
}

static uint64_t rng_state = 0x853c49e6748fea9bULL;
static float uniform(void)
{
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (float)((rng_state * 0x2545F4914F6CDD1DULL) >> 40) * (1.0f / 16777216.0f);
}

static void fill_batch(network *net)
{
    const layer *last = &net->layers[net->n - 1];
    int i, b;
    for (i = 0; i < net->inputs * net->batch; ++i) net->input[i] = uniform();
    memset(net->truth, 0, (size_t)net->truths * net->batch * sizeof(float));
    for (b = 0; b < net->batch; ++b) {
        float *t = net->truth + (size_t)b * net->truths;
        if (last->type == YOLO || last->type == REGION || last->type == DETECTION) {
            t[0] = 0.25f + 0.5f * uniform(); t[1] = 0.25f + 0.5f * uniform(); /* x, y */
            t[2] = 0.1f + 0.3f * uniform(); t[3] = 0.1f + 0.3f * uniform();   /* w, h */
            t[4] = 0;                                                          /* class */
        } else {
            int y = (int)(uniform() * net->truths);
            t[y < net->truths ? y : net->truths - 1] = 1;
        }
    }
}

static double sync_now(void)
{
#ifdef GPU
    KFAC_CUDA_CHECK(cudaDeviceSynchronize());
#endif
    return what_time_is_it_now();
}

#ifdef GPU
/* the covered layer with the largest A: its factor product (the CUDA backend's
 * kfac_cuda_factor_product) against cuBLAS sgemm on a handle of our own, FP32 like
 * the backend's */
static void bench_product(network *net)
{
    kfac_net *k = kfac_of(net);
    int i, best = -1, reps = 10;
    if (!k || !k->nlayers) { printf("PRODUCT none: no layer under K-FAC\n"); return; }
    if (strcmp(k->be->ops->name, "cuda") != 0) die("the net is not on the CUDA backend: ", k->be->ops->name);
    for (i = 0; i < k->nlayers; ++i) if (best < 0 || k->layers[i].s.K > k->layers[best].s.K) best = i;
    kfac_layer *kl = &k->layers[best];
    const layer *l = &net->layers[kl->index];
    const size_t T = (size_t)kl->s.T;
    size_t n = (size_t)l->batch * T;
    if (n * kl->s.K > ((size_t)32 << 20)) n = ((size_t)32 << 20) / kl->s.K / T * T; /* one patch chunk */
    if (n < T) n = T;
    int K = kl->s.K;
    float *h = (float *)calloc((size_t)K * n, sizeof(float));
    if (!h) die("out of memory", NULL);
    size_t j;
    for (j = 0; j < (size_t)K * n; ++j) h[j] = uniform() - 0.5f;
    float *P = cuda_make_array(h, (size_t)K * n), *C = cuda_make_array(0, (size_t)K * K);
    free(h);
    kfac_cuda_factor_product(k->be, K, n, P, 1.0f, C); /* warm-up, scratch allocation */
    double t0 = sync_now();
    for (i = 0; i < reps; ++i) kfac_cuda_factor_product(k->be, K, n, P, 1.0f, C);
    double t_prod = (sync_now() - t0) / reps;
    const float one = 1.0f, zero = 0.0f;
    cublasHandle_t blas;
    KFAC_CUBLAS_CHECK(cublasCreate(&blas));
    KFAC_CUBLAS_CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));
    KFAC_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, K, K, (int)n, &one, P, (int)n, P, (int)n, &zero, C, K));
    t0 = sync_now();
    for (i = 0; i < reps; ++i)
        KFAC_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, K, K, (int)n, &one, P, (int)n, P, (int)n, &zero, C, K));
    double t_gemm = (sync_now() - t0) / reps;
    KFAC_CUBLAS_CHECK(cublasDestroy(blas));
    /* the product's useful flops: a symmetric rank-n update, n K (K + 1) */
    double prod = (double)n * K * (K + 1) / t_prod * 1e-9, gemm = 2.0 * n * K * K / t_gemm * 1e-9;
    printf("factor product of layer %d (A %d x %d over %zu columns): %.1f GFLOP/s (useful flops), "
           "cuBLAS sgemm on the same shapes: %.1f GFLOP/s\n", kl->index, K, K, n, prod, gemm);
    printf("PRODUCT layer=%d K=%d n=%zu product_gflops=%.1f sgemm_gflops=%.1f ratio=%.3f\n", kl->index, K, n, prod, gemm, prod / gemm);
    cuda_free(P);
    cuda_free(C);
}
#endif

int main(int argc, char **argv)
{
    const char *cfg = NULL;
    int sgd = 0, iters = 100, warmup = 5, gpu = 0, product = 0, each = 0, i, u, s;
    for (i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "-sgd")) sgd = 1;
        else if (!strcmp(argv[i], "-product")) product = 1;
        else if (!strcmp(argv[i], "-each")) each = 1;
        else if (i + 1 < argc && !strcmp(argv[i], "-cfg")) cfg = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "-iters")) iters = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "-warmup")) warmup = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "-gpu")) gpu = atoi(argv[++i]);
        else die("unknown or incomplete option ", argv[i]);
    }
    if (!cfg || iters < 1 || warmup < 0 || gpu < 0)
        die("usage: bench_gpu -cfg FILE [-sgd] [-iters N>0] [-warmup W] [-gpu G] [-product] [-each]", NULL);
    const char *device = "CPU";
#ifdef GPU
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || gpu >= ndev) die("no such CUDA device", NULL);
    struct cudaDeviceProp prop;
    KFAC_CUDA_CHECK(cudaGetDeviceProperties(&prop, gpu));

    gpu_index = gpu;
    cuda_set_device(gpu);
    device = prop.name;
#else
    if (product) die("-product needs the GPU build", NULL);
#endif
    srand(1);
    const char *file = sgd ? cfg_without_kfac(cfg) : cfg;
    network *net = parse_network_cfg((char *)file);
    if (sgd) remove(file);
    if (!sgd && !net->kfac) die("the cfg has no [kfac] section (use -sgd for SGD): ", cfg);
    fill_batch(net);

    for (u = 0; u < warmup; ++u)
        for (s = 0; s < net->subdivisions; ++s) train_network_datum(net);
    double st0 = 0, inv0 = 0, pre0 = 0, st1 = 0, inv1 = 0, pre1 = 0;
    if (net->kfac) kfac_network_timing(net, &st0, &inv0, &pre0);
    double t0 = sync_now(), prev[4] = {t0, st0, inv0, pre0};
    for (u = 0; u < iters; ++u) {
        for (s = 0; s < net->subdivisions; ++s) train_network_datum(net);
        if (each) {
            double now[4] = {sync_now(), 0, 0, 0};
            if (net->kfac) kfac_network_timing(net, &now[1], &now[2], &now[3]);
            printf("EACH u=%d s=%.6f stats=%.6f inverse=%.6f precond=%.6f\n", warmup + u, now[0] - prev[0],
                   now[1] - prev[1], now[2] - prev[2], now[3] - prev[3]);
            fflush(stdout);
            memcpy(prev, now, sizeof prev);
        }
    }
    double t = (sync_now() - t0) / iters;
    if (net->kfac) kfac_network_timing(net, &st1, &inv1, &pre1);
    double st = (st1 - st0) / iters, inv = (inv1 - inv0) / iters, pre = (pre1 - pre0) / iters;

    printf("%s on %s (%s): %d updates of %d x %d images after %d warm-up updates: %.4f s per update",
           cfg, device, sgd ? "SGD" : "K-FAC", iters, net->batch, net->subdivisions, warmup, t);
    if (!sgd) printf(" (statistics %.4f, decompositions %.4f, preconditioning %.4f)", st, inv, pre);
    printf("\nRESULT cfg=%s mode=%s updates=%d s_per_update=%.6f stats=%.6f inverse=%.6f precond=%.6f\n",
           cfg, sgd ? "sgd" : "kfac", iters, t, st, inv, pre);
#ifdef GPU
    if (product && !sgd) bench_product(net);
#endif
    fflush(stdout);
    free_network(net);
    return 0;
}
