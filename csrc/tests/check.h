// A tiny test framework for the native test driver: each kernel family adds a
// test_<family>.cpp with TEST(...) blocks that compare every instruction-set path the
// CPU can run against the scalar reference. main.cpp runs them all.
#pragma once

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace tinylm::testing {

struct TestCase {
  const char* name;
  std::function<void()> body;
};

inline std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Register {
  Register(const char* name, std::function<void()> body) { registry().push_back({name, body}); }
};

#if defined(__x86_64__)
// Runs body with denormals flushed (MXCSR's FTZ and DAZ, as -ffast-math's startup code
// sets them), then restores the mode: for results that must not depend on it.
inline void with_denormals_flushed(const std::function<void()>& body) {
  const unsigned saved = _mm_getcsr();
  _mm_setcsr(saved | 0x8040);
  body();
  _mm_setcsr(saved);
}
#endif

}  // namespace tinylm::testing

#define TINYLM_CONCAT2(a, b) a##b
#define TINYLM_CONCAT(a, b) TINYLM_CONCAT2(a, b)

#define TEST(name)                                                                      \
  static void test_##name();                                                            \
  static ::tinylm::testing::Register TINYLM_CONCAT(register_, name)(#name, test_##name); \
  static void test_##name()

// Records a failure (with file, line and a printf-style message) and goes on.
#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    if (!(cond)) {                                                           \
      ++::tinylm::testing::failures();                                       \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                     \
      std::fprintf(stderr, "\n");                                            \
    }                                                                        \
  } while (0)
