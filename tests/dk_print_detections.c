/* dk_print_detections PREFIX NAME...: writes result files as `darknet detector valid`
 * does, through Darknet's own print_detector_detections (examples/detector.c), so that
 * tests/test_map.sh checks tools/kfac_map.py against the code that writes its input.
 *
 * One file per NAME: PREFIX<NAME>.txt (class j is the j-th NAME).  Detections come
 * from stdin, one a line:
 *
 *     ID W H CLASS SCORE X Y BW BH
 *
 * image id, image width and height, class, score, and the box's center and size in
 * pixels of the image: dets[i].bbox as validate_detector gets it from
 * get_network_boxes(..., relative = 0).  Exit status 1 on a bad line or file. */
#include <stdio.h>
#include <stdlib.h>
#include "darknet.h"

void print_detector_detections(FILE **fps, char *id, detection *dets, int total,
                               int classes, int w, int h);

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s PREFIX NAME...\n", argv[0]);
        return 1;
    }
    int classes = argc - 2;
    FILE **fps = calloc(classes, sizeof(FILE *));
    float *prob = calloc(classes, sizeof(float));
    if (!fps || !prob) {
        fprintf(stderr, "dk_print_detections: out of memory\n");
        return 1;
    }
    int j;
    for (j = 0; j < classes; ++j) {
        char path[4096];
        snprintf(path, sizeof path, "%s%s.txt", argv[1], argv[j + 2]);
        fps[j] = fopen(path, "w");
        if (!fps[j]) {
            perror(path);
            return 1;
        }
    }
    char id[256];
    int w, h, k, line = 0, n;
    float score, x, y, bw, bh;
    while ((n = scanf("%255s %d %d %d %f %f %f %f %f", id, &w, &h, &k, &score,
                      &x, &y, &bw, &bh)) == 9) {
        ++line;
        if (k < 0 || k >= classes) {
            fprintf(stderr, "dk_print_detections: line %d: class %d out of range\n", line, k);
            return 1;
        }
        detection d = {0};
        d.bbox.x = x;
        d.bbox.y = y;
        d.bbox.w = bw;
        d.bbox.h = bh;
        d.classes = classes;
        for (j = 0; j < classes; ++j) prob[j] = 0;
        prob[k] = score;
        d.prob = prob;
        print_detector_detections(fps, id, &d, 1, classes, w, h);
    }
    if (n != EOF) {
        fprintf(stderr, "dk_print_detections: line %d: expected ID W H CLASS SCORE X Y BW BH\n",
                line + 1);
        return 1;
    }
    for (j = 0; j < classes; ++j) {
        if (fclose(fps[j]) != 0) {
            perror("dk_print_detections: fclose");
            return 1;
        }
    }
    free(fps);
    free(prob);
    return 0;
}
