#!/usr/bin/env bash
# test_map.sh <darknet build folder>: tools/kfac_map.py (mAP of `darknet detector
# valid` results) against hand-computed cases (tests/map_cases.py, each expected value
# derived there), among them one whose result files Darknet's own
# print_detector_detections writes (tests/dk_print_detections.c, built here against
# the build's examples/detector.c and libdarknet.a).  Work files in build/tests/map/.
set -u
DK=${1:?usage: tests/test_map.sh <darknet build folder>}
W=build/tests/map
mkdir -p "$W"
HELPER=()
if [ -f "$DK/examples/detector.c" ] && [ -f "$DK/libdarknet.a" ]; then
    if ${CC:-cc} -O1 ${KFAC_TEST_CFLAGS:-} -I"$DK/include" -I"$DK/src" -Idarknet-kfac tests/dk_print_detections.c "$DK/examples/detector.c" \
        "$DK/libdarknet.a" -lopenblas -lm -pthread -o "$W/dk_print_detections" \
        >"$W/helper.build.log" 2>&1; then
        HELPER=(--darknet-helper "$W/dk_print_detections")
    else
        echo "FAIL map_darknet_helper_builds: see $W/helper.build.log"
    fi
else
    echo "SKIP map_reads_darknet_print_detector_detections: no $DK/examples/detector.c"
fi
python3 tests/map_cases.py "$W/cases" "${HELPER[@]}"
