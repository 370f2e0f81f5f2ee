/* darknet-kfac: eigendecompositions of the factors on the CPU (LAPACK ssyevd from
 * OpenBLAS).  A = Q_A diag(d_A) Q_A^T; we keep E_A = Q_A^T (rows are eigenvectors)
 * and clamp negative eigenvalues (rounding of a PSD matrix) to 0, DESIGN.md 4. */
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"

/* LAPACK, Fortran interface (OpenBLAS exports it; Debian ships no LAPACKE in it). */
extern void ssyevd_(const char *jobz, const char *uplo, const int *n, float *a, const int *lda,
                    float *w, float *work, const int *lwork, int *iwork, const int *liwork, int *info);

int kfac_eigh_cpu(float *a, float *w, int n)
{
    int info = 0, lwork = -1, liwork = -1, iwsize = 0;
    float wsize = 0;
    /* column-major 'U' of a symmetric matrix = row-major 'L': same matrix */
    ssyevd_("V", "U", &n, a, &n, w, &wsize, &lwork, &iwsize, &liwork, &info);
    if (info != 0) return info;
    lwork = (int)wsize + 1;
    liwork = iwsize;
    float *work = (float *)kfac_calloc((size_t)lwork, sizeof(float));
    int *iwork = (int *)kfac_calloc((size_t)liwork, sizeof(int));
    ssyevd_("V", "U", &n, a, &n, w, work, &lwork, iwork, &liwork, &info);
    free(work);
    free(iwork);
    /* column-major eigenvectors in columns = row-major rows: a now holds Q^T */
    return info;
}

static int decompose(const float *X, float *E, float *d, int dim, int groups, float *tmp_E, float *tmp_d)
{
    int g, i;
    for (g = 0; g < groups; ++g) {
        memcpy(tmp_E, X + (size_t)g * dim * dim, (size_t)dim * dim * sizeof(float));
        int info = kfac_eigh_cpu(tmp_E, tmp_d, dim);
        if (info != 0) return info;
        if (!kfac_all_finite(tmp_E, (size_t)dim * dim) || !kfac_all_finite(tmp_d, (size_t)dim)) return -1000;
        for (i = 0; i < dim; ++i) if (tmp_d[i] < 0) tmp_d[i] = 0;
        memcpy(E + (size_t)g * dim * dim, tmp_E, (size_t)dim * dim * sizeof(float));
        memcpy(d + (size_t)g * dim, tmp_d, (size_t)dim * sizeof(float));
    }
    return 0;
}

int kfac_factors_finite_or_log(kfac_layer *kl, int finite)
{
    if (!finite && !kl->bad_eig_logged++)
        kfac_log("layer %d: non-finite factor, decomposition skipped, keeping the last good inverse (logged once)", kl->index);
    return finite;
}

int kfac_inverse_outcome(kfac_layer *kl, int info, const char *solver)
{
    if (info != 0) {
        /* EA may now be newer than EG: harmless, both are decompositions of good factors */
        if (!kl->bad_eig_logged++)
            kfac_log("layer %d: eigendecomposition failed (%s info %d), keeping the last good inverse (logged once)", kl->index, solver, info);
        return -1;
    }
    kl->have_inverse = 1;
    kl->inv_damping = 0; /* the damped inverses are rebuilt from the new decomposition */
    return 0;
}

int kfac_inverse_update_cpu(kfac_layer *kl)
{
    if (!kl->have_factors) return 0;
    if (!kfac_factors_finite_or_log(kl, kfac_all_finite(kl->A, (size_t)kl->groups * kl->K * kl->K) &&
                                        kfac_all_finite(kl->G, (size_t)kl->groups * kl->M * kl->M)))
        return -1;
    /* decompose into scratch so a failure leaves the last good inverse intact */
    int dim = kl->K > kl->M ? kl->K : kl->M;
    float *E = (float *)kfac_calloc((size_t)kl->groups * dim * dim, sizeof(float));
    float *d = (float *)kfac_calloc((size_t)kl->groups * dim, sizeof(float));
    float *tE = (float *)kfac_calloc((size_t)dim * dim, sizeof(float));
    float *td = (float *)kfac_calloc((size_t)dim, sizeof(float));
    int info = decompose(kl->A, E, d, kl->K, kl->groups, tE, td);
    if (info == 0) {
        memcpy(kl->EA, E, (size_t)kl->groups * kl->K * kl->K * sizeof(float));
        memcpy(kl->dA, d, (size_t)kl->groups * kl->K * sizeof(float));
        info = decompose(kl->G, E, d, kl->M, kl->groups, tE, td);
        if (info == 0) {
            memcpy(kl->EG, E, (size_t)kl->groups * kl->M * kl->M * sizeof(float));
            memcpy(kl->dG, d, (size_t)kl->groups * kl->M * sizeof(float));
        }
    }
    free(E); free(d); free(tE); free(td);
    return kfac_inverse_outcome(kl, info, "ssyevd");
}
