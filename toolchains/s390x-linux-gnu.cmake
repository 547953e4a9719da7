# Cross toolchain for IBM Z (s390x, big-endian: proves the wire format has no byte-order bug):
# Debian's s390x-linux-gnu-g++, a sysroot in EDGECQRS_SYSROOT, tests under qemu-s390x. See cross-common.cmake.
#   cmake --preset cross-s390x ...   or   cmake -DCMAKE_TOOLCHAIN_FILE=toolchains/s390x-linux-gnu.cmake -DEDGECQRS_SYSROOT=<dir> ...
set(EDGECQRS_CROSS_TRIPLE s390x-linux-gnu)
set(EDGECQRS_CROSS_PROCESSOR s390x)
set(EDGECQRS_CROSS_QEMU qemu-s390x)
include(${CMAKE_CURRENT_LIST_DIR}/cross-common.cmake)
