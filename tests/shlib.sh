# Sourced by the shell tests (tests/test_*.sh): the check lines tests/run.sh counts.
#
#   ok NAME                          prints `ok NAME`
#   fail NAME REASON                 prints `FAIL NAME: REASON`, counts it in $nfail
#   check NAME REASON COMMAND...     ok when COMMAND succeeds, else fail with REASON
#   has FILE TEXT                    FILE contains TEXT (a fixed string)
#
# A test ends with `[ $nfail -eq 0 ]`, so that its exit status says it too.
nfail=0
ok() { echo "ok $1"; }
fail() { echo "FAIL $1: $2"; nfail=$((nfail + 1)); }
check() {
    local name=$1 why=$2
    shift 2
    if "$@"; then ok "$name"; else fail "$name" "$why"; fi
}
has() { grep -qF -- "$2" "$1"; }
