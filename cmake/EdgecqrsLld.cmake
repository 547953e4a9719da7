# EDGECQRS_LLD=ON: link every edgecqrs target with LLVM's lld instead of the toolchain's linker.
#
# Why (issue 10, size budget): GNU ld 2.40 aligns the end of the RELRO segment to the maximum page
# size and pads the file to get there. On aarch64 that is 64 KiB, so every shared library's file
# grows to a multiple of 64 KiB (libedgecqrs_master.so: 117 KB of code and data in a 134 KB file).
# lld keeps the same 64 KiB segment alignment (the libraries still load on 64 KiB-page kernels) and
# the same PT_GNU_RELRO, but places segments by address instead of padding the file. Only the
# relro segment's last partial page stays writable on a 64 KiB-page kernel, as with GNU ld before
# 2.39; on 4 KiB pages it is protected whole. lld 14 (Debian 12) links aarch64, armhf and x86-64;
# it has no s390x support.
#
# GCC finds a linker named ld.lld only on its -B path, so the build tree gets a private folder
# holding an ld.lld link; Clang finds it itself.
find_program(EDGECQRS_LD_LLD NAMES ld.lld ld.lld-14 ld.lld-15 ld.lld-16
  DOC "LLVM lld, used when EDGECQRS_LLD is ON")
if(NOT EDGECQRS_LD_LLD)
  message(FATAL_ERROR "EDGECQRS_LLD=ON needs LLVM's linker ld.lld: apt-get install lld (or set EDGECQRS_LLD=OFF)")
endif()
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  set(_edgecqrs_lld_dir ${CMAKE_BINARY_DIR}/edgecqrs-lld)
  file(MAKE_DIRECTORY ${_edgecqrs_lld_dir})
  file(CREATE_LINK ${EDGECQRS_LD_LLD} ${_edgecqrs_lld_dir}/ld.lld SYMBOLIC)
  add_link_options(-B${_edgecqrs_lld_dir} -fuse-ld=lld)
elseif(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  add_link_options(-fuse-ld=lld)
else()
  message(FATAL_ERROR "EDGECQRS_LLD=ON supports GCC and Clang, not ${CMAKE_CXX_COMPILER_ID}")
endif()
message(STATUS "edgecqrs: linking with ${EDGECQRS_LD_LLD}")
