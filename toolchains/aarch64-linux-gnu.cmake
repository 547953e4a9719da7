# Cross toolchain for 64-bit ARM (arm64): Debian's aarch64-linux-gnu-g++, a sysroot folder in
# EDGECQRS_SYSROOT, tests under qemu-aarch64. See docs/cross-compiling.md and cross-common.cmake.
#   cmake --preset cross-aarch64 ...   or   cmake -DCMAKE_TOOLCHAIN_FILE=toolchains/aarch64-linux-gnu.cmake -DEDGECQRS_SYSROOT=<dir> ...
set(EDGECQRS_CROSS_TRIPLE aarch64-linux-gnu)
set(EDGECQRS_CROSS_PROCESSOR aarch64)
set(EDGECQRS_CROSS_QEMU qemu-aarch64)
include(${CMAKE_CURRENT_LIST_DIR}/cross-common.cmake)
