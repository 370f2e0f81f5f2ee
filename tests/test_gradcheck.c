/* test_gradcheck: Darknet's backward against central finite differences of its own
 * forward, for every parameter of every convolutional, connected and batch-norm layer
 * of small nets (tests/cfg/grad-*.cfg): an inception module, darknet53's residual
 * blocks, the yolov3-tiny layout, the layers that pass a delta down without weights
 * ([activation], [reorg] in all its modes, [normalization], reverse [upsample]), and
 * batch norm over few values (batch 8, a connected layer, a standalone [batchnorm]),
 * once more with inputs so small that batch norm's epsilon matters.
 *
 * The loss is the softmax cross-entropy summed over the batch, as Darknet's softmax
 * layer reports it in net->cost after forward_network with train=1 (batch norm then
 * normalizes by the batch's own statistics; the rolling statistics that forward also
 * updates are not read in training mode, so the loss is a function of the parameters
 * and the batch alone).  Darknet's deltas are the NEGATIVE gradient of that loss, so
 * after one backward from zeroed buffers, -weight_updates, -bias_updates and
 * -scale_updates are dL/dW, dL/db and dL/dgamma.
 *
 * Each net runs in a child process, so that a crash in one (Darknet's standalone
 * [batchnorm] once wrote through a NULL buffer on the CPU) is reported as that net's
 * failure and the other nets are still checked.
 *
 * Batch norm's 1/(N-1) variance (patch 0009) shows only where N is small: on the
 * convolutions of the other nets (N = 64 to 256) it measured 8e-4 to 2.6e-3, inside
 * the tolerance; the batch-8 net shows it (1e-2 to 6e-2). */
#include "kt.h"

#include <sys/wait.h>
#include <unistd.h>

/* Finite-difference step, absolute (weights here are 0.1-1, biases 0, scales 1).
 * The forward is float32, so the loss (~B*log(5), B = 4 or 8, summed here in double)
 * carries rounding of ~1e-6 that the central difference divides by the step, while
 * its truncation error grows as the step squared: measured on these nets (max-pools
 * frozen, see below), the largest relative error of a correct buffer is 2e-3 at
 * 1e-3 (rounding), 4e-4 at 1e-2 and 3.5e-3 at 3e-2 (truncation, where batch norm
 * makes the loss curve on a short scale).  -DFD_EPS=... repeats the measurement. */
#ifndef FD_EPS
#define FD_EPS 1e-2
#endif

/* Relative error allowed per buffer, ||g - g_fd|| / max(||g||, ||g_fd||).  The correct
 * gradients measure 1e-5 to 4e-4 here; each defect Darknet had measures 1e-2 (batch
 * norm's 1/(N-1) variance over N = 32 values) to 1 (a lost branch of the gradient)
 * on the buffers it reaches.  3e-3 leaves a factor 7 above the noise and 3 below the
 * smallest defect. */
#define REL_TOL 3e-3

/* net->cost is float; the double sum of the same terms agrees to float rounding of a
 * sum of B terms of ~2 each. */
#define COST_RTOL 1e-5

typedef struct {
    char what[48];     /* e.g. "L3 conv scales" */
    float *param;      /* the parameters, n */
    float *grad;       /* Darknet's accumulator for them (negative gradient), n */
    size_t n;
} gc_buffer;

/* The loss of the batch in net->input/net->truth at the current parameters: one
 * training forward, the last layer's softmax probabilities summed again in double.
 * *cost gets Darknet's own net->cost of the same forward. */
static double gc_loss(network *net, double *cost)
{
    const layer *out = &net->layers[net->n - 1];
    size_t i, n = (size_t)out->outputs * net->batch;
    double loss = 0;
    net->train = 1;
    forward_network(net);
    for (i = 0; i < n; ++i)
        if (net->truth[i] != 0) loss -= net->truth[i] * log((double)out->output[i]);
    if (cost) *cost = *net->cost;
    return loss;
}

/* A max-pool's forward with the choice of maximum frozen at what Darknet's own
 * forward chose last (l.indexes).  The loss of a net with max-pools is smooth only
 * between the points where a window's maximum changes hands, and the steps of the
 * finite differences cross such points (measured: relative errors up to 0.1 behind
 * 2x2 pools, worst where batch norm magnifies a channel of small variance).  Darknet's
 * backward is the gradient of the piece the unperturbed forward lies on, which is the
 * loss with the choices frozen: the finite differences of that piece are its exact
 * reference. */
static void gc_forward_maxpool_frozen(layer l, network net)
{
    int i;
    for (i = 0; i < l.outputs * l.batch; ++i) l.output[i] = net.input[l.indexes[i]];
}

/* The buffers with gradients of layer i; returns how many (0 for other layers). */
static int gc_layer_buffers(const network *net, int i, gc_buffer *b)
{
    layer *l = &net->layers[i];
    const char *kind;
    size_t nw, nb;
    int k = 0;
    if (l->type == CONVOLUTIONAL) {
        kind = "conv";
        nw = (size_t)l->nweights;
        nb = (size_t)l->n;
    } else if (l->type == CONNECTED) {
        kind = "conn";
        nw = (size_t)l->inputs * l->outputs;
        nb = (size_t)l->outputs;
    } else if (l->type == BATCHNORM) {
        kind = "batchnorm";
        nw = 0;
        nb = (size_t)l->out_c;
    } else {
        return 0;
    }
    if (nw) {
        snprintf(b[k].what, sizeof b[k].what, "L%d %s weights", i, kind);
        b[k].param = l->weights; b[k].grad = l->weight_updates; b[k].n = nw; ++k;
    }
    snprintf(b[k].what, sizeof b[k].what, "L%d %s biases", i, kind);
    b[k].param = l->biases; b[k].grad = l->bias_updates; b[k].n = nb; ++k;
    if (l->batch_normalize || l->type == BATCHNORM) {
        snprintf(b[k].what, sizeof b[k].what, "L%d %s scales", i, kind);
        b[k].param = l->scales; b[k].grad = l->scale_updates; b[k].n = nb; ++k;
    }
    return k;
}

/* dL/dp by central differences, p perturbed in place and restored bit for bit; the
 * steps actually taken (float rounding of p +- EPS) are the denominator. */
static double gc_fd(network *net, float *p)
{
    const float p0 = *p;
    *p = (float)(p0 + FD_EPS);
    double up = (double)*p - p0, lp = gc_loss(net, NULL);
    *p = (float)(p0 - FD_EPS);
    double down = (double)p0 - *p, lm = gc_loss(net, NULL);
    *p = p0;
    return (lp - lm) / (up + down);
}

static void gc_check_net(const char *name, const char *cfg, double input_scale)
{
    network *net = kt_net(cfg, 3);
    gc_buffer bufs[3 * 32]; /* at most 3 per layer (weights, biases, scales) */
    int nbuf = 0, i, k;
    char nm[160];
    double cost;

    if (net->n > 32) {
        kt_fail(name, "%d layers: the test holds the buffers of 32", net->n);
        free_network(net);
        return;
    }
    for (i = 0; i < net->n; ++i) nbuf += gc_layer_buffers(net, i, bufs + nbuf);
    kt_batch(net, 71, 0);
    for (i = 0; i < net->inputs * net->batch; ++i) net->input[i] *= (float)input_scale;

    /* Darknet's gradient: one forward and one backward from zeroed accumulators */
    for (k = 0; k < nbuf; ++k) memset(bufs[k].grad, 0, bufs[k].n * sizeof(float));
    double loss = gc_loss(net, &cost);
    backward_network(net);
    snprintf(nm, sizeof nm, "%s_loss_is_net_cost", name);
    kt_check(nm, fabs(loss - cost) <= COST_RTOL * fabs(loss),
             "loss summed here %.9g, net->cost %.9g: the check below would not test Darknet's loss", loss, cost);

    int npool = 0;
    for (i = 0; i < net->n; ++i)
        if (net->layers[i].type == MAXPOOL) {
            net->layers[i].forward = gc_forward_maxpool_frozen;
            ++npool;
        }
    if (npool) {
        snprintf(nm, sizeof nm, "%s_frozen_maxpool_same_loss", name);
        double frozen = gc_loss(net, NULL);
        kt_check(nm, frozen == loss, "loss %.9g with the max-pools' choices frozen, %.9g by Darknet's forward", frozen, loss);
    }

    for (k = 0; k < nbuf; ++k) {
        const gc_buffer *b = &bufs[k];
        size_t j;
        double d2 = 0, g2 = 0, f2 = 0;
        for (j = 0; j < b->n; ++j) {
            double g = -(double)b->grad[j];
            double f = gc_fd(net, &b->param[j]);
            d2 += (g - f) * (g - f);
            g2 += g * g;
            f2 += f * f;
        }
        double scale = sqrt(fmax(g2, f2)), rel = scale > 0 ? sqrt(d2) / scale : 0;
        printf("# %s %s: relative error %.2e (|g| %.3g, |g_fd| %.3g, %zu values)\n",
               name, b->what, rel, sqrt(g2), sqrt(f2), b->n);
        snprintf(nm, sizeof nm, "%.60s_%.60s", name, b->what);
        for (j = strlen(name) + 1; nm[j]; ++j) if (nm[j] == ' ') nm[j] = '_';
        /* a buffer whose gradient vanishes would pass whatever Darknet computed (the
         * norms here are 0.08 to 10, the finite differences' noise ~1e-4 per value) */
        if (scale <= 1e-3)
            kt_fail(nm, "gradient norm %.3g: too small for a relative comparison", scale);
        else
            kt_check(nm, rel <= REL_TOL, "relative error %.3g > %.3g (|g| %.4g, |g_fd| %.4g)",
                     rel, REL_TOL, sqrt(g2), sqrt(f2));
    }
    free_network(net);
}

int main(void)
{
    static const struct { const char *name, *cfg; double input_scale; } nets[] = {
        {"inception", "tests/cfg/grad-inception.cfg", 1},
        {"residual", "tests/cfg/grad-residual.cfg", 1},
        {"yolo_tiny", "tests/cfg/grad-yolo-tiny.cfg", 1},
        {"layers", "tests/cfg/grad-layers.cfg", 1},
        {"reorg", "tests/cfg/grad-reorg.cfg", 1},
        {"batchnorm", "tests/cfg/grad-batchnorm.cfg", 1},
        /* inputs of 1e-3: layer 0's batch variances (~1e-6) fall below batch norm's
         * epsilon (1e-5), where the form of the epsilon decides the gradient */
        {"batchnorm_small_input", "tests/cfg/grad-batchnorm.cfg", 1e-3},
    };
    size_t i;
    for (i = 0; i < sizeof nets / sizeof nets[0]; ++i) {
        int status;
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) {
            kt_fail(nets[i].name, "fork failed");
            continue;
        }
        if (pid == 0) {
            gc_check_net(nets[i].name, nets[i].cfg, nets[i].input_scale);
            fflush(stdout);
            _exit(kt_failures ? 1 : 0);
        }
        if (waitpid(pid, &status, 0) != pid) {
            kt_fail(nets[i].name, "waitpid failed");
        } else if (WIFSIGNALED(status)) {
            kt_fail(nets[i].name, "crashed with signal %d (%s) before its checks ended", WTERMSIG(status), strsignal(WTERMSIG(status)));
        } else {
            /* the child printed its own ok/FAIL lines; only its verdict counts here */
            ++kt_checks;
            if (WEXITSTATUS(status) != 0) ++kt_failures;
        }
    }
    return kt_exit();
}
