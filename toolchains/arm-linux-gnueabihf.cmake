# Cross toolchain for 32-bit ARMv7 hard-float (armhf): Debian's arm-linux-gnueabihf-g++, a sysroot in
# EDGECQRS_SYSROOT, tests under qemu-arm. See docs/cross-compiling.md and cross-common.cmake.
#   cmake --preset cross-armhf ...   or   cmake -DCMAKE_TOOLCHAIN_FILE=toolchains/arm-linux-gnueabihf.cmake -DEDGECQRS_SYSROOT=<dir> ...
set(EDGECQRS_CROSS_TRIPLE arm-linux-gnueabihf)
set(EDGECQRS_CROSS_PROCESSOR armv7l)
set(EDGECQRS_CROSS_QEMU qemu-arm)
include(${CMAKE_CURRENT_LIST_DIR}/cross-common.cmake)
