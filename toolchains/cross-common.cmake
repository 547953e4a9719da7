# Shared body of the edgecqrs cross toolchain files (toolchains/<triple>.cmake set the target and
# include this). Compiler: Debian's <triple>-gcc/g++ (or any prefix: EDGECQRS_CROSS_PREFIX).
# Libraries: a sysroot folder, EDGECQRS_SYSROOT, searched ONLY for libraries, headers, packages
# and pkg-config files, never for programs. Two kinds of sysroot work:
#   - a library-only folder (scripts/sysroot: the target's Debian -dev packages unpacked), used
#     beside the cross compiler's own C library in /usr/<triple>;
#   - a complete sysroot with its own C library (Yocto SDK, Buildroot staging): detected by
#     <sysroot>/usr/include/stdio.h and passed to the compiler as CMAKE_SYSROOT.
# Tests run under qemu-user through CMAKE_CROSSCOMPILING_EMULATOR, so ctest and doctest's test
# discovery work as on the host.
#
# Inputs (set by the including file): EDGECQRS_CROSS_TRIPLE, EDGECQRS_CROSS_PROCESSOR, EDGECQRS_CROSS_QEMU.
# Cache variables (all overridable with -D):
#   EDGECQRS_SYSROOT        the sysroot folder (default: env EDGECQRS_SYSROOT, else <source>/.sysroot/<triple>)
#   EDGECQRS_CROSS_PREFIX   compiler prefix (default "<triple>-")
#   EDGECQRS_QEMU           the emulator program (default qemu-<arch>; empty: no emulator)
#   EDGECQRS_QEMU_LD_PREFIX where qemu finds the target's loader and libc (default: the complete
#                           sysroot, else /usr/<triple>, where Debian's cross libc lives)

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR ${EDGECQRS_CROSS_PROCESSOR})
set(CMAKE_LIBRARY_ARCHITECTURE ${EDGECQRS_CROSS_TRIPLE})

# try_compile projects re-read this file: hand them the same choices.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES
     EDGECQRS_SYSROOT EDGECQRS_CROSS_PREFIX EDGECQRS_QEMU EDGECQRS_QEMU_LD_PREFIX)
list(REMOVE_DUPLICATES CMAKE_TRY_COMPILE_PLATFORM_VARIABLES)

if(NOT DEFINED EDGECQRS_SYSROOT)
  if(DEFINED ENV{EDGECQRS_SYSROOT} AND NOT "$ENV{EDGECQRS_SYSROOT}" STREQUAL "")
    set(_edgecqrs_default_sysroot "$ENV{EDGECQRS_SYSROOT}")
  else()
    get_filename_component(_edgecqrs_default_sysroot
      "${CMAKE_CURRENT_LIST_DIR}/../.sysroot/${EDGECQRS_CROSS_TRIPLE}" ABSOLUTE)
  endif()
endif()
set(EDGECQRS_SYSROOT "${_edgecqrs_default_sysroot}" CACHE PATH
    "Target sysroot: libraries and headers for ${EDGECQRS_CROSS_TRIPLE} (scripts/sysroot makes one)")
set(EDGECQRS_CROSS_PREFIX "${EDGECQRS_CROSS_TRIPLE}-" CACHE STRING
    "Cross compiler prefix: <prefix>gcc and <prefix>g++")
set(EDGECQRS_QEMU "${EDGECQRS_CROSS_QEMU}" CACHE STRING
    "qemu-user program that runs target binaries (empty: tests are built but not run)")

if(NOT IS_DIRECTORY "${EDGECQRS_SYSROOT}")
  message(FATAL_ERROR "edgecqrs: EDGECQRS_SYSROOT='${EDGECQRS_SYSROOT}' is not a folder. "
    "Make one with 'scripts/sysroot ${EDGECQRS_CROSS_TRIPLE}', or pass -DEDGECQRS_SYSROOT=<your SDK's sysroot>.")
endif()

if(NOT CMAKE_C_COMPILER)
  set(CMAKE_C_COMPILER ${EDGECQRS_CROSS_PREFIX}gcc)
endif()
if(NOT CMAKE_CXX_COMPILER)
  set(CMAKE_CXX_COMPILER ${EDGECQRS_CROSS_PREFIX}g++)
endif()

set(_edgecqrs_s "${EDGECQRS_SYSROOT}")
set(_edgecqrs_t "${EDGECQRS_CROSS_TRIPLE}")
if(EXISTS "${_edgecqrs_s}/usr/include/stdio.h")
  # A complete sysroot: the compiler takes its C library and headers from it.
  set(CMAKE_SYSROOT "${_edgecqrs_s}")
  set(_edgecqrs_ld_prefix "${_edgecqrs_s}")
else()
  set(_edgecqrs_ld_prefix "/usr/${_edgecqrs_t}")
  # Debian puts a few arch-specific headers (openssl/configuration.h) under usr/include/<triple>,
  # which only a compiler whose sysroot is this folder would search on its own.
  if(IS_DIRECTORY "${_edgecqrs_s}/usr/include/${_edgecqrs_t}")
    foreach(_edgecqrs_lang C CXX)
      list(APPEND CMAKE_${_edgecqrs_lang}_STANDARD_INCLUDE_DIRECTORIES "${_edgecqrs_s}/usr/include/${_edgecqrs_t}")
      list(REMOVE_DUPLICATES CMAKE_${_edgecqrs_lang}_STANDARD_INCLUDE_DIRECTORIES)
    endforeach()
  endif()
endif()
set(EDGECQRS_QEMU_LD_PREFIX "${_edgecqrs_ld_prefix}" CACHE PATH
    "Where qemu-user finds the target's dynamic loader and C library (qemu -L)")

# Search the sysroot only for what the target links; programs (pkg-config, python) stay the host's.
list(APPEND CMAKE_FIND_ROOT_PATH "${_edgecqrs_s}")
list(REMOVE_DUPLICATES CMAKE_FIND_ROOT_PATH)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# pkg-config (libcbor) must read the sysroot's .pc files and prefix their paths with it; without
# this it returns the host's libcbor and the link fails.
set(_edgecqrs_libdirs
    "${_edgecqrs_s}/usr/lib/${_edgecqrs_t}" "${_edgecqrs_s}/lib/${_edgecqrs_t}"
    "${_edgecqrs_s}/usr/lib" "${_edgecqrs_s}/lib")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${_edgecqrs_s}")
set(ENV{PKG_CONFIG_LIBDIR}
    "${_edgecqrs_s}/usr/lib/${_edgecqrs_t}/pkgconfig:${_edgecqrs_s}/usr/lib/pkgconfig:${_edgecqrs_s}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

# The linker resolves the dependencies of shared libraries (libpaho-mqtt3as -> libssl) in the
# sysroot too, not in the host's /usr/lib.
string(REPLACE ";" ":" _edgecqrs_rpath_link "${_edgecqrs_libdirs}")
# (CMake reads a toolchain file several times: append each setting once.)
foreach(_edgecqrs_kind EXE SHARED MODULE)
  if(NOT CMAKE_${_edgecqrs_kind}_LINKER_FLAGS_INIT MATCHES "-rpath-link,")
    string(APPEND CMAKE_${_edgecqrs_kind}_LINKER_FLAGS_INIT " -Wl,-rpath-link,${_edgecqrs_rpath_link}")
  endif()
endforeach()

# qemu-user runs the target's binaries: -L finds the loader and libc, LD_LIBRARY_PATH the
# sysroot's libraries (SQLite, libcbor, Paho, libssl).
if(EDGECQRS_QEMU)
  set(CMAKE_CROSSCOMPILING_EMULATOR
      "${EDGECQRS_QEMU};-L;${EDGECQRS_QEMU_LD_PREFIX};-E;LD_LIBRARY_PATH=${_edgecqrs_rpath_link}")
endif()
