// EDGECQRS_API marks the public API of the edgecqrs libraries (core and ports). The libraries are
// compiled with hidden visibility, so a shared build exports only what carries this mark.
// EDGECQRS_SHARED is defined (by the CMake targets) when the libraries are shared; a static build
// leaves the mark empty so that a firmware linking the archives into its own shared object does
// not re-export edgecqrs.
//
// How the headers use it: free functions carry it; polymorphic interfaces (clock, transport, the
// loopback client) carry it on the class, so their vtables and typeinfo are shared with callers;
// classes with a private `impl` (master, replica, broker, paho_transport) carry it on each public
// member function instead, so that the nested impl and the std:: templates instantiated for it stay
// hidden. scripts/check-exports (the `exports` test of a shared build) fails on anything else.
#pragma once

#if defined(EDGECQRS_SHARED) && (defined(__GNUC__) || defined(__clang__))
#define EDGECQRS_API __attribute__((visibility("default")))
#else
#define EDGECQRS_API
#endif
