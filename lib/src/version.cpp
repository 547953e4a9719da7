// Library version from CMake's project(VERSION) (EDGECQRS_VERSION_STRING, set in lib/CMakeLists.txt).
#include "edgecqrs/version.hpp"

namespace edgecqrs {
const char* version() noexcept { return EDGECQRS_VERSION_STRING; }
}  // namespace edgecqrs
