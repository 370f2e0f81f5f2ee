/* test_sparse_init: patches/0024, [connected] sparse_init=K (Martens 2010).  A net of
 * three connected layers, 40 -> 30 -> 20 -> 10: sparse_init=5, sparse_init=50 (more
 * than its 30 inputs: every input, from N(0, 1)), and none (Darknet's dense uniform
 * initialization, which must be unchanged).  Checked: exactly K nonzero weights per
 * unit, zero biases, the units' supports not all alike, the nonzero weights' mean and
 * variance those of N(0, 1), the same weights again from the same seed, and a
 * negative K refused with an error naming the cfg, the layer and the option. */
#include "kt.h"
#include <sys/wait.h>
#include <unistd.h>

static const char *CFG = "build/tests/sparse_init.cfg";
static const char *BAD = "build/tests/sparse_init_bad.cfg";
static const char *ERR = "build/tests/sparse_init_bad.err";

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        printf("FAIL harness: cannot write %s\n", path);
        exit(1);
    }
}

static int nonzeros(const float *w, int n)
{
    int i, c = 0;
    for (i = 0; i < n; ++i) c += w[i] != 0;
    return c;
}

int main(void)
{
    write_file(CFG, "[net]\nbatch=2\nheight=1\nwidth=40\nchannels=1\n"
                    "[connected]\noutput=30\nactivation=logistic\nsparse_init=5\n"
                    "[connected]\noutput=20\nactivation=logistic\nsparse_init=50\n"
                    "[connected]\noutput=10\nactivation=linear\n");
    network *net = kt_net(CFG, 1);
    layer *l0 = &net->layers[0], *l1 = &net->layers[1], *l2 = &net->layers[2];
    int i, j, exact = 1, distinct = 0;
    for (i = 0; i < l0->outputs; ++i) {
        exact &= nonzeros(l0->weights + i * l0->inputs, l0->inputs) == 5;
        /* a unit whose support differs from unit 0's */
        for (j = 0; j < l0->inputs; ++j)
            if ((l0->weights[i * l0->inputs + j] != 0) != (l0->weights[j] != 0)) { ++distinct; break; }
    }
    kt_check("sparse_init_k_inputs_per_unit", exact, "a unit of layer 0 does not read exactly 5 inputs");
    kt_check("sparse_init_supports_differ", distinct >= l0->outputs / 2,
             "only %d of %d units differ from unit 0 in the inputs they read", distinct, l0->outputs);
    kt_check("sparse_init_biases_zero", nonzeros(l0->biases, l0->outputs) == 0 && nonzeros(l1->biases, l1->outputs) == 0,
             "a bias of a sparse-initialized layer is not 0");
    kt_check("sparse_init_k_above_inputs_reads_all", nonzeros(l1->weights, l1->inputs * l1->outputs) == l1->inputs * l1->outputs,
             "layer 1 (sparse_init=50, 30 inputs): %d of %d weights nonzero", nonzeros(l1->weights, l1->inputs * l1->outputs),
             l1->inputs * l1->outputs);

    /* the 150 + 600 nonzero weights are N(0, 1) draws: their mean's standard error is
     * 1/sqrt(750) = 0.037 and their variance's about sqrt(2/750) = 0.052; 4 standard
     * errors either way (0.15 and 0.21) cannot fail by chance at this fixed seed's
     * scale, while Darknet's uniform draws (variance 2/inputs = 0.05 and 0.067) or a
     * scale off by half fall far outside */
    double s = 0, ss = 0;
    int n = 0;
    for (i = 0; i < l0->inputs * l0->outputs; ++i)
        if (l0->weights[i] != 0) { s += l0->weights[i]; ss += (double)l0->weights[i] * l0->weights[i]; ++n; }
    for (i = 0; i < l1->inputs * l1->outputs; ++i) { s += l1->weights[i]; ss += (double)l1->weights[i] * l1->weights[i]; ++n; }
    double mean = s / n, var = ss / n - mean * mean;
    kt_check("sparse_init_weights_standard_normal", fabs(mean) < 0.15 && fabs(var - 1) < 0.21,
             "nonzero weights: mean %.3f, variance %.3f over %d (expected 0 and 1)", mean, var, n);

    /* the layer without the option: Darknet's uniform initialization, every weight
     * nonzero and within sqrt(2/inputs) */
    float bound = sqrtf(2.0f / l2->inputs);
    int dense = nonzeros(l2->weights, l2->inputs * l2->outputs) == l2->inputs * l2->outputs;
    for (i = 0; i < l2->inputs * l2->outputs; ++i) dense &= fabsf(l2->weights[i]) <= bound;
    kt_check("sparse_init_off_is_darknet_default", dense, "layer 2 (no sparse_init) is not dense uniform within %g", bound);

    network *again = kt_net(CFG, 1);
    kt_check("sparse_init_same_seed_same_weights", kt_nets_same_bits(net, again), "two nets from seed 1 differ");
    free_network(again);
    free_network(net);

    write_file(BAD, "[net]\nbatch=2\nheight=1\nwidth=40\nchannels=1\n"
                    "[connected]\noutput=30\nactivation=logistic\n"
                    "[connected]\noutput=20\nactivation=logistic\nsparse_init=-1\n");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(ERR, "w", stderr)) _exit(3);
        network *bad = kt_net(BAD, 1);
        (void)bad;
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    char msg[1024] = "";
    FILE *f = fopen(ERR, "r");
    if (f) {
        size_t got = fread(msg, 1, sizeof msg - 1, f);
        msg[got] = 0;
        fclose(f);
    }
    int named = strstr(msg, BAD) && strstr(msg, "layer 1 [connected]") && strstr(msg, "sparse_init=-1");
    kt_check("sparse_init_negative_refused", WIFEXITED(status) && WEXITSTATUS(status) != 0 && named,
             "exit status %d, stderr: %s", WIFEXITED(status) ? WEXITSTATUS(status) : -1, msg);
    return kt_exit();
}
