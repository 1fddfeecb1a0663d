// The native test driver: runs every registered kernel test on every instruction-set
// level this CPU can execute. Also cross-compiled for ARM and run under qemu.
//   driver            run all tests
//   driver NAME...    run only tests whose name contains one of the arguments
#include <cstdio>
#include <cstring>
#include <exception>

#include "../cpu.h"
#include "check.h"

int main(int argc, char** argv) {
  using namespace tinylm::testing;
  // Line-buffered even into a pipe: when a test dies (SIGILL under qemu, a segfault),
  // the log still shows everything up to the test that died.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  tinylm::init_isa_from_env();
  std::printf("cpu features:");
  for (const auto& f : tinylm::cpu_feature_names()) std::printf(" %s", f.c_str());
  std::printf("\nactive isa: %s\n", tinylm::active_isa().c_str());
  int passed = 0, failed = 0;
  for (const auto& test : registry()) {
    bool selected = argc == 1;
    for (int i = 1; i < argc; ++i) selected |= std::strstr(test.name, argv[i]) != nullptr;
    if (!selected) continue;
    std::printf("RUN  %s\n", test.name);
    const int before = failures();
    try {
      test.body();
    } catch (const std::exception& e) {
      ++failures();
      std::fprintf(stderr, "%s threw: %s\n", test.name, e.what());
    }
    const bool ok = failures() == before;
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", test.name);
    (ok ? passed : failed)++;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 && passed > 0 ? 0 : 1;
}
