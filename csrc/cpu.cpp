#include "cpu.h"

#include <unistd.h>

#include <cstdlib>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define TINYLM_X86 1
#include <cpuid.h>
#elif defined(__aarch64__) || defined(__arm__)
#define TINYLM_ARM 1
#if defined(__linux__)
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#endif

namespace tinylm {
namespace {

#if TINYLM_X86
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

uint32_t detect() {
  unsigned a, b, c, d;
  uint32_t f = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  const bool sse41 = c & (1u << 19), fma = c & (1u << 12), f16c = c & (1u << 29);
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (sse41) f |= kSSE41;
  if (!(osxsave && avx)) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;           // XMM and YMM state saved
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;         // plus opmask and ZMM state
  if (!os_ymm || __get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17);
  const bool avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  const bool avx512vnni = c & (1u << 11);
  if (avx2 && fma && f16c) f |= kAVX2;
  if ((f & kAVX2) && os_zmm && avx512f && avx512dq && avx512bw && avx512vl) {
    f |= kAVX512;
    if (avx512vnni) f |= kAVX512VNNI;
  }
  __cpuid_count(7, 1, a, b, c, d);
  if ((f & kAVX2) && (a & (1u << 4))) f |= kAVXVNNI;
  return f;
}
#elif TINYLM_ARM
uint32_t detect() {
  uint32_t f = 0;
#if defined(__aarch64__)
  f |= kNEON;  // Advanced SIMD is mandatory on AArch64
#if defined(__linux__)
  const unsigned long hwcap = getauxval(AT_HWCAP), hwcap2 = getauxval(AT_HWCAP2);
  if (hwcap & (1ul << 20)) f |= kDotProd;   // HWCAP_ASIMDDP
  if (hwcap2 & (1ul << 13)) f |= kI8MM;     // HWCAP2_I8MM
#elif defined(__APPLE__)
  auto has = [](const char* name) {
    int value = 0;
    size_t size = sizeof(value);
    return sysctlbyname(name, &value, &size, nullptr, 0) == 0 && value != 0;
  };
  if (has("hw.optional.arm.FEAT_DotProd")) f |= kDotProd;
  if (has("hw.optional.arm.FEAT_I8MM")) f |= kI8MM;
#endif
#else  // 32-bit ARM
#if defined(__linux__)
  const unsigned long hwcap = getauxval(AT_HWCAP);
  // HWCAP_NEON and HWCAP_VFPv4: the NEON kernels use VFPv4's fused multiply-add and half
  // conversions, which a Cortex-A8/A9's NEON lacks
  if ((hwcap & (1ul << 12)) && (hwcap & (1ul << 16))) f |= kNEON;
  // 32-bit Linux reports dotprod as HWCAP_ASIMDDP (bit 24) on kernels that know it.
  if ((f & kNEON) && (hwcap & (1ul << 24))) f |= kDotProd;
#endif
#endif
  return f;
}
#else
uint32_t detect() { return 0; }
#endif

// Test builds of the native driver only (csrc/tests/build.py); a normal build never
// reports a feature the CPU lacks.
uint32_t detect_for_this_build() {
  uint32_t f = detect();
#if defined(TINYLM_SIMDE_FEATURES) && TINYLM_X86
  // The AVX-512 and VNNI kernel files were compiled against SIMDe, which implements
  // those intrinsics with AVX2 code: they run wherever AVX2 does.
  if (f & kAVX2) f |= kAVX512 | kAVX512VNNI | kAVXVNNI;
#endif
#if defined(TINYLM_TEST_BUILD) && TINYLM_ARM
  // TINYLM_TEST_ASSUME_DOTPROD=1 declares dotprod that the emulator executes but does
  // not advertise (qemu-arm -cpu max on 32-bit ARM), so that dispatch can select it.
  const char* assume = std::getenv("TINYLM_TEST_ASSUME_DOTPROD");
  if (assume != nullptr && assume[0] == '1' && (f & kNEON)) f |= kDotProd;
#endif
  return f;
}

const std::vector<IsaLevel> kLevels = {
    {"scalar", 0},
#if TINYLM_X86
    {"avx2", kSSE41 | kAVX2},
    {"avxvnni", kSSE41 | kAVX2 | kAVXVNNI},
    {"avx512", kSSE41 | kAVX2 | kAVX512},
    {"avx512vnni", kSSE41 | kAVX2 | kAVX512 | kAVX512VNNI},
#elif TINYLM_ARM
    {"neon", kNEON},
    {"neon_dotprod", kNEON | kDotProd},
    {"neon_i8mm", kNEON | kDotProd | kI8MM},
#endif
};

struct State {
  uint32_t detected = detect_for_this_build();
  std::string isa;
  uint32_t features = 0;
  State() {
    for (const auto& level : kLevels)  // the best level the CPU supports
      if ((level.features & ~detected) == 0) {
        isa = level.name;
        features = level.features;
      }
  }
};

State& state() {
  static State s;
  return s;
}

}  // namespace

uint32_t cpu_features() { return state().detected; }

std::vector<std::string> cpu_feature_names() {
  static const std::pair<uint32_t, const char*> names[] = {
      {kSSE41, "sse4.1"}, {kAVX2, "avx2+fma"}, {kAVX512, "avx512f/bw/dq/vl"},
      {kAVX512VNNI, "avx512vnni"}, {kAVXVNNI, "avxvnni"}, {kNEON, "neon"},
      {kDotProd, "dotprod"}, {kI8MM, "i8mm"}};
  std::vector<std::string> out;
  for (auto& [bit, name] : names)
    if (cpu_features() & bit) out.push_back(name);
  return out;
}

const std::vector<IsaLevel>& isa_levels() { return kLevels; }

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const auto& level : kLevels)
    if ((level.features & ~cpu_features()) == 0) out.push_back(level.name);
  return out;
}

uint32_t active_features() { return state().features; }
std::string active_isa() { return state().isa; }

void set_isa(const std::string& name) {
  std::string available;
  for (const auto& a : available_isas()) available += (available.empty() ? "" : ", ") + a;
  for (const auto& level : kLevels) {
    if (name != level.name) continue;
    if (level.features & ~cpu_features())
      throw std::invalid_argument("instruction set '" + name +
                                  "' is not supported by this CPU; available: " + available);
    state().isa = level.name;
    state().features = level.features;
    return;
  }
  throw std::invalid_argument("unknown instruction set '" + name + "'; available: " + available);
}

void init_isa_from_env() {
  const char* env = std::getenv("TINYLM_ISA");
  if (env == nullptr || *env == 0) return;
  try {
    set_isa(env);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("TINYLM_ISA=") + env + ": " + e.what());
  }
}

int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long n = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (n > 0) return int64_t(n);
#endif
    return int64_t(1) << 20;
  }();
  return bytes;
}

}  // namespace tinylm
