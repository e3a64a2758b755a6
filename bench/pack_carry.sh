#!/usr/bin/env bash
# Packs binaries of a local CUDA build for a device call: $PKG/carry.tar.xz (PKG defaults to build-pkg) holding
# build-lead-carry/bin (the stripped binaries) and build-lead-carry/rt (their .so files that the device image lacks:
# everything ldd finds except the C/C++ runtime and the CUDA libraries, which the image has). Carry ["$PKG"];
# bench/lib_device.sh's device_setup (with the same PKG) unpacks it. Each packer stages in its own folder, so that
# helpers packing side by side do not mix binaries.
# Usage: [PKG=build-pkg-x] bench/pack_carry.sh BUILD_DIR k2 tests/ops/test_moe_ops ...
set -euo pipefail
build=$1
shift
pkg=${PKG:-build-pkg}
stage="$pkg/stage/build-lead-carry"
rm -rf "$pkg" && mkdir -p "$stage/bin" "$stage/rt"
for target in "$@"; do
  cp "$build/$target" "$stage/bin/"
  strip "$stage/bin/$(basename "$target")"
  ldd "$build/$target" | awk '/=> \// {print $3}' | while read -r so; do
    case "$(basename "$so")" in
      libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | libresolv.so* | libstdc++.so* | libgcc_s.so* | \
        libcublas* | libcudart* | libnccl* | libcuda.so*) ;;
      *) cp -n -L "$so" "$stage/rt/" ;;
    esac
  done
done
XZ_OPT=-9e tar -C "$pkg/stage" -cJf "$pkg/carry.tar.xz" build-lead-carry  # the upload limit is tight
rm -rf "$pkg/stage"
du -h "$pkg/carry.tar.xz"
