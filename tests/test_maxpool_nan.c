/* test_maxpool_nan: patches/0023.  A max-pool window whose values are all NaN (a
 * diverged net, a NaN batch) or all -inf has no maximum: Darknet's forward leaves its
 * index at -1, and its CPU backward added that window's gradient at the input delta's
 * index -1, one float before the buffer.  Here a 4x4 input, 2x2 windows of stride 2:
 * one window all NaN, one all -inf, two ordinary; the input's delta sits in a larger
 * buffer between guard values.  The guards must be untouched (they were not: the NaN
 * and -inf windows' gradients landed on the guard before the buffer), and the
 * ordinary windows' gradients must reach their maxima, the rest of the delta zero. */
#include "kt.h"
#include "maxpool_layer.h"

int main(void)
{
    maxpool_layer l = make_maxpool_layer(1, 4, 4, 1, 2, 2, 0);
    float input[16], buf[16 + 2];
    int i;
    for (i = 0; i < 16; ++i) input[i] = (float)i; /* the maximum of each window is its last element */
    /* window (0, 0): elements 0, 1, 4, 5 all NaN; window (0, 1): 2, 3, 6, 7 all -inf */
    input[0] = input[1] = input[4] = input[5] = NAN;
    input[2] = input[3] = input[6] = input[7] = -INFINITY;
    network net = {0};
    net.input = input;
    forward_maxpool_layer(l, net);
    for (i = 0; i < 4; ++i) l.delta[i] = 1.0f + i; /* the gradient of each window */
    const float guard = 12345.0f;
    buf[0] = buf[17] = guard;
    for (i = 1; i <= 16; ++i) buf[i] = 0;
    net.delta = buf + 1;
    backward_maxpool_layer(l, net);
    kt_check("maxpool_no_max_writes_nothing_outside", buf[0] == guard && buf[17] == guard,
             "guards %g %g (expected %g): a window without a maximum wrote outside the delta", buf[0], buf[17], guard);
    /* windows (1, 0) and (1, 1): maxima at elements 13 and 15 */
    int rest_zero = 1;
    for (i = 0; i < 16; ++i)
        if (i != 13 && i != 15) rest_zero &= net.delta[i] == 0;
    kt_check("maxpool_ordinary_windows_reach_their_maxima", net.delta[13] == 3.0f && net.delta[15] == 4.0f && rest_zero,
             "delta[13] %g (expected 3), delta[15] %g (expected 4), others zero %d", net.delta[13], net.delta[15], rest_zero);
    free_layer(l);
    return kt_exit();
}
