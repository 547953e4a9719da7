# edgecqrs_set_warnings(target): our warning flags, PRIVATE so they never leak into a parent project.
function(edgecqrs_set_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wshadow)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_SYSTEM_PROCESSOR MATCHES "arm")
      target_compile_options(${target} PRIVATE -Wno-psabi)
    endif()
    if(EDGECQRS_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
    if(EDGECQRS_SANITIZE)
      target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
      target_link_options(${target} PRIVATE -fsanitize=address,undefined)
    endif()
  endif()
endfunction()

# edgecqrs_hide_internals(target): hidden visibility, so a shared library exports only what its
# public headers mark EDGECQRS_API (edgecqrs/export.hpp); EDGECQRS_SHARED turns the mark on for the
# library and for whoever links it when the library is shared. A shared library also links with
# cmake/edgecqrs.map, which keeps libstdc++'s default-visibility template instantiations local.
set(EDGECQRS_VERSION_SCRIPT ${CMAKE_CURRENT_LIST_DIR}/edgecqrs.map)
function(edgecqrs_hide_internals target)
  set_target_properties(${target} PROPERTIES CXX_VISIBILITY_PRESET hidden
    C_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "SHARED_LIBRARY")
    target_compile_definitions(${target} PUBLIC EDGECQRS_SHARED)
    if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
      target_link_options(${target} PRIVATE "-Wl,--version-script=${EDGECQRS_VERSION_SCRIPT}")
      set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS ${EDGECQRS_VERSION_SCRIPT})
    endif()
  endif()
endfunction()
