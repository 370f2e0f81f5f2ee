/* dk_load_detection CLASSES IMAGE...: what Darknet's detector training reads for each
 * image, printed for tests/test_digits_detect.sh to compare with what
 * tools/digits_detect.py meant to write.
 *
 * Per image, the same two calls load_data_detection makes (src/data.c), without the
 * augmentation:
 *   load_image_color(path, 0, 0)     the image through stb_image, as 3 channels:
 *       image PATH W H C
 *       channel K V V V ...          each pixel as round(255 * value), row major
 *   fill_truth_detection(...)        the label file Darknet derives from the path,
 *                                    with no shift, scale or flip (dx = dy = 0,
 *                                    sx = sy = 1, flip = 0), in Darknet's (random) order:
 *       box CLASS X Y W H
 * Darknet itself stops the program when an image or label file cannot be read. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "darknet.h"

#define MAX_BOXES 90  /* the yolo layer's default max_boxes */

/* src/data.c, not declared in Darknet's headers */
void fill_truth_detection(char *path, int num_boxes, float *truth, int classes, int flip,
                          float dx, float dy, float sx, float sy);

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s CLASSES IMAGE...\n", argv[0]);
        return 1;
    }
    int classes = atoi(argv[1]);
    int i, k, j;
    for (i = 2; i < argc; ++i) {
        image im = load_image_color(argv[i], 0, 0);
        printf("image %s %d %d %d\n", argv[i], im.w, im.h, im.c);
        for (k = 0; k < im.c; ++k) {
            printf("channel %d", k);
            for (j = 0; j < im.w * im.h; ++j)
                printf(" %d", (int)lrintf(255.f * im.data[k * im.w * im.h + j]));
            printf("\n");
        }
        free_image(im);
        float truth[5 * MAX_BOXES] = {0};  /* MAX_BOXES x (x, y, w, h, class) */
        fill_truth_detection(argv[i], MAX_BOXES, truth, classes, 0, 0, 0, 1, 1);
        for (j = 0; j < MAX_BOXES && truth[5 * j + 2] > 0; ++j)
            printf("box %d %.7f %.7f %.7f %.7f\n", (int)truth[5 * j + 4], truth[5 * j],
                   truth[5 * j + 1], truth[5 * j + 2], truth[5 * j + 3]);
    }
    return 0;
}
