// EDGECQRS_API marks the public API of the edgecqrs libraries (core and ports). The libraries are
// compiled with hidden visibility, so a shared build exports only what carries this mark.
// EDGECQRS_SHARED is defined (by the CMake targets) when the libraries are shared; a static build
// leaves the mark empty so that a firmware linking the archives into its own shared object does
// not re-export edgecqrs.
#pragma once

#if defined(EDGECQRS_SHARED) && (defined(__GNUC__) || defined(__clang__))
#define EDGECQRS_API __attribute__((visibility("default")))
#else
#define EDGECQRS_API
#endif
