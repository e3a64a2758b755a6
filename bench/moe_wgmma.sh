#!/usr/bin/env bash
# The wgmma grouped MoE decode GEMM (src/backend/cuda/moe_gemm_wgmma.h, docs/perf/kernels.md) on the GPU machine.
#   bash bench/moe_wgmma.sh build   (here) builds test_moe_gemm_wgmma in build-moe-wgmma/ and packs it, stripped,
#                                   with the .so files the device image lacks into build-pkg-moe/carry.tar.xz (~1 MB)
#   bash bench/moe_wgmma.sh device  (device machine, carry ["build-pkg-moe"]; ~35 s warm): the tests, then the
#                                   benchmark (old grouped decode kernel and the copy rate in the same run), then
#                                   compute-sanitizer memcheck + racecheck of the edge cases; logs in $OUT
set -u
mode=${1:-device}
bins="test_moe_gemm_wgmma"
if [[ $mode == build ]]; then
  set -e
  root="$(cd "$(dirname "$0")/.." && pwd)"
  cmake -S "$root" -B "$root/build-moe-wgmma" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$root/build-moe-wgmma" --target $bins -j2
  pkg="$root/build-pkg-moe"
  rm -rf "$pkg" && mkdir -p "$pkg/moe/bin" "$pkg/moe/rt"
  for t in $bins; do
    exe="$(find "$root/build-moe-wgmma/tests" -name "$t" -type f | head -1)"
    cp "$exe" "$pkg/moe/bin/" && strip "$pkg/moe/bin/$t"
    # The .so files the device image lacks (as bench/pack_carry.sh: all but the C/C++ runtime and CUDA's).
    ldd "$exe" | awk '/=> \// {print $3}' | while read -r so; do
      case "$(basename "$so")" in
        libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | libresolv.so* | libstdc++.so* | libgcc_s.so* | \
          libcublas* | libcudart* | libnccl* | libcuda.so*) ;;
        *) cp -n -L "$so" "$pkg/moe/rt/" ;;
      esac
    done
  done
  XZ_OPT=-9e tar -C "$pkg" -cJf "$pkg/carry.tar.xz" moe && rm -rf "$pkg/moe"
  ls -la "$pkg"
  exit 0
fi
o="${OUT:-out}"
mkdir -p "$o" /tmp/moe
tar -xJf build-pkg-moe/carry.tar.xz -C /tmp/moe
export LD_LIBRARY_PATH="/tmp/moe/moe/rt:${LD_LIBRARY_PATH:-}"
f="$(find / -name 'libcublasLt.so.13*' -not -path '/proc/*' 2>/dev/null | head -1 || true)"
[[ -n "$f" ]] && export LD_LIBRARY_PATH="$(dirname "$f"):$LD_LIBRARY_PATH"
b=/tmp/moe/moe/bin
t=$b/test_moe_gemm_wgmma
export K2_SOURCE_DIR="$PWD" CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$o/gpu.txt"; date -u | tee -a "$o/gpu.txt"
timeout "${TEST_S:-100}" $t --gtest_brief=1 >"$o/test.log" 2>&1; echo "test_moe_gemm_wgmma rc $?"
grep -E "^\[  (PASSED|FAILED)|Failure|Expected|Which is|expert [0-9]+ \(|rel_l2|not bitwise|poison" "$o/test.log" | head -30
timeout "${PERF_S:-120}" $t --gtest_also_run_disabled_tests --gtest_filter='*Perf*' >"$o/perf.log" 2>&1
echo "perf rc $?"; grep -vE "^\[|^$|Note: Google" "$o/perf.log"
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || find / -name compute-sanitizer -type f 2>/dev/null | head -1)
edge='*EdgeRows*:*SmallProblems*:*NoRows*:*GraphCapture*'
timeout "${MEMCHECK_S:-75}" $cs --tool memcheck $t --gtest_filter="$edge" >"$o/memcheck.log" 2>&1
echo "memcheck rc $?"; tail -2 "$o/memcheck.log"
timeout "${RACECHECK_S:-75}" $cs --tool racecheck $t --gtest_filter='*SmallProblems*:*NoRows*' >"$o/racecheck.log" 2>&1
echo "racecheck rc $?"; tail -3 "$o/racecheck.log"
