#!/usr/bin/env bash
# Packs binaries of a local CUDA build for a device call: build-pkg/carry.tar.xz holding build-lead-carry/bin (the
# stripped binaries) and build-lead-carry/rt (their .so files that the device image lacks: everything ldd finds
# except the C/C++ runtime and the CUDA libraries, which the image has). Carry ["build-pkg"]; bench/lib_device.sh's
# device_setup unpacks it. Usage: bench/pack_carry.sh BUILD_DIR k2 tests/ops/test_moe_ops ...
set -euo pipefail
build=$1
shift
rm -rf build-lead-carry && mkdir -p build-lead-carry/bin build-lead-carry/rt build-pkg
for target in "$@"; do
  cp "$build/$target" build-lead-carry/bin/
  strip "build-lead-carry/bin/$(basename "$target")"
  ldd "$build/$target" | awk '/=> \// {print $3}' | while read -r so; do
    case "$(basename "$so")" in
      libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | libresolv.so* | libstdc++.so* | libgcc_s.so* | \
        libcublas* | libcudart* | libnccl* | libcuda.so*) ;;
      *) cp -n "$so" build-lead-carry/rt/ ;;
    esac
  done
done
XZ_OPT=-9e tar -cJf build-pkg/carry.tar.xz build-lead-carry  # the upload limit is tight
du -h build-pkg/carry.tar.xz
