/* dk_train_detector: Darknet's own train_detector (examples/detector.c, compiled into
 * this program) with every batch it trains on inspected, for tests/test_detect_train.sh.
 *
 *   dk_train_detector make DIR        writes DIR/images/img<K>.png (K = 0..3) and their
 *                                     labels DIR/labels/img<K>.txt, DIR/train.txt and
 *                                     DIR/det.data (backup DIR/backup)
 *   dk_train_detector train DATA CFG  runs train_detector(DATA, CFG) from scratch and
 *                                     prints, after the last update:
 *       images N flipped F inconsistent I
 *
 * Each image (32x32, 3 channels) is dark (0.2) with one bright (1.0) block in its left
 * quarter, and its label holds that block's box, center x = 0.25.  The program is linked
 * with -Wl,--wrap=train_network, so every `train_network(net, d)` call of
 * train_detector lands in __wrap_train_network below first, which looks at each image
 * of the batch: it counts as flipped when its truth box's center x is right of the
 * middle, and as inconsistent when the image's bright half (left or right) disagrees
 * with its box's side (a flip applied to the pixels and not to the boxes, or the
 * reverse).  With the cfg's jitter=0, hue=0, saturation=1, exposure=1 the loader does
 * nothing else to the images.
 *
 * Exit status 0; 1 on bad usage or a file that cannot be written (Darknet itself exits
 * on files it cannot read). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "darknet.h"

#define SIDE 32     /* image width and height */
#define IMAGES 4    /* images in the list */

/* examples/detector.c, with patches/0017's save_interval (0: Darknet's rule) */
void train_detector(char *datacfg, char *cfgfile, char *weightfile, int *gpus, int ngpus,
                    int clear, int save_interval);
float __real_train_network(network *net, data d);

static int n_images;       /* images seen in all batches */
static int n_flipped;      /* of them, with the box on the right */
static int n_inconsistent; /* of them, pixels and box on different sides */

/* Counts the batch d (d.X: rows x (3 x SIDE x SIDE), CHW; d.y: rows x (5 x boxes), each
 * box x, y, w, h, class) and trains on it as train_detector asked. */
float __wrap_train_network(network *net, data d)
{
    int i, x, y;
    for (i = 0; i < d.X.rows; ++i) {
        const float *im = d.X.vals[i]; /* channel 0: SIDE x SIDE, row major */
        double left = 0, right = 0;
        for (y = 0; y < SIDE; ++y)
            for (x = 0; x < SIDE; ++x)
                *(x < SIDE / 2 ? &left : &right) += im[y * SIDE + x];
        int box_right = d.y.vals[i][0] > 0.5f;
        int pixels_right = right > left;
        ++n_images;
        n_flipped += box_right;
        n_inconsistent += box_right != pixels_right;
    }
    return __real_train_network(net, d);
}

/* Writes the data set under dir; returns 0, or 1 with a message. */
static int make_set(const char *dir)
{
    char path[1024], cmd[1200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/images' '%s/labels' '%s/backup'", dir, dir, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "dk_train_detector: cannot make folders under %s\n", dir);
        return 1;
    }
    snprintf(path, sizeof path, "%s/train.txt", dir);
    FILE *list = fopen(path, "w");
    if (!list) {
        fprintf(stderr, "dk_train_detector: cannot write %s\n", path);
        return 1;
    }
    int k, x, y, c;
    for (k = 0; k < IMAGES; ++k) {
        image im = make_image(SIDE, SIDE, 3);
        for (c = 0; c < 3; ++c)
            for (y = 0; y < SIDE; ++y)
                for (x = 0; x < SIDE; ++x)
                    /* the block: x 4..11, y 8..23 (a box of center 8/32, 16/32, size 8 x 16),
                     * one row lower per image so that the images differ */
                    im.data[(c * SIDE + y) * SIDE + x] =
                        (x >= 4 && x < 12 && y >= 8 + k && y < 24 + k) ? 1.0f : 0.2f;
        snprintf(path, sizeof path, "%s/images/img%d", dir, k);
        save_image_options(im, path, PNG, 0); /* appends .png */
        free_image(im);
        fprintf(list, "%s/images/img%d.png\n", dir, k);
        snprintf(path, sizeof path, "%s/labels/img%d.txt", dir, k);
        FILE *f = fopen(path, "w");
        if (!f) {
            fprintf(stderr, "dk_train_detector: cannot write %s\n", path);
            return 1;
        }
        fprintf(f, "0 0.25 %.6f 0.25 0.5\n", (16.0 + k) / SIDE);
        fclose(f);
    }
    fclose(list);
    snprintf(path, sizeof path, "%s/det.data", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "dk_train_detector: cannot write %s\n", path);
        return 1;
    }
    fprintf(f, "classes=1\ntrain=%s/train.txt\nbackup=%s/backup\n", dir, dir);
    fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "make")) return make_set(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "train")) {
        int gpu = -1;
        train_detector(argv[2], argv[3], 0, &gpu, 1, 0, 0);
        printf("images %d flipped %d inconsistent %d\n", n_images, n_flipped, n_inconsistent);
        return 0;
    }
    fprintf(stderr, "usage: %s make DIR | train DATA CFG\n", argv[0]);
    return 1;
}
