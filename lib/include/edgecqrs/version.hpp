// Library version, defined once in CMakeLists.txt (project VERSION) and reported here.
#pragma once

#include "edgecqrs/export.hpp"

namespace edgecqrs {
// "MAJOR.MINOR.PATCH" of the library as built.
EDGECQRS_API const char* version() noexcept;
}  // namespace edgecqrs
