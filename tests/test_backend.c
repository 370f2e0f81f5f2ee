/* test_backend: the CPU backend (darknet-kfac/backend/kfac_backend_cpu.c) operation by
 * operation against dense references in double, then two of the driver's paths that
 * go through any backend, on CPU nets.
 *
 *   ops        every operation of kfac_backend_ops on random inputs with fixed seeds
 *              (tests/backend_cases.h; tests/gpu/test_gpu_kfac.c runs the same cases
 *              on the CUDA backend with this one as the oracle), the layer shapes
 *              from tests/cfg/backend.cfg
 *   fallbacks  a NaN factor, infinite statistics, a NaN gradient, a factor of zeros
 *              (kfac_driver.c, kfac_inverses.c): the last good state is kept
 *   replicas   kfac_networks_sync (kfac_sync.c) on two CPU replicas trained on
 *              different batches: factors averaged, one decomposition shared; in the
 *              second round the replicas leave their due decompositions to the sync */
#include "kt.h"
#include "backend_cases.h"

static kfac_backend *make_cpu(int nslots)
{
    return kfac_backend_cpu_create(nslots);
}

static void cpu_sync(network **nets, int n)
{
    kfac_networks_sync(nets, n);
}

int main(void)
{
    kfac_backend *be = kfac_backend_cpu_create(16);
    bc_ctx c = {be, NULL, make_cpu, NULL};
    network *geom = kt_net("tests/cfg/backend.cfg", 1);
    printf("# ops\n");
    bc_run_all(&c, geom);
    free_network(geom);
    be->ops->destroy(be);

    const char *cfg = kt_cfg_with("build/tests/backend-kfac.cfg", "tests/cfg/backend.cfg", BC_KFAC_SECTION);
    printf("# fallbacks\n");
    network *net = kt_net(cfg, 2);
    bc_net_shapes(net);
    bc_net_fallbacks(net);
    free_network(net);

    printf("# replicas\n");
    network *nets[2];
    nets[0] = kt_net(cfg, 3); /* one seed: the same weights, as Darknet's replicas start */
    nets[1] = kt_net(cfg, 3);
    bc_net_replicas_rounds(nets, cpu_sync);
    free_network(nets[0]);
    free_network(nets[1]);
    return kt_exit();
}
