// Library version, defined once in CMakeLists.txt (project VERSION) and reported here.
#pragma once

namespace edgecqrs {
// "MAJOR.MINOR.PATCH" of the library as built.
const char* version() noexcept;
}  // namespace edgecqrs
