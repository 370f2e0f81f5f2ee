/* test_dense_fisher: for one sample and T = 1, K-FAC's block is the exact Fisher.
 *
 * With batch 1 and a layer with one output location (a connected layer, or a conv
 * layer whose output is 1x1), the per-sample gradient of the weights with the bias
 * column is dW = g a^T (M x K), so with column-stacking vec()
 *
 *   vec(dW) vec(dW)^T = (a (x) g)(a (x) g)^T = (a a^T) (x) (g g^T) = A (x) G
 *
 * exactly (fisher=empirical: G comes from the same delta as dW).  The test runs
 * train_network_datum's steps by hand (forward, the K-FAC Fisher pass, backward),
 * takes dW from Darknet's own weight_updates/bias_updates (the gradient of this
 * sample alone: the cfg has momentum=0), lets update_network fold the factors
 * ([kfac] decay=0: this sample's alone) and compares kron(A, G) with the dense
 * outer product, at two successive steps.  A wrong vec order
 * (kron(G, A)), a transposed factor or a missing bias row fails. */
#include "kt.h"
#include "kfac.h"

int main(void)
{
    network *net = kt_net("tests/cfg/dense.cfg", 9);
    int steps, i;
    for (steps = 0; steps < 2; ++steps) {
        double *grad[2] = {0, 0};
        int idx[2], K[2], M[2], nl = 0;
        kt_batch(net, 31, (uint64_t)steps);
        /* train_network_datum (src/network.c), split so the gradient can be read
         * before update_network consumes it */
        *net->seen += net->batch;
        net->train = 1;
        forward_network(net);
        kfac_network_fisher_pass(net);
        backward_network(net);
        for (i = 0; i < net->n; ++i) {
            const layer *l = &net->layers[i];
            if (l->type != CONVOLUTIONAL && l->type != CONNECTED) continue;
            int kin = l->type == CONNECTED ? l->inputs : l->nweights / l->n;
            int m = l->type == CONNECTED ? l->outputs : l->n;
            idx[nl] = i;
            K[nl] = kin + 1;
            M[nl] = m;
            /* vec(dW) with dW = [weight_updates | bias_updates], M x K: entry (r, c)
             * goes to c*M + r.  weight_updates holds the summed NEGATIVE gradient
             * (Darknet's convention); the sign cancels in the outer product. */
            grad[nl] = (double *)calloc((size_t)K[nl] * m, sizeof(double));
            int r, c;
            for (r = 0; r < m; ++r) {
                for (c = 0; c < kin; ++c) grad[nl][(size_t)c * m + r] = l->weight_updates[(size_t)r * kin + c];
                grad[nl][(size_t)kin * m + r] = l->bias_updates[r];
            }
            ++nl;
        }
        update_network(net);

        for (i = 0; i < nl; ++i) {
            const float *A, *G;
            int groups, a_dim, g_dim;
            char nm[128];
            snprintf(nm, sizeof nm, "step%d_L%d_factor_shapes", steps, idx[i]);
            if (!kfac_layer_factors(net, idx[i], &A, &G, &groups, &a_dim, &g_dim) ||
                !kt_check(nm, groups == 1 && a_dim == K[i] && g_dim == M[i], "groups %d A %d G %d, expected 1, %d, %d",
                          groups, a_dim, g_dim, K[i], M[i])) {
                free(grad[i]);
                continue;
            }
            const int n = K[i] * M[i];
            double *dense = (double *)calloc((size_t)n * n, sizeof(double));
            double *kron = (double *)calloc((size_t)n * n, sizeof(double));
            int p, q, a1, a2, g1, g2;
            for (p = 0; p < n; ++p)
                for (q = 0; q < n; ++q) dense[(size_t)p * n + q] = grad[i][p] * grad[i][q];
            for (a1 = 0; a1 < K[i]; ++a1)
                for (a2 = 0; a2 < K[i]; ++a2)
                    for (g1 = 0; g1 < M[i]; ++g1)
                        for (g2 = 0; g2 < M[i]; ++g2)
                            kron[(size_t)(a1 * M[i] + g1) * n + (a2 * M[i] + g2)] =
                                (double)A[(size_t)a1 * K[i] + a2] * G[(size_t)g1 * M[i] + g2];
            /* both sides are products of the same float values (inputs, deltas) summed
             * over at most 18 terms (gemm in Darknet, ssyrk in K-FAC): agreement to a
             * few float ulps, 1e-5 relative to the largest entry */
            snprintf(nm, sizeof nm, "step%d_L%d_%s_kron_A_G_equals_dense_fisher", steps, idx[i],
                     net->layers[idx[i]].type == CONNECTED ? "conn" : "conv");
            double mx = kt_maxabs(dense, (size_t)n * n);
            kt_close_d(nm, kron, dense, (size_t)n * n, 1e-5 * mx, 1e-5);
            snprintf(nm, sizeof nm, "step%d_L%d_gradient_not_zero", steps, idx[i]);
            kt_check(nm, mx > 1e-12, "max |dW dW^T| = %g: a vacuous comparison", mx);
            free(dense);
            free(kron);
            free(grad[i]);
        }
    }
    free_network(net);
    return kt_exit();
}
