# Install rules, CMake package (find_package(edgecqrs 0.1)) and pkg-config files.
# Each library that exists is installed: edgecqrs::core, edgecqrs::master, edgecqrs::replica,
# edgecqrs::loopback, edgecqrs::paho.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(EDGECQRS_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/edgecqrs)
set(_edgecqrs_libs)
foreach(pair "edgecqrs_core:core" "edgecqrs_master:master" "edgecqrs_replica:replica"
    "edgecqrs_loopback:loopback" "edgecqrs_paho:paho")
  string(REPLACE ":" ";" pair ${pair})
  list(GET pair 0 tgt)
  list(GET pair 1 name)
  if(TARGET ${tgt})
    set_target_properties(${tgt} PROPERTIES EXPORT_NAME ${name})
    list(APPEND _edgecqrs_libs ${tgt})
  endif()
endforeach()

install(TARGETS ${_edgecqrs_libs} EXPORT edgecqrsTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/lib/include/edgecqrs DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
foreach(port loopback paho)
  if(TARGET edgecqrs_${port} AND EXISTS ${PROJECT_SOURCE_DIR}/ports/${port}/include/edgecqrs)
    install(DIRECTORY ${PROJECT_SOURCE_DIR}/ports/${port}/include/edgecqrs DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  endif()
endforeach()
install(EXPORT edgecqrsTargets NAMESPACE edgecqrs:: DESTINATION ${EDGECQRS_CMAKE_DIR})

set(EDGECQRS_PACKAGE_HAS_PAHO OFF)
if(TARGET edgecqrs_paho)
  set(EDGECQRS_PACKAGE_HAS_PAHO ON)
endif()
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/edgecqrsConfig.cmake.in
  ${PROJECT_BINARY_DIR}/edgecqrsConfig.cmake INSTALL_DESTINATION ${EDGECQRS_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/edgecqrsConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/edgecqrsConfig.cmake ${PROJECT_BINARY_DIR}/edgecqrsConfigVersion.cmake
  DESTINATION ${EDGECQRS_CMAKE_DIR})

# pkg-config: one .pc per library.
# Relocatable: prefix is found from the .pc file's own place (works with DESTDIR and sysroots).
file(RELATIVE_PATH EDGECQRS_PC_UP "/x/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/x")
string(REGEX REPLACE "/$" "" EDGECQRS_PC_UP "${EDGECQRS_PC_UP}")
set(EDGECQRS_PC_PREFIX "\${pcfiledir}/${EDGECQRS_PC_UP}")
set(EDGECQRS_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
set(EDGECQRS_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
function(edgecqrs_pc name lib description requires requires_private libs_private)
  set(PC_NAME ${name})
  set(PC_LIB ${lib})
  set(PC_DESCRIPTION ${description})
  set(PC_REQUIRES ${requires})
  set(PC_REQUIRES_PRIVATE ${requires_private})
  set(PC_LIBS_PRIVATE ${libs_private})
  configure_file(${PROJECT_SOURCE_DIR}/cmake/edgecqrs.pc.in ${PROJECT_BINARY_DIR}/pkgconfig/${name}.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/pkgconfig/${name}.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endfunction()
edgecqrs_pc(edgecqrs edgecqrs "edgecqrs core: wire codec, errors, names, events and values" "" "libcbor" "")
edgecqrs_pc(edgecqrs-master edgecqrs_master "edgecqrs master: SQLite capture, outbox, publisher" "edgecqrs sqlite3" "" "-lpthread")
edgecqrs_pc(edgecqrs-replica edgecqrs_replica "edgecqrs replica: apply, dead letters, re-sync" "edgecqrs sqlite3" "" "-lpthread")
if(TARGET edgecqrs_loopback)
  get_target_property(_n edgecqrs_loopback OUTPUT_NAME)
  if(NOT _n)
    set(_n edgecqrs_loopback)
  endif()
  edgecqrs_pc(edgecqrs-loopback ${_n} "edgecqrs in-process loopback transport (tests)" "edgecqrs" "" "")
endif()
if(TARGET edgecqrs_paho)
  get_target_property(_n edgecqrs_paho OUTPUT_NAME)
  if(NOT _n)
    set(_n edgecqrs_paho)
  endif()
  edgecqrs_pc(edgecqrs-paho ${_n} "edgecqrs MQTT transport over Paho MQTT C++" "edgecqrs" "" "-lpaho-mqttpp3 -lpaho-mqtt3as -lssl -lcrypto -lpthread")
endif()
