/* test_split.c: Darknet's gemm() with K-FAC's split (kfac_split.c, patches/0027)
 * gives the bits of one gemm_cpu call, and divides only where it should.
 *
 * For each transpose case and for BETA 1 (a convolution adds into its output) and
 * 0.5, with sizes that leave a short last block (M = 37: 13 blocks of 3 rows, the last of 1):
 *  - inside kfac_split_begin/end, gemm() into one C and gemm_cpu() into a copy must
 *    agree bit for bit (a block handed the wrong rows of A or C, a transposed A cut
 *    along the wrong axis, a block computed twice with BETA != 1, a block skipped:
 *    each leaves some entries different), and the product must have been divided
 *    (kfac_split_products counts it);
 *  - outside a pass, from another thread inside none, and for a one-row product,
 *    nothing is divided;
 *  - a pass another thread begins while one is open divides nothing (the helper has
 *    one job slot), and leaves the open pass dividing;
 *  - after the last detach the hook is unset.
 * Training with the split is checked bit for bit against training without it by
 * test_threads. */
#include <pthread.h>
#include <string.h>
#include "kt.h"
#include "kfac_internal.h"
#include "gemm.h"

#define M 37
#define N 45
#define K 29

static void fill(float *x, size_t n, uint64_t seed)
{
    size_t i;
    kt_rng r = kt_rng_make(seed, 0);
    for (i = 0; i < n; ++i) x[i] = (float)(kt_uniform(&r) * 2 - 1);
}

static void *other_thread(void *arg)
{
    float *c = (float *)arg;
    static float a[M * K], b[K * N];
    fill(a, M * K, 91);
    fill(b, K * N, 92);
    gemm(0, 0, M, N, K, 1, a, K, b, N, 1, c, N);
    return NULL;
}

/* a second thread's pass while the main thread's is open */
static void *other_pass(void *arg)
{
    float *c = (float *)arg;
    static float a[M * K], b[K * N];
    fill(a, M * K, 93);
    fill(b, K * N, 94);
    kfac_split_begin();
    gemm(0, 0, M, N, K, 1, a, K, b, N, 1, c, N);
    kfac_split_end();
    return NULL;
}

int main(void)
{
    static float a[M * K], b[K * N], c[M * N], ref[M * N];
    int ta, tb, bi;
    const float betas[2] = {1.0f, 0.5f};
    kt_check("attach", kfac_split_attach(), "no helper thread");
    kt_check("hook_set", gemm_split_hook != NULL, "gemm_split_hook unset after attach");
    kfac_split_set_min_work(1); /* every product of two rows or more */
    for (ta = 0; ta < 2; ++ta)
        for (tb = 0; tb < 2; ++tb)
            for (bi = 0; bi < 2; ++bi) {
                char what[64];
                /* op(A) is M x K: A is stored K x M when transposed, and B likewise */
                const int lda = ta ? M : K, ldb = tb ? K : N;
                fill(a, M * K, 10 + ta);
                fill(b, K * N, 20 + tb);
                fill(c, M * N, 30 + bi);
                memcpy(ref, c, sizeof c);
                const long before = kfac_split_products();
                kfac_split_begin();
                gemm(ta, tb, M, N, K, 0.7f, a, lda, b, ldb, betas[bi], c, N);
                kfac_split_end();
                gemm_cpu(ta, tb, M, N, K, 0.7f, a, lda, b, ldb, betas[bi], ref, N);
                snprintf(what, sizeof what, "split_bits_ta%d_tb%d_beta%g", ta, tb, betas[bi]);
                kt_check(what, !memcmp(c, ref, sizeof c), "gemm() with the split differs from one gemm_cpu call");
                snprintf(what, sizeof what, "split_used_ta%d_tb%d_beta%g", ta, tb, betas[bi]);
                kt_check(what, kfac_split_products() == before + 1, "%ld products divided, 1 expected",
                         kfac_split_products() - before);
            }

    long before = kfac_split_products();
    gemm(0, 0, M, N, K, 1, a, K, b, N, 1, c, N);
    kt_check("outside_a_pass", kfac_split_products() == before, "a product outside any pass was divided");
    kfac_split_begin();
    pthread_t t;
    if (pthread_create(&t, NULL, other_thread, c) != 0) {
        printf("FAIL harness: pthread_create\n");
        return 1;
    }
    pthread_join(t, NULL);
    gemm(0, 0, 1, N, K, 1, a, K, b, N, 1, c, N);
    kfac_split_end();
    kt_check("other_thread_and_one_row", kfac_split_products() == before,
             "a product of another thread, or of one row, was divided");

    static float c2[M * N];
    kfac_split_begin();
    if (pthread_create(&t, NULL, other_pass, c2) != 0) {
        printf("FAIL harness: pthread_create\n");
        return 1;
    }
    pthread_join(t, NULL);
    kt_check("second_pass_not_split", kfac_split_products() == before,
             "a pass begun on another thread while one was open divided a product");
    memcpy(ref, c, sizeof c);
    gemm(0, 0, M, N, K, 1, a, K, b, N, 1, c, N);
    gemm_cpu(0, 0, M, N, K, 1, a, K, b, N, 1, ref, N);
    kfac_split_end();
    kt_check("open_pass_still_splits", kfac_split_products() == before + 1 && !memcmp(c, ref, sizeof c),
             "after another thread's pass, the open pass divided %ld products (1 expected) or changed the bits",
             kfac_split_products() - before);
    before = kfac_split_products();

    kfac_split_set_min_work((double)M * N * K + 1);
    kfac_split_begin();
    gemm(0, 0, M, N, K, 1, a, K, b, N, 1, c, N);
    kfac_split_end();
    kt_check("small_product", kfac_split_products() == before, "a product below the minimum work was divided");

    kfac_split_detach();
    kt_check("hook_unset", gemm_split_hook == NULL, "gemm_split_hook still set after the last detach");
    return kt_exit();
}
