/* darknet-kfac: the matrix products of K-FAC's own forward passes on the training
 * thread, divided by rows between it and a helper thread (`[kfac] probe_split`, CPU).
 *
 * The adaptive step's probe along Delta and its reduction-ratio pass are forward
 * passes on the critical path of an update, run while Darknet's CPU training leaves
 * the machine's second core idle.  Darknet sends every product of a forward pass
 * through gemm() (patches/0027 gives it a hook); inside a pass opened by
 * kfac_split_begin on the thread that opened it, a large enough product is cut into
 * blocks of rows of C, and the two threads take blocks until none is left, each block
 * computed by Darknet's own gemm_cpu.  gemm_cpu's loops compute each row of C alone,
 * in the same order whichever rows it is handed, so the result has the bits of one
 * call (tests/test_split.c), and who took which block does not matter: when the
 * helper is late (the probe thread or the decomposition worker holds the other core)
 * the training thread simply takes more blocks.
 *
 * Waking a sleeping thread costs tens of microseconds on this project's machine, as
 * much as a mid-sized product (a forward pass makes one per image and layer), so the
 * helper does not sleep while a pass is open: it polls for the next product, yielding
 * its core to any other thread that wants it (the probe thread, the decomposition
 * worker), and sleeps between passes.
 *
 * One helper serves every net of the process; it is started by the first
 * kfac_split_attach and stopped by the last kfac_split_detach.  It has one job slot,
 * so one pass is open at a time: a pass begun while another thread's is open (two
 * nets training at once) runs on its own thread.  Calls from any other thread, or
 * outside a pass, pass through untouched. */
#include <sched.h>
#include <stdlib.h>
#include "kfac_internal.h"
#include "gemm.h"

/* below this many multiply-adds a product is not divided: the hand-over costs a few
 * microseconds, and the helper's share of a small product less than that (the
 * tests' small nets lower it, kfac_split_set_min_work) */
#define KFAC_SPLIT_MIN_WORK (1 << 17)
/* blocks per product: enough that the training thread can take the helper's share
 * when the helper starts late, few enough that taking one costs nothing */
#define KFAC_SPLIT_BLOCKS 16

typedef struct {
    int TA, TB, M, N, K;
    float ALPHA, BETA;
    float *A, *B, *C;
    int lda, ldb, ldc;
    int rows;    /* rows of C per block */
} split_job;

/* A product is handed out in one word, `ticket`: its number (the high 32 bits) and
 * the blocks not yet taken, [lo, hi) (16 bits each).  The training thread takes
 * blocks from the front, the helper from the back: a row of C is added into K times
 * by gemm_cpu, and where two threads write rows next to each other at once, the
 * cache line they share goes back and forth at each pass (taking alternate blocks
 * made a product of 30 microseconds slower, not faster).  A thread takes a block by a
 * compare-and-swap of the ticket it read, so it never takes a block of a product
 * other than the one it read; while it holds a block, `left` stays above zero, the
 * training thread waits, and the job cannot change under it.  ticket, open, stop,
 * left, waiting and products are only accessed through __atomic; the lock guards the
 * sleeps; owned is taken by a compare-and-swap. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    pthread_t helper;
    int users;      /* nets attached */
    int running;    /* the helper thread exists */
    int stop;
    int open;       /* a pass is open: the helper polls instead of sleeping */
    int owned;      /* a thread holds the pass (and the job slot) */
    uint64_t ticket;
    split_job job;
    int left;       /* blocks not yet finished */
    int waiting;    /* the training thread sleeps until left is 0 */
    long products;  /* products divided so far */
    double min_work;
} S = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, .min_work = KFAC_SPLIT_MIN_WORK};

/* set on the thread that opened a pass, for its length */
static __thread int split_on;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_SEQ_CST)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_SEQ_CST)

/* one turn of a poll: a few cycles' pause, and every so often the core to whoever
 * else is waiting for it */
static void poll_turn(unsigned *n)
{
    if (++*n % 64 == 0) sched_yield();
#if defined(__x86_64__) || defined(__i386__)
    else __builtin_ia32_pause();
#endif
}

/* Takes blocks of product number `number`, from the front or the back, until none is
 * left. */
static void take_blocks(uint32_t number, int front)
{
    for (;;) {
        uint64_t t = LOAD(S.ticket), u;
        int b;
        do {
            const int lo = (int)((t >> 16) & 0xffff), hi = (int)(t & 0xffff);
            if ((uint32_t)(t >> 32) != number || lo >= hi) return;
            b = front ? lo : hi - 1;
            u = front ? t + ((uint64_t)1 << 16) : t - 1;
        } while (!__atomic_compare_exchange_n(&S.ticket, &t, u, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
        const split_job *j = &S.job;
        const int i0 = b * j->rows;
        const int m = i0 + j->rows <= j->M ? j->rows : j->M - i0;
        /* row i of op(A) is row i of A, or column i of A stored transposed */
        float *a = j->TA ? j->A + i0 : j->A + (size_t)i0 * j->lda;
        gemm_cpu(j->TA, j->TB, m, j->N, j->K, j->ALPHA, a, j->lda, j->B, j->ldb, j->BETA, j->C + (size_t)i0 * j->ldc,
                 j->ldc);
        if (__atomic_sub_fetch(&S.left, 1, __ATOMIC_SEQ_CST) == 0 && LOAD(S.waiting)) {
            pthread_mutex_lock(&S.mu);
            pthread_cond_signal(&S.done);
            pthread_mutex_unlock(&S.mu);
        }
    }
}

static void *helper_main(void *arg)
{
    uint32_t seen = 0;
    unsigned n = 0;
    (void)arg;
    for (;;) {
        const uint32_t number = (uint32_t)(LOAD(S.ticket) >> 32);
        if (number != seen) {
            seen = number;
            take_blocks(number, 0);
            continue;
        }
        if (LOAD(S.stop)) return NULL;
        if (LOAD(S.open)) {
            poll_turn(&n);
            continue;
        }
        pthread_mutex_lock(&S.mu);
        while (!LOAD(S.stop) && !LOAD(S.open) && (uint32_t)(LOAD(S.ticket) >> 32) == seen)
            pthread_cond_wait(&S.go, &S.mu);
        pthread_mutex_unlock(&S.mu);
    }
}

static int split_gemm(int TA, int TB, int M, int N, int K, float ALPHA, float *A, int lda, float *B, int ldb,
                      float BETA, float *C, int ldc)
{
    if (!split_on || M < 2 || (double)M * N * K < S.min_work) return 0;
    const int rows = (M + KFAC_SPLIT_BLOCKS - 1) / KFAC_SPLIT_BLOCKS;
    const int blocks = (M + rows - 1) / rows;
    unsigned n = 0;
    /* the last product's blocks are all finished: no one reads the job now */
    S.job = (split_job){TA, TB, M, N, K, ALPHA, BETA, A, B, C, lda, ldb, ldc, rows};
    STORE(S.left, blocks);
    const uint32_t number = (uint32_t)(LOAD(S.ticket) >> 32) + 1;
    STORE(S.ticket, (uint64_t)number << 32 | (uint64_t)blocks);
    take_blocks(number, 1);
    /* at most the helper's last block is still running: poll a while, then sleep */
    while (LOAD(S.left) > 0 && n < 4096) poll_turn(&n);
    if (LOAD(S.left) > 0) {
        pthread_mutex_lock(&S.mu);
        STORE(S.waiting, 1);
        while (LOAD(S.left) > 0) pthread_cond_wait(&S.done, &S.mu);
        STORE(S.waiting, 0);
        pthread_mutex_unlock(&S.mu);
    }
    __atomic_add_fetch(&S.products, 1, __ATOMIC_SEQ_CST);
    return 1;
}

int kfac_split_attach(void)
{
    int ok = 1;
    pthread_mutex_lock(&S.mu);
    if (!S.running) {
        STORE(S.stop, 0);
        if (pthread_create(&S.helper, NULL, helper_main, NULL) == 0) {
            S.running = 1;
            gemm_split_hook = split_gemm;
        } else {
            ok = 0;
        }
    }
    if (ok) ++S.users;
    pthread_mutex_unlock(&S.mu);
    return ok;
}

void kfac_split_detach(void)
{
    pthread_mutex_lock(&S.mu);
    const int last = S.users > 0 && --S.users == 0 && S.running;
    if (last) {
        gemm_split_hook = NULL;
        STORE(S.stop, 1);
        pthread_cond_signal(&S.go);
    }
    pthread_mutex_unlock(&S.mu);
    if (!last) return;
    pthread_join(S.helper, NULL);
    pthread_mutex_lock(&S.mu);
    S.running = 0;
    pthread_mutex_unlock(&S.mu);
}

void kfac_split_begin(void)
{
    int none = 0;
    if (!__atomic_compare_exchange_n(&S.owned, &none, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return;
    split_on = 1;
    pthread_mutex_lock(&S.mu);
    STORE(S.open, 1);
    pthread_cond_signal(&S.go); /* the helper sleeps between passes */
    pthread_mutex_unlock(&S.mu);
}

void kfac_split_end(void)
{
    if (!split_on) return;
    split_on = 0;
    STORE(S.open, 0);
    STORE(S.owned, 0);
}

long kfac_split_products(void)
{
    return LOAD(S.products);
}

void kfac_split_set_min_work(double work)
{
    pthread_mutex_lock(&S.mu);
    S.min_work = work;
    pthread_mutex_unlock(&S.mu);
}
