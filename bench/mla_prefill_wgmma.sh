#!/usr/bin/env bash
# The wgmma MLA prefill kernel (kernels/mla_prefill_wgmma.cuh, docs/perf/mla-prefill-wgmma.md) on the GPU machine.
#   bash bench/mla_prefill_wgmma.sh build [model]  (here) builds test_mla_prefill (and test_cuda_model with `model`) in
#                                           build-mla-prefill/ and packs them with bench/pack_carry.sh into
#                                           build-pkg-mlapf/carry.tar.xz (test_cuda_model adds 2.4 MB to the upload)
#   bash bench/mla_prefill_wgmma.sh device  (device machine, carry ["build-pkg-mlapf"]): the op tests (every kernel
#                                           variant), the benchmark (mma.sync baseline in the same run), memcheck and
#                                           racecheck of the small cases, test_cuda_model; logs in $OUT
set -u
mode=${1:-device}
if [[ $mode == build ]]; then
  set -e
  root="$(cd "$(dirname "$0")/.." && pwd)"
  cmake -S "$root" -B "$root/build-mla-prefill" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  bins=tests/ops/test_mla_prefill
  [[ ${2:-} == model ]] && bins="$bins tests/model/test_cuda_model"
  cmake --build "$root/build-mla-prefill" --target $(for x in $bins; do basename $x; done) -j2
  cd "$root" && PKG=build-pkg-mlapf bash bench/pack_carry.sh build-mla-prefill $bins
  exit 0
fi
source bench/lib_device.sh
PKG=build-pkg-mlapf device_setup
t=$b/test_mla_prefill
timeout "${TEST_S:-90}" $t --gtest_brief=1 >"$o/test.log" 2>&1
rc=$?
echo "test_mla_prefill rc $rc"
grep -E "^\[  (PASSED|FAILED)|Failure|Expected|Which is|rel_l2|Trace|mla_prefill_wgmma|wrote|poison" "$o/test.log" | head -40
[[ $rc == 124 ]] && { echo "tests timed out: stopping"; exit 1; }
timeout "${PERF_S:-90}" $t --gtest_also_run_disabled_tests --gtest_filter='*Perf*' >"$o/perf.log" 2>&1
echo "perf rc $?"
grep -vE "^\[ *(RUN|OK|==|--)|^$|Note: Google" "$o/perf.log"
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
timeout "${MEMCHECK_S:-80}" $cs --tool memcheck --error-exitcode 3 $t --gtest_brief=1 \
  --gtest_filter='*FewHeads*:*Empty*:*CachedPrefixes*' >"$o/memcheck.log" 2>&1
echo "memcheck rc $?: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' "$o/memcheck.log" | tr '\n' ' ')"
timeout "${RACECHECK_S:-80}" $cs --tool racecheck --error-exitcode 3 $t --gtest_brief=1 \
  --gtest_filter='*FewHeads*:*Empty*' >"$o/racecheck.log" 2>&1
echo "racecheck rc $?: $(grep -E 'RACECHECK SUMMARY|PASSED|FAILED' "$o/racecheck.log" | tr '\n' ' ')"
grep -m5 -E "Race|Hazard|hazard" "$o/racecheck.log"
[[ -x $b/test_cuda_model ]] || { echo "test_cuda_model not carried"; exit 0; }
timeout "${MODEL_S:-60}" $b/test_cuda_model --gtest_brief=1 >"$o/test_cuda_model.log" 2>&1
echo "test_cuda_model rc $?: $(grep -E '^\[  (PASSED|FAILED)' "$o/test_cuda_model.log" | tr '\n' ' ')"
grep -m10 -E "Failure|FAILED" "$o/test_cuda_model.log"
