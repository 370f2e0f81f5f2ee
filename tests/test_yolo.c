/* test_yolo: K-FAC on a detector, the path `darknet detector train` takes.
 *
 * A yolov3-tiny layout (tests/cfg/yolo-tiny.cfg: 1x1 and 3x3 convolutions with batch
 * norm, maxpool with stride 1, route, upsample, two [yolo] heads) with random images
 * and one box per image:
 *  - both [yolo] losses are sampled for the true Fisher (kfac_fisher.c; their
 *    sampled G against its expectation is tests/test_fisher_losses.c's);
 *  - every convolution is covered, and after statistics steps its factors are
 *    non-zero and finite;
 *  - with the identity preconditioner, training is Darknet's SGD bit for bit (the
 *    captures through route/upsample/yolo backward change nothing);
 *  - with K-FAC, a few updates keep every weight finite and move them differently
 *    from SGD. */
#include "kt.h"
#include "kfac_internal.h"

static const char *base = "tests/cfg/yolo-tiny.cfg";

static void train(network *net, int updates)
{
    int u, s;
    for (u = 0; u < updates; ++u)
        for (s = 0; s < net->subdivisions; ++s) {
            kt_yolo_batch(net, 97, (uint64_t)u * net->subdivisions + s);
            train_network_datum(net);
        }
}

static int all_finite(network *net)
{
    int i;
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        if (l->type != CONVOLUTIONAL) continue;
        if (!kfac_all_finite(l->weights, (size_t)l->nweights) || !kfac_all_finite(l->biases, (size_t)l->n)) return 0;
    }
    return 1;
}

static int same_weights(network *a, network *b)
{
    int i;
    for (i = 0; i < a->n; ++i) {
        const layer *x = &a->layers[i], *y = &b->layers[i];
        if (x->type != CONVOLUTIONAL) continue;
        if (memcmp(x->weights, y->weights, (size_t)x->nweights * sizeof(float)) ||
            memcmp(x->biases, y->biases, (size_t)x->n * sizeof(float))) return 0;
        if (x->batch_normalize &&
            (memcmp(x->scales, y->scales, (size_t)x->n * sizeof(float)) ||
             memcmp(x->rolling_mean, y->rolling_mean, (size_t)x->n * sizeof(float)))) return 0;
    }
    return 1;
}

int main(void)
{
    const char *kcfg = kt_cfg_with("build/tests/yolo-kfac.cfg", base, "[kfac]\nstats_interval=1\ninverse_interval=2\n");
    network *sgd = kt_net(base, 5);
    network *idn = kt_net(kcfg, 5);
    network *kf = kt_net(kcfg, 5);
    kfac_net *k = kfac_of(kf);
    int i, convs = 0;

    for (i = 0; i < kf->n; ++i) convs += kf->layers[i].type == CONVOLUTIONAL;
    kt_check("yolo_uses_true_fisher",
             k->true_fisher && k->nlosses == 2 && k->losses[0].kind == KFAC_LOSS_YOLO && k->losses[1].kind == KFAC_LOSS_YOLO,
             "true_fisher %d, %d loss layers", k->true_fisher, k->nlosses);
    kt_check("yolo_every_conv_covered", k->nlayers == convs, "%d of %d convolutions covered", k->nlayers, convs);

    kfac_network_set_identity(idn, 1);
    train(sgd, 4);
    train(idn, 4);
    train(kf, 4);

    kt_check("yolo_identity_is_sgd_bit_for_bit", same_weights(sgd, idn), "weights differ from SGD's");
    int factors_ok = 1;
    for (i = 0; i < k->nlayers; ++i) {
        const kfac_layer *kl = &k->layers[i];
        size_t nA = (size_t)kl->s.groups * kl->s.K * kl->s.K, nG = (size_t)kl->s.groups * kl->s.M * kl->s.M;
        double a = 0, g = 0;
        size_t j;
        for (j = 0; j < nA; ++j) a += fabs(kl->A[j]);
        for (j = 0; j < nG; ++j) g += fabs(kl->G[j]);
        if (!(a > 0) || !(g > 0) || !kfac_all_finite(kl->A, nA) || !kfac_all_finite(kl->G, nG) || !kl->have_inverse) {
            kt_fail("yolo_factors", "layer %d: |A| %g |G| %g have_inverse %d", kl->index, a, g, kl->have_inverse);
            factors_ok = 0;
        }
    }
    if (factors_ok) kt_ok("yolo_factors");
    kt_check("yolo_kfac_weights_finite", all_finite(kf), "a weight or bias is not finite");
    kt_check("yolo_kfac_differs_from_sgd", !same_weights(sgd, kf), "K-FAC left the weights where SGD put them");

    /* random=1: Darknet's detector trainer resizes the net (here 64 -> 96): the [yolo]
     * layers grow, and so must the true-Fisher pass's buffers (make test-sanitize
     * catches an overflow here) */
    resize_network(kf, 96, 96);
    train(kf, 2);
    kt_check("yolo_kfac_trains_after_resize", all_finite(kf) && kfac_network_step(kf) == 6,
             "a weight is not finite, or step %d", kfac_network_step(kf));

    free_network(sgd);
    free_network(idn);
    free_network(kf);
    return kt_exit();
}
