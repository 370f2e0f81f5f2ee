/* kfac_compare: train one Darknet cfg deterministically, for comparing optimizers
 * (SGD vs K-FAC) on equal terms: a classifier, or an autoencoder of its images.
 *
 * Darknet's own `classifier train` seeds from the clock and feeds the network from 32
 * loader threads sharing rand(), so two runs never see the same batches
 * (shared/DESIGN.md section 3b). This driver uses the same library calls as
 * classifier train (load_network, load_data_augment, train_network_datum,
 * network_predict_data) but loads the whole data set once and draws the batches from
 * its own generator, so a run is a function of (cfg, seed) alone: SGD and K-FAC with
 * the same seed start from the same weights and see the same sequence of batches,
 * whatever else in the library calls rand().
 *
 * Usage, from the directory the .data file's paths are relative to (the repo root):
 *
 *   kfac_compare -data build/data/digits/digits.data -cfg cfg/digits.cfg -seed 1
 *                -iters 300 -eval 10 [-eval-growth R] [-lr X] [-weights F]
 *                [-out run.tsv] [-weights-out F] [-full-train] [-stop-below X]
 *                [-gpu N]
 *
 *   -iters N        updates to run (one update = the cfg's batch images, fed as
 *                   subdivisions passes of batch/subdivisions); default: max_batches
 *   -eval K         evaluate every K updates (at the multiples of K), and at 0 and at
 *                   the end
 *   -eval-growth R  R > 1: also evaluate at ceil(R * the previous evaluation's update)
 *                   (at least one update later) while that comes before the next
 *                   multiple of K: dense evaluations early, every K later, so that
 *                   "updates to a target" is resolved to a factor R at any scale
 *                   (default 1: multiples of K only)
 *   -lr X           replaces the cfg's learning_rate
 *   -out F          writes one TSV row per evaluation (columns below)
 *   -weights F      starts from these weights (Darknet's format) instead of the seed's
 *                   random initialization, as `classifier train CFG F -clear` does: the
 *                   layers F holds are loaded over the seed's initialization, so a file
 *                   cut by `darknet partial` (retraining with a new head) leaves the
 *                   layers after the cut as the seed made them; the update count
 *                   starts at 0 and no K-FAC state is loaded
 *   -weights-out F  saves the final weights (Darknet's format)
 *   -full-train     also evaluates the whole training set at each evaluation (one
 *                   forward pass over it; costs about 4x a test pass)
 *   -stop-below X   with -full-train: stop after the first evaluation at which the
 *                   whole-training-set objective (full_train_loss, or for an
 *                   autoencoder full_train_error) is <= X, before -iters (for runs
 *                   that only need the updates to a target)
 *   -gpu N          GPU builds only: device N, or -1 for the CPU (default 0); under
 *                   mpirun, N + the rank's local rank
 *
 * Under mpirun (the MPI build: make MPI=1, build/kfac_compare-cpu-mpi) each rank is
 * one process of a data-parallel run (darknet-kfac/kfac_dist.c): every rank draws the
 * same global batch of ranks x batch images and trains on its own slice (rank r:
 * images [r B, (r + 1) B) of each pass), so `mpirun -np N` with a cfg of batch B and
 * one process with the same cfg at batch N*B see the same images in every update and
 * can be compared update by update.  The losses printed are means over all ranks'
 * images; rank 0 writes the TSV and the weights and prints the collectives' seconds
 * per update at the end; every rank evaluates (the same weights), so that all take
 * the same decisions (-stop-below, NaN).
 *
 * Tasks, chosen by the cfg's last layer:
 *
 *   classifier   (a [softmax] net; every cfg but the one below): images as Darknet's
 *                classifier loader gives them (3 channels, the cfg's augmentation),
 *                one-hot labels from the .data file's label list; the net's outputs
 *                must equal its classes.
 *   autoencoder  (last layer [logistic], Darknet's sigmoid cross-entropy, with as many
 *                outputs as the net has inputs; cfg/digits-ae.cfg): the cfg has
 *                channels=1 and each image is fed as its first channel of the
 *                loader's 3-channel copy (gray values in [0, 1]; an image whose
 *                channels differ is an error), and the target is the input itself.
 *                Labels are not used.
 *
 * TSV columns, classifier:
 *   iter             updates done
 *   train_seconds    seconds spent in train_network_datum so far (no data copying, no
 *                    evaluation)
 *   train_loss       mean cross-entropy per image over the updates since the previous
 *                    row, as Darknet computes it during training (nan in row 0)
 *   test_acc         top-1 accuracy over the whole test set
 *   test_loss        mean cross-entropy per test image
 *   full_train_loss  mean cross-entropy over the whole training set with -full-train,
 *                    else nan
 *
 * TSV columns, autoencoder (per image = summed over its pixels; p the sigmoid output,
 * x the input image):
 *   iter              updates done
 *   train_seconds     as above
 *   train_loss        mean per-image cross-entropy -x log p - (1-x) log(1-p) over the
 *                     updates since the previous row, as Darknet computes it during
 *                     training (nan in row 0). Where Darknet's own sum is not finite
 *                     (a pixel x = 1 whose float sigmoid rounded to 1 gives 0 * log 0
 *                     = nan in logistic_x_ent_cpu), that pass's sum is recomputed here
 *                     from the [logistic] layer's output with 0 log 0 = 0 and log
 *                     arguments clamped at 1e-30; this reads the output buffer after
 *                     train_network_datum returns, i.e. assumes the update ran no
 *                     forward pass of its own
 *   test_error        Martens & Grosse's reconstruction error over the whole test set:
 *                     the mean over images of sum_pixels (x - p)^2
 *   test_loss         mean per-image cross-entropy over the test set (same convention)
 *   full_train_error  the reconstruction error over the whole training set with
 *                     -full-train (M&G's "training error"), else nan
 *   full_train_loss   mean per-image cross-entropy over the whole training set with
 *                     -full-train, else nan
 *
 * Build: `make build/kfac_compare` (the top Makefile). By hand, from the repo root,
 * against the CPU build of Darknet with darknet-kfac in build/darknet-cpu:
 *
 *   gcc -O2 -Wall -Ibuild/darknet-cpu/include -Ibuild/darknet-cpu/src tools/kfac_compare.c build/darknet-cpu/libdarknet.a -lopenblas -lm -pthread -o build/kfac_compare
 *
 * For a GPU build add the flags libdarknet.a was compiled with (-DGPU, -DCUDNN and
 * CUDA's include folder) and its libraries: darknet.h's structs change with GPU and
 * CUDNN, so a mismatch compiles but reads the wrong fields.
 *
 * Exit status: 0 after a complete run or a run stopped because the loss (classifier)
 * or the network's output (autoencoder) became NaN (reported on stderr; the TSV ends
 * with that update's row), 1 on usage or input errors.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "darknet.h"
#include "data.h"
#include "option_list.h"
#include "kfac.h"

/* ------------------------------------------------------------ options ------------- */

typedef struct {
    const char *datacfg;     /* Darknet .data file: classes, train, valid, labels */
    const char *cfg;         /* network cfg */
    int seed;                /* seeds weights init (srand) and the batch generator */
    int iters;               /* updates to run; -1 = the cfg's max_batches */
    int eval;                /* evaluate every eval updates */
    double eval_growth;      /* > 1: also evaluate geometrically early (eval_next) */
    float lr;                /* learning rate override; used when has_lr */
    int has_lr;              /* 1 when -lr was given */
    const char *weights;     /* initial weights path or NULL (random init) */
    const char *out;         /* TSV path or NULL */
    const char *weights_out; /* final weights path or NULL */
    int full_train;          /* 1: full training-set loss at each evaluation */
    double stop_below;       /* stop once the full training objective is <= this */
    int has_stop_below;      /* 1 when -stop-below was given */
    int gpu;                 /* GPU builds: device index, -1 = CPU */
} options;

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s -data FILE.data -cfg FILE.cfg [-seed S] [-iters N] [-eval K]\n"
            "          [-eval-growth R] [-lr X] [-weights FILE] [-out FILE.tsv]\n"
            "          [-weights-out FILE] [-full-train] [-stop-below X]"
#ifdef GPU
            " [-gpu N]"
#endif
            "\n", prog);
    exit(1);
}

/* Parses an int option value; exits with a message naming the option when it is not
 * a whole number. */
static int parse_int(const char *opt, const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end != 0 || v < -2147483647L || v > 2147483647L) {
        fprintf(stderr, "kfac_compare: %s %s: not an integer\n", opt, s);
        exit(1);
    }
    return (int)v;
}

static float parse_float(const char *opt, const char *s)
{
    char *end;
    float v = strtof(s, &end);
    if (end == s || *end != 0 || !isfinite(v)) {
        fprintf(stderr, "kfac_compare: %s %s: not a number\n", opt, s);
        exit(1);
    }
    return v;
}

/* Parses argv strictly: an unknown or incomplete option is an error, not ignored. */
static options parse_options(int argc, char **argv)
{
    options o = {0};
    o.seed = 1;
    o.iters = -1;
    o.eval = 10;
    o.eval_growth = 1;
    int i;
    for (i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (!strcmp(a, "-full-train")) { o.full_train = 1; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "kfac_compare: %s needs a value\n", a);
            usage(argv[0]);
        }
        const char *v = argv[++i];
        if (!strcmp(a, "-data")) o.datacfg = v;
        else if (!strcmp(a, "-cfg")) o.cfg = v;
        else if (!strcmp(a, "-seed")) o.seed = parse_int(a, v);
        else if (!strcmp(a, "-iters")) o.iters = parse_int(a, v);
        else if (!strcmp(a, "-eval")) o.eval = parse_int(a, v);
        else if (!strcmp(a, "-eval-growth")) o.eval_growth = parse_float(a, v);
        else if (!strcmp(a, "-lr")) { o.lr = parse_float(a, v); o.has_lr = 1; }
        else if (!strcmp(a, "-weights")) o.weights = v;
        else if (!strcmp(a, "-stop-below")) { o.stop_below = parse_float(a, v); o.has_stop_below = 1; }
        else if (!strcmp(a, "-out")) o.out = v;
        else if (!strcmp(a, "-weights-out")) o.weights_out = v;
#ifdef GPU
        else if (!strcmp(a, "-gpu")) o.gpu = parse_int(a, v);
#endif
        else {
            fprintf(stderr, "kfac_compare: unknown option %s\n", a);
            usage(argv[0]);
        }
    }
    if (!o.datacfg || !o.cfg) usage(argv[0]);
    if (o.iters < -1) { fprintf(stderr, "kfac_compare: -iters %d: must be >= 0\n", o.iters); exit(1); }
    if (o.eval <= 0) { fprintf(stderr, "kfac_compare: -eval %d: must be > 0\n", o.eval); exit(1); }
    if (o.eval_growth < 1) { fprintf(stderr, "kfac_compare: -eval-growth %g: must be >= 1\n", o.eval_growth); exit(1); }
    if (o.has_stop_below && !o.full_train) { fprintf(stderr, "kfac_compare: -stop-below needs -full-train\n"); exit(1); }
    if (o.has_lr && o.lr <= 0) { fprintf(stderr, "kfac_compare: -lr %g: must be > 0\n", o.lr); exit(1); }
    return o;
}

/* ------------------------------------------------------------ tasks --------------- */

typedef enum {
    TASK_CLASSIFIER,  /* softmax over the .data file's classes, one-hot labels */
    TASK_AUTOENCODER  /* [logistic] output reconstructing 1-channel input images */
} task_kind;

/* Returns the task the loaded net's last layer asks for; exits with a message when a
 * [logistic] net does not have as many outputs as inputs (it cannot reconstruct its
 * input) or is not fed one channel. */
static task_kind task_of(const network *net, const char *cfg)
{
    const layer *last = &net->layers[net->n - 1];
    if (last->type != LOGXENT) return TASK_CLASSIFIER;
    if (net->outputs != net->inputs || net->truths != net->inputs) {
        fprintf(stderr, "kfac_compare: %s ends in [logistic] with %d outputs for %d inputs: "
                "an autoencoder needs as many as it has inputs\n", cfg, net->outputs, net->inputs);
        exit(1);
    }
    if (net->c != 1) {
        fprintf(stderr, "kfac_compare: %s: an autoencoder is fed gray images: set channels=1 "
                "(it has %d)\n", cfg, net->c);
        exit(1);
    }
    return TASK_AUTOENCODER;
}

/* ------------------------------------------------------------ files --------------- */

/* Exits with status 1 unless path can be opened for reading. Darknet's own loaders
 * exit with status 0 on a missing file (file_error, load_image_stb), which a script
 * would take for success, so every file is checked here first. */
static void file_require(const char *path, const char *what)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "kfac_compare: cannot open %s %s\n", what, path);
        exit(1);
    }
    fclose(f);
}

/* ------------------------------------------------------------ batches ------------- */

/* splitmix64 (Steele, Lea, Flood 2014): a private generator for batch indices, so that
 * the batch sequence does not depend on who else calls rand(). */
static uint64_t batch_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Draws ranks x n rows of d uniformly with replacement (like Darknet's
 * get_random_batch, but from the private generator) and fills X (n x d.X.cols) and y
 * (n x d.y.cols) with rows [rank n, (rank + 1) n) of them: under mpirun every rank
 * draws the same global batch and takes its own slice, so N ranks at batch n see
 * the images one process at batch N n sees (ranks 1: the whole draw). */
static void batch_fill_random(data d, int n, int rank, int ranks, float *X, float *y, uint64_t *state)
{
    int j;
    for (j = 0; j < ranks * n; ++j) {
        int index = (int)(batch_rng_next(state) % (uint64_t)d.X.rows);
        if (j / n != rank) continue;
        memcpy(X + (size_t)(j % n) * d.X.cols, d.X.vals[index], d.X.cols * sizeof(float));
        memcpy(y + (size_t)(j % n) * d.y.cols, d.y.vals[index], d.y.cols * sizeof(float));
    }
}

/* ------------------------------------------------------------ data ---------------- */

/* Keeps the first of the three channels of each row of d.X (the loader's CHW copy of
 * a gray image) and makes d.y a copy of it: an autoencoder's inputs and targets.
 * Exits with a message naming the image when its channels differ (not gray). */
static void dataset_to_gray_autoencoder(data *d, char **paths, int pixels)
{
    int i, j;
    if (d->X.cols != 3 * pixels) {
        fprintf(stderr, "kfac_compare: images load as %d values, expected 3 x %d\n",
                d->X.cols, pixels);
        exit(1);
    }
    free_matrix(d->y);
    d->y = make_matrix(d->X.rows, pixels);
    for (i = 0; i < d->X.rows; ++i) {
        float *x = d->X.vals[i]; /* (3, pixels): R, G, B planes */
        for (j = 0; j < pixels; ++j) {
            if (x[pixels + j] != x[j] || x[2 * pixels + j] != x[j]) {
                fprintf(stderr, "kfac_compare: %s is not gray (pixel %d: %g %g %g): the "
                        "autoencoder takes one channel\n", paths[i], j, x[j],
                        x[pixels + j], x[2 * pixels + j]);
                exit(1);
            }
        }
        float *g = realloc(x, (size_t)pixels * sizeof(float));
        if (!g) {
            fprintf(stderr, "kfac_compare: out of memory\n");
            exit(1);
        }
        d->X.vals[i] = g;
        memcpy(d->y.vals[i], g, (size_t)pixels * sizeof(float));
    }
    d->X.cols = pixels;
}

/* Loads every image of list_file once, as classifier train does (3 channels,
 * augmentation from the cfg); center=1 means the evaluation load (center crop, no
 * flip, no color distortion). For an autoencoder, keeps one channel and sets the
 * targets to the inputs (dataset_to_gray_autoencoder). Exits with a message when a
 * label is missing (classifier) or the image size does not match the network. */
static data dataset_load(network *net, task_kind task, const char *list_file,
                         char **labels, int classes, int center)
{
    file_require(list_file, "image list");
    list *plist = get_paths((char *)list_file);
    char **paths = (char **)list_to_array(plist);
    int n = plist->size;
    free_list(plist);
    if (n == 0) {
        fprintf(stderr, "kfac_compare: %s lists no images\n", list_file);
        exit(1);
    }
    int i, j;
    for (i = 0; i < n; ++i) file_require(paths[i], "image");
    int min = net->min_ratio * net->w;
    int max = net->max_ratio * net->w;
    data d;
    if (center) {
        d = load_data_augment(paths, n, 0, labels, classes, net->hierarchy, min, max,
                              net->w, 0, 1, 0, 1, 1, 1, 0);
    } else {
        d = load_data_augment(paths, n, 0, labels, classes, net->hierarchy, min, max,
                              net->w, net->angle, net->aspect, net->hue, net->saturation,
                              net->exposure, 0, net->flip);
    }
    if (task == TASK_AUTOENCODER) {
        dataset_to_gray_autoencoder(&d, paths, net->inputs);
        free_ptrs((void **)paths, n);
        return d;
    }
    if (d.X.cols != net->inputs) {
        fprintf(stderr, "kfac_compare: %s: images load as %d values, the network takes %d\n",
                list_file, d.X.cols, net->inputs);
        exit(1);
    }
    for (i = 0; i < d.y.rows; ++i) {
        float s = 0;
        for (j = 0; j < d.y.cols; ++j) s += d.y.vals[i][j];
        if (s != 1) {
            fprintf(stderr, "kfac_compare: %s: %s matches %g labels, needs exactly 1\n",
                    list_file, paths[i], s);
            exit(1);
        }
    }
    free_ptrs((void **)paths, n);
    return d;
}

/* ------------------------------------------------------------ evaluation ---------- */

typedef struct {
    float acc;   /* top-1 accuracy */
    float loss;  /* mean cross-entropy per image */
} eval_result;

/* Darknet's logistic cross-entropy of one value (logistic_x_ent_cpu), in double,
 * with 0 log 0 = 0 and log arguments clamped at 1e-30: finite wherever the output is,
 * and equal to Darknet's value wherever that is finite. */
static double xent_logistic(double t, double p)
{
    double e = 0;
    if (t > 0) e -= t * log(fmax(p, 1e-30));
    if (t < 1) e -= (1 - t) * log(fmax(1 - p, 1e-30));
    return e;
}

typedef struct {
    double error; /* mean over images of sum_pixels (x - p)^2 (M&G's error) */
    double loss;  /* mean over images of the summed cross-entropy */
} ae_result;

/* Reconstructs all of d (d.y the targets) and returns the mean per-image squared error
 * and cross-entropy. */
static ae_result evaluate_autoencoder(network *net, data d)
{
    matrix pred = network_predict_data(net, d); /* d.X.rows x inputs, sigmoid outputs */
    double err = 0, loss = 0;
    int i, j;
    for (i = 0; i < d.y.rows; ++i) {
        for (j = 0; j < d.y.cols; ++j) {
            double t = d.y.vals[i][j], p = pred.vals[i][j];
            err += (t - p) * (t - p);
            loss += xent_logistic(t, p);
        }
    }
    free_matrix(pred);
    ae_result r = {err / d.y.rows, loss / d.y.rows};
    return r;
}

/* Sum of xent_logistic over n values: one pass's loss, recomputed where Darknet's own
 * sum is not finite (see the train_loss column). */
static double xent_logistic_sum(const float *pred, const float *truth, int n)
{
    double s = 0;
    int i;
    for (i = 0; i < n; ++i) s += xent_logistic(truth[i], pred[i]);
    return s;
}

/* 1 when any of the n values is NaN. */
static int any_nan(const float *x, int n)
{
    int i;
    for (i = 0; i < n; ++i) {
        if (isnan(x[i])) return 1;
    }
    return 0;
}

/* The update after which the evaluation following the one at update it comes: the next
 * multiple of k, or earlier, ceil(growth * it) (at least it + 1) when growth > 1. */
static int eval_next(int it, int k, double growth)
{
    int next = (it / k + 1) * k;
    if (growth > 1) {
        double g = ceil(growth * it);
        if (g < it + 1) g = it + 1;
        if (g < next) next = (int)g;
    }
    return next;
}

/* Predicts all of d and returns top-1 accuracy and mean cross-entropy. */
static eval_result evaluate(network *net, data d)
{
    matrix pred = network_predict_data(net, d); /* d.X.rows x classes, softmax output */
    eval_result r;
    r.acc = matrix_topk_accuracy(d.y, pred, 1);
    double sum = 0;
    int i, j;
    for (i = 0; i < d.y.rows; ++i) {
        for (j = 0; j < d.y.cols; ++j) {
            if (d.y.vals[i][j]) sum -= log(fmax(pred.vals[i][j], 1e-30));
        }
    }
    r.loss = sum / d.y.rows;
    free_matrix(pred);
    return r;
}

/* ------------------------------------------------------------ main ---------------- */

/* Frees a list made by read_data_cfg: each kvp's key is the line its value points into. */
static void options_free(list *l)
{
    node *n;
    for (n = l->front; n; n = n->next) {
        kvp *p = (kvp *)n->val;
        free(p->key);
        free(p);
    }
    free_list(l);
}

int main(int argc, char **argv)
{
    options o = parse_options(argc, argv);
    /* under mpirun: one rank of a data-parallel run (README, "Training across
     * processes"); its GPU is -gpu + its local rank */
    o.gpu = kfac_dist_init(o.gpu);
    const int rank = kfac_dist_rank(), ranks = kfac_dist_size();

    file_require(o.datacfg, "data file");
    file_require(o.cfg, "cfg");
    if (o.weights) file_require(o.weights, "weights");
    list *dopts = read_data_cfg((char *)o.datacfg);
    int classes = option_find_int(dopts, "classes", 2);
    char *train_list = option_find_str(dopts, "train", "data/train.list");
    char *test_list = option_find_str(dopts, "valid", "data/test.list");
    char *label_list = option_find_str(dopts, "labels", "data/labels.list");
    file_require(label_list, "label list");
    list *llist = get_paths(label_list);
    if (llist->size != classes) {
        fprintf(stderr, "kfac_compare: %s has %d labels, %s says classes=%d\n",
                label_list, llist->size, o.datacfg, classes);
        exit(1);
    }
    char **labels = (char **)list_to_array(llist);
    free_list(llist);

#ifdef GPU
    gpu_index = o.gpu;
    if (gpu_index >= 0) cuda_set_device(gpu_index);
#endif
    srand(o.seed); /* weight initialization draws from rand() */
    network *net = load_network((char *)o.cfg, (char *)o.weights, o.weights != 0);
    task_kind task = task_of(net, o.cfg);
    if (o.has_lr) net->learning_rate = o.lr;
    if (o.iters < 0) o.iters = net->max_batches;
    if (net->policy == POLY && o.iters > net->max_batches) {
        fprintf(stderr, "kfac_compare: -iters %d exceeds %s max_batches=%d: the poly "
                "learning-rate policy is undefined past it\n", o.iters, o.cfg, net->max_batches);
        exit(1);
    }
    if (task == TASK_CLASSIFIER && net->outputs != classes) {
        fprintf(stderr, "kfac_compare: %s has %d outputs, %s says classes=%d\n",
                o.cfg, net->outputs, o.datacfg, classes);
        exit(1);
    }
    kfac_dist_start(net, o.cfg, o.weights, 1);

    FILE *tsv = 0;
    if (o.out && rank == 0) {
        tsv = fopen(o.out, "w");
        if (!tsv) {
            fprintf(stderr, "kfac_compare: cannot write %s\n", o.out);
            exit(1);
        }
        if (task == TASK_CLASSIFIER) {
            fprintf(tsv, "iter\ttrain_seconds\ttrain_loss\ttest_acc\ttest_loss\tfull_train_loss\n");
        } else {
            fprintf(tsv, "iter\ttrain_seconds\ttrain_loss\ttest_error\ttest_loss\t"
                    "full_train_error\tfull_train_loss\n");
        }
    }

    double t0 = what_time_is_it_now();
    data train = dataset_load(net, task, train_list, labels, classes, 0);
    data test = dataset_load(net, task, test_list, labels, classes, 1);
    fprintf(stderr, "kfac_compare: loaded %d train and %d test images in %.1f s\n",
            train.X.rows, test.X.rows, what_time_is_it_now() - t0);
    printf("cfg %s seed %d lr %g momentum %g decay %g batch %d x %d, %d updates%s\n",
           o.cfg, o.seed, net->learning_rate, net->momentum, net->decay, net->batch,
           net->subdivisions, o.iters, task == TASK_AUTOENCODER ? ", autoencoder" : "");
    if (ranks > 1) printf("%d ranks: each trains on its slice of every global batch of %d images\n", ranks,
                          ranks * net->batch * net->subdivisions);
    if (o.weights) printf("initial weights %s\n", o.weights);

    uint64_t rng = (uint64_t)(uint32_t)o.seed; /* batch generator, seeded like srand */
    double train_seconds = 0;
    double window_loss = 0; /* sum of per-image losses since the last evaluation */
    int window_n = 0;       /* updates in that sum */
    float avg_loss = -1;    /* Darknet's smoothed loss, as classifier train prints it */
    int diverged = 0;
    int it = 0;
    int next_eval = 0;      /* the update at which the next evaluation comes */
    int reached = 0;        /* -stop-below: the objective reached its bound */
    const layer *out = &net->layers[net->n - 1]; /* autoencoder: the [logistic] layer */
    for (;;) {
        if (it == next_eval || it == o.iters || diverged) {
            float tl = window_n ? window_loss / window_n : NAN;
            if (task == TASK_CLASSIFIER) {
                eval_result te = evaluate(net, test);
                float full = NAN;
                if (o.full_train) full = evaluate(net, train).loss;
                reached = o.has_stop_below && full <= o.stop_below;
                printf("iter %5d  %8.2f s  train_loss %.4f  avg %.4f  test_acc %.4f  test_loss %.4f",
                       it, train_seconds, tl, it ? avg_loss : NAN, te.acc, te.loss);
                if (o.full_train) printf("  full_train_loss %.4f", full);
                printf("\n");
                if (tsv) {
                    fprintf(tsv, "%d\t%.4f\t%.6f\t%.4f\t%.6f\t%.6f\n",
                            it, train_seconds, tl, te.acc, te.loss, full);
                }
            } else {
                ae_result te = evaluate_autoencoder(net, test);
                ae_result full = {NAN, NAN};
                if (o.full_train) full = evaluate_autoencoder(net, train);
                reached = o.has_stop_below && full.error <= o.stop_below;
                printf("iter %5d  %8.2f s  train_loss %.4f  avg %.4f  test_error %.4f  test_loss %.4f",
                       it, train_seconds, tl, it ? avg_loss : NAN, te.error, te.loss);
                if (o.full_train) printf("  full_train_error %.4f  full_train_loss %.4f", full.error, full.loss);
                printf("\n");
                if (tsv) {
                    fprintf(tsv, "%d\t%.4f\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\n",
                            it, train_seconds, tl, te.error, te.loss, full.error, full.loss);
                }
            }
            fflush(stdout);
            if (tsv) fflush(tsv);
            window_loss = 0;
            window_n = 0;
            next_eval = eval_next(it, o.eval, o.eval_growth);
        }
        if (it == o.iters || diverged) break;
        if (reached) {
            printf("objective %g reached at update %d: stopping\n", o.stop_below, it);
            break;
        }

        /* One update = subdivisions forward/backward passes, as train_network_sgd. */
        float loss = 0;
        int s;
        for (s = 0; s < net->subdivisions; ++s) {
            batch_fill_random(train, net->batch, rank, ranks, net->input, net->truth, &rng);
            double t = what_time_is_it_now();
            float pass = train_network_datum(net);
            train_seconds += what_time_is_it_now() - t;
            if (task == TASK_AUTOENCODER) {
                /* out->output: this pass's sigmoid outputs (GPU builds pull them to the
                 * host at the end of forward_network_gpu) */
                int n = net->batch * net->outputs;
                /* NaN outputs: the weights are NaN, which no later update repairs. */
                if (any_nan(out->output, n)) pass = NAN;
                else if (!isfinite(pass)) pass = xent_logistic_sum(out->output, net->truth, n);
            }
            loss += pass;
        }
        loss /= net->subdivisions * net->batch;
        /* the mean over all ranks' images: every rank takes the same decisions below */
        if (net->dist) loss = kfac_dist_loss(net, loss);
        ++it;
        if (avg_loss == -1) avg_loss = loss;
        avg_loss = avg_loss * .9 + loss * .1;
        window_loss += loss;
        ++window_n;
        /* An infinite loss is one image whose softmax output underflowed to 0 for its
         * label: the gradient (t - p) stays finite, so training goes on. NaN means the
         * network's outputs are NaN, which no later update repairs. */
        if (isnan(loss)) {
            fprintf(stderr, "kfac_compare: loss is nan at update %d: stopping\n", it);
            diverged = 1;
        }
    }

    if (it > 0) printf("mean seconds per update: %.4f\n", train_seconds / it);
    if (it > 0 && net->kfac) {
        double st, inv, pre;
        kfac_network_timing(net, &st, &inv, &pre);
        printf("K-FAC seconds per update: statistics %.4f, decompositions %.4f, preconditioning and step %.4f\n",
               st / it, inv / it, pre / it);
    }
    if (it > 0 && ranks > 1) {
        kfac_dist_times t;
        kfac_dist_timing(net, &t);
        printf("collectives seconds per update (%d ranks): waiting %.4f, gradients %.4f, statistics %.4f, "
               "decompositions from their owners %.4f, preconditioned gradients from their owners %.4f, loss and "
               "scalars %.4f; bytes per update %.0f\n", ranks, t.waiting / it, t.gradients / it, t.statistics / it,
               t.sharing / it, t.preconditioned / it, t.scalars / it, t.bytes / it);
    }
    if (tsv && fclose(tsv) != 0) {
        fprintf(stderr, "kfac_compare: error writing %s\n", o.out);
        exit(1);
    }
    if (o.weights_out) save_weights(net, (char *)o.weights_out);

    free_data(train);
    free_data(test);
    free_ptrs((void **)labels, classes);
    options_free(dopts);
    free_network(net);
    return 0;
}
