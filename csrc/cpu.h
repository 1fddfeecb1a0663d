// CPU feature detection and the choice of kernel path.
//
// Features are read once from the CPU (cpuid/xgetbv on x86, getauxval or sysctl on ARM).
// An instruction-set *level* such as "avx2" names a set of features; each kernel family
// uses the best implementation whose required features lie inside the active level.
// The active level is the best the CPU supports, unless TINYLM_ISA or set_isa() caps it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tinylm {

enum Feature : uint32_t {
  kSSE41 = 1u << 0,
  kAVX2 = 1u << 1,  // with FMA and F16C
  kAVX512 = 1u << 2,  // F, BW, DQ, VL
  kAVX512VNNI = 1u << 3,
  kAVXVNNI = 1u << 4,
  kNEON = 1u << 8,
  kDotProd = 1u << 9,
  kI8MM = 1u << 10,
};

struct IsaLevel {
  const char* name;
  uint32_t features;  // everything a kernel may use at this level
};

// Features this CPU (and its OS) supports.
uint32_t cpu_features();

// Human-readable list of the detected features, e.g. {"avx2", "avx512f", ...}.
std::vector<std::string> cpu_feature_names();

// The levels of this build's architecture, lowest ("scalar") first.
const std::vector<IsaLevel>& isa_levels();

// Levels this CPU can execute.
std::vector<std::string> available_isas();

// The active level's features; kernels choose their path from these.
uint32_t active_features();
std::string active_isa();

// Caps the active level. Throws std::invalid_argument, naming the levels that are
// available, when `name` is unknown or the CPU cannot execute it.
void set_isa(const std::string& name);

// Applies TINYLM_ISA if it is set (called once when the module is loaded).
void init_isa_from_env();

// The bytes of one core's L2 cache, as the C library reports it (sysconf), or 1 MB where
// it does not (some ARM systems, other C libraries).
int64_t l2_cache_bytes();

}  // namespace tinylm
