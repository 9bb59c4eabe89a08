// The emulator's scheduler: every threadgroup of the grid runs as one fiber (ucontext) per thread.
//
// A fiber runs until it reaches a barrier or a simdgroup function, then yields. When every lane of
// a simdgroup waits at the same simd call site, the call completes; when every thread of the group
// waits at the same barrier, they are released. Anything else (a thread that returned while others
// wait at a barrier, lanes at different call sites) is a divergence the GPU would hang on or
// compute garbage from, and is reported with the line. The whole grid is run in forward, reverse
// and random thread (and threadgroup) orders; outputs must be bit-identical, which exposes data
// races such as a missing barrier. Fiber switches are annotated for AddressSanitizer.
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <random>
#include <string>
#include <vector>
#include <ucontext.h>
#include <sys/mman.h>
#include <sanitizer/common_interface_defs.h>

// After the system headers: the Metal subset (types, Sync, declarations) and the driver interface.
#include "metal_emu.h"
#include "emu_runtime.h"

extern "C" {
// The runtime finds threadgroup statics by their offset from this symbol (read with nm).
char orchard_emu_anchor[1];
}

namespace orchard_emu {
namespace {

constexpr int kSlotBytes = 16;
constexpr size_t kStack = 256 * 1024;

enum class State { ready, waiting, done };

struct Fiber {
  ucontext_t ctx;
  void* stack = nullptr;
  void* fake_stack = nullptr;
  State state = State::ready;
  Sync kind = Sync::barrier;
  int line = 0;
  const char* what = "";
  unsigned char slot[kSlotBytes];
  Attrs attrs;
};

struct Group {
  std::vector<Fiber> fibers;
  std::vector<std::vector<unsigned char>> snapshots;  // per simdgroup: 32 published slots
  unsigned char** buffers = nullptr;
  ucontext_t sched;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
  int current = -1;
};

Group* g_group = nullptr;
std::string g_context;  // which order / group is running, for error messages

void trampoline() {
  Group& g = *g_group;
  __sanitizer_finish_switch_fiber(nullptr, &g.sched_stack_bottom, &g.sched_stack_size);
  Fiber& f = g.fibers[g.current];
  run_thread(g.buffers, f.attrs);
  f.state = State::done;
  __sanitizer_start_switch_fiber(nullptr, g.sched_stack_bottom, g.sched_stack_size);  // never resumed
  setcontext(&g.sched);
}

void resume(Group& g, int i) {
  g.current = i;
  Fiber& f = g.fibers[i];
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStack);
  swapcontext(&g.sched, &f.ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
  g.current = -1;
}

}  // namespace

[[noreturn]] void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "emulator: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, " [%s]\n", g_context.c_str());
  va_end(ap);
  std::fflush(stderr);
  std::_Exit(3);
}

unsigned lane_id() { return g_group->fibers[g_group->current].attrs.thread_index_in_simdgroup; }

unsigned simd_width_present() {
  Group& g = *g_group;
  unsigned sg = g.fibers[g.current].attrs.simdgroup_index_in_threadgroup;
  unsigned n = g.fibers.size();
  return std::min(32u, n - sg * 32);
}

const unsigned char* rendezvous(Sync kind, int line, const char* what, const void* value, int size) {
  Group& g = *g_group;
  if (g.current < 0) fail("%s called outside a kernel thread", what);
  Fiber& f = g.fibers[g.current];
  if (size > kSlotBytes) fail("%s of a %d-byte value is not modelled", what, size);
  std::memset(f.slot, 0, kSlotBytes);
  if (size) std::memcpy(f.slot, value, size);
  f.kind = kind;
  f.line = line;
  f.what = what;
  f.state = State::waiting;
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, g.sched_stack_bottom, g.sched_stack_size);
  swapcontext(&f.ctx, &g.sched);
  __sanitizer_finish_switch_fiber(fake, &g.sched_stack_bottom, &g.sched_stack_size);
  return g.snapshots[f.attrs.simdgroup_index_in_threadgroup].data();
}

namespace {

const char* kind_name(const Fiber& f) { return f.state == State::done ? "returned" : f.what; }

// Complete every simdgroup whose lanes all wait at one simd call site. Returns how many completed.
int resolve_simd(Group& g) {
  int resolved = 0;
  unsigned n = g.fibers.size();
  for (unsigned sg = 0; sg * 32 < n; ++sg) {
    unsigned lo = sg * 32, hi = std::min(n, lo + 32);
    Fiber& first = g.fibers[lo];
    bool all = true;
    for (unsigned i = lo; i < hi; ++i) {
      Fiber& f = g.fibers[i];
      if (f.state != State::waiting || f.kind != Sync::simd) { all = false; break; }
    }
    if (!all) continue;
    for (unsigned i = lo; i < hi; ++i) {
      Fiber& f = g.fibers[i];
      if (f.line != first.line || std::strcmp(f.what, first.what) != 0)
        fail("simdgroup %u diverged: lane %u at %s (line %d), lane %u at %s (line %d)", sg, 0u, first.what,
             first.line, i - lo, f.what, f.line);
    }
    auto& snap = g.snapshots[sg];
    for (unsigned i = lo; i < hi; ++i) std::memcpy(snap.data() + (i - lo) * kSlotBytes, g.fibers[i].slot, kSlotBytes);
    for (unsigned i = lo; i < hi; ++i) g.fibers[i].state = State::ready;
    ++resolved;
  }
  return resolved;
}

[[noreturn]] void report_stuck(Group& g) {
  // Nothing can run: describe the first simdgroup or barrier that some threads never reached.
  unsigned n = g.fibers.size();
  for (unsigned sg = 0; sg * 32 < n; ++sg) {
    unsigned lo = sg * 32, hi = std::min(n, lo + 32);
    for (unsigned i = lo; i < hi; ++i) {
      Fiber& f = g.fibers[i];
      if (f.state == State::waiting && f.kind == Sync::simd) {
        unsigned there = 0;
        const Fiber* other = nullptr;
        for (unsigned j = lo; j < hi; ++j) {
          const Fiber& o = g.fibers[j];
          if (o.state == State::waiting && o.kind == Sync::simd && o.line == f.line) ++there;
          else if (!other) other = &o;
        }
        char where[96] = "";
        if (other->state != State::done) std::snprintf(where, sizeof where, " at line %d", other->line);
        fail("%s at line %d reached by only %u of %u lanes of simdgroup %u (another lane %s%s)", f.what, f.line,
             there, hi - lo, sg, kind_name(*other), where);
      }
    }
  }
  unsigned at = 0, done = 0;
  const Fiber* w = nullptr;
  for (auto& f : g.fibers) {
    if (f.state == State::done) ++done;
    else { ++at; if (!w) w = &f; }
  }
  fail("threadgroup_barrier at line %d reached by only %u of %zu threads (%u returned)", w ? w->line : 0, at,
       g.fibers.size(), done);
}

bool release_barrier(Group& g) {
  const Fiber* first = nullptr;
  for (auto& f : g.fibers) {
    if (f.state == State::done) return false;
    if (f.state != State::waiting || f.kind != Sync::barrier) return false;
    if (!first) first = &f;
    else if (f.line != first->line) fail("threads wait at different barriers (lines %d and %d)", first->line, f.line);
  }
  for (auto& f : g.fibers) f.state = State::ready;
  return true;
}

struct Launch {
  uint3 grid, tg;
  std::vector<std::pair<long, long>> tgmem;  // threadgroup statics: offset from anchor, bytes
};

uint3 ceil_div(uint3 a, uint3 b) { return {(a.x + b.x - 1) / b.x, (a.y + b.y - 1) / b.y, (a.z + b.z - 1) / b.z}; }

void run_group(const Launch& L, uint3 gid, unsigned char** buffers, std::vector<void*>& stacks,
               std::mt19937& rng, int order) {
  uint3 groups = ceil_div(L.grid, L.tg);
  // dispatchThreads semantics: the group at the grid's edge is smaller.
  uint3 size = {std::min(L.tg.x, L.grid.x - gid.x * L.tg.x), std::min(L.tg.y, L.grid.y - gid.y * L.tg.y),
                std::min(L.tg.z, L.grid.z - gid.z * L.tg.z)};
  unsigned n = size.x * size.y * size.z;
  // Threadgroup memory is undefined at the start of a group: poison it, so reading before writing shows.
  for (auto& [off, bytes] : L.tgmem) std::memset(orchard_emu_anchor + off, 0xff, bytes);
  Group g;
  g.fibers.resize(n);
  g.snapshots.assign((n + 31) / 32, std::vector<unsigned char>(32 * kSlotBytes, 0));
  g.buffers = buffers;
  g_group = &g;
  unsigned sgs = (n + 31) / 32;
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = g.fibers[i];
    Attrs& a = f.attrs;
    uint3 tp = {i % size.x, (i / size.x) % size.y, i / (size.x * size.y)};
    a.thread_position_in_threadgroup = tp;
    a.threadgroup_position_in_grid = gid;
    a.thread_position_in_grid = {gid.x * L.tg.x + tp.x, gid.y * L.tg.y + tp.y, gid.z * L.tg.z + tp.z};
    a.threads_per_threadgroup = size;
    a.dispatch_threads_per_threadgroup = L.tg;
    a.threads_per_grid = a.grid_size = L.grid;
    a.grid_origin = {0, 0, 0};
    a.threadgroups_per_grid = groups;
    a.thread_index_in_threadgroup = i;
    a.thread_index_in_simdgroup = i % 32;
    a.simdgroup_index_in_threadgroup = i / 32;
    a.simdgroups_per_threadgroup = sgs;
    a.dispatch_simdgroups_per_threadgroup = (L.tg.x * L.tg.y * L.tg.z + 31) / 32;
    a.threads_per_simdgroup = a.thread_execution_width = 32;
    a.thread_index_in_quadgroup = i % 4;
    a.quadgroup_index_in_threadgroup = i / 4;
    a.quadgroups_per_threadgroup = (n + 3) / 4;
    a.dispatch_quadgroups_per_threadgroup = (L.tg.x * L.tg.y * L.tg.z + 3) / 4;
    f.stack = stacks[i];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, trampoline, 0);
  }
  std::vector<int> idx(n);
  for (unsigned i = 0; i < n; ++i) idx[i] = order == 1 ? int(n - 1 - i) : int(i);
  for (;;) {
    if (order == 2) std::shuffle(idx.begin(), idx.end(), rng);
    for (int i : idx)
      if (g.fibers[i].state == State::ready) resume(g, i);
    bool all_done = true;
    for (auto& f : g.fibers) all_done &= f.state == State::done;
    if (all_done) break;
    if (resolve_simd(g)) continue;
    if (release_barrier(g)) continue;
    report_stuck(g);
  }
  g_group = nullptr;
}

std::vector<unsigned char> read_file(const char* path) {
  FILE* f = std::fopen(path, "rb");
  if (!f) fail("cannot read %s", path);
  std::vector<unsigned char> data;
  unsigned char buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) data.insert(data.end(), buf, buf + got);
  std::fclose(f);
  return data;
}

}  // namespace
}  // namespace orchard_emu

// Usage: prog GX GY GZ TX TY TZ SEED TGMEM(off:bytes,... or -) then per buffer: PATH OUT(0|1).
// Buffers are read from their files (outputs hold their initial contents) into exactly-sized heap
// blocks, so AddressSanitizer sees any access past an array's end; outputs are written back.
int main(int argc, char** argv) {
  using namespace orchard_emu;
  if (argc < 9 + 2 * kNumBuffers) fail("expected %d buffers on the command line", kNumBuffers);
  Launch L;
  L.grid = {uint(std::atoi(argv[1])), uint(std::atoi(argv[2])), uint(std::atoi(argv[3]))};
  L.tg = {uint(std::atoi(argv[4])), uint(std::atoi(argv[5])), uint(std::atoi(argv[6]))};
  // MLX clamps the threadgroup to the grid in each dimension.
  L.tg = {std::min(L.tg.x, L.grid.x), std::min(L.tg.y, L.grid.y), std::min(L.tg.z, L.grid.z)};
  unsigned seed = unsigned(std::atoi(argv[7]));
  if (std::strcmp(argv[8], "-") != 0) {
    std::string spec = argv[8];
    size_t pos = 0;
    while (pos < spec.size()) {
      size_t comma = spec.find(',', pos);
      std::string item = spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      size_t colon = item.find(':');
      L.tgmem.push_back({std::atol(item.substr(0, colon).c_str()), std::atol(item.substr(colon + 1).c_str())});
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
  }
  unsigned tg_threads = L.tg.x * L.tg.y * L.tg.z;
  if (tg_threads == 0 || tg_threads > 1024) fail("threadgroup of %u threads (Metal allows 1..1024)", tg_threads);
  std::vector<std::vector<unsigned char>> initial(kNumBuffers), result(kNumBuffers);
  std::vector<bool> is_out(kNumBuffers);
  for (int b = 0; b < kNumBuffers; ++b) {
    initial[b] = read_file(argv[9 + 2 * b]);
    is_out[b] = argv[10 + 2 * b][0] == '1';
  }
  std::vector<void*> stacks(tg_threads);
  for (auto& s : stacks) {
    s = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (s == MAP_FAILED) fail("cannot map fiber stacks");
  }
  uint3 groups = ceil_div(L.grid, L.tg);
  std::vector<uint3> gids;
  for (uint z = 0; z < groups.z; ++z)
    for (uint y = 0; y < groups.y; ++y)
      for (uint x = 0; x < groups.x; ++x) gids.push_back({x, y, z});
  const char* names[] = {"forward", "reverse", "random"};
  std::mt19937 rng(seed);
  for (int order = 0; order < 3; ++order) {
    std::vector<unsigned char*> ptrs(kNumBuffers);
    for (int b = 0; b < kNumBuffers; ++b) {
      ptrs[b] = static_cast<unsigned char*>(std::malloc(initial[b].size() ? initial[b].size() : 1));
      std::memcpy(ptrs[b], initial[b].data(), initial[b].size());
    }
    std::vector<uint3> go = gids;
    if (order == 1) std::reverse(go.begin(), go.end());
    if (order == 2) std::shuffle(go.begin(), go.end(), rng);
    for (auto gid : go) {
      g_context = std::string(names[order]) + " order, threadgroup (" + std::to_string(gid.x) + "," +
                  std::to_string(gid.y) + "," + std::to_string(gid.z) + ")";
      run_group(L, gid, ptrs.data(), stacks, rng, order);
    }
    g_context = names[order];
    for (int b = 0; b < kNumBuffers; ++b) {
      if (is_out[b]) {
        std::vector<unsigned char> out(ptrs[b], ptrs[b] + initial[b].size());
        if (order == 0) result[b] = std::move(out);
        else if (out != result[b]) {
          size_t i = 0;
          while (out[i] == result[b][i]) ++i;
          fail("output buffer %d differs between forward and %s thread order at byte %zu: a data race "
               "(missing barrier?)", b, names[order], i);
        }
      }
      std::free(ptrs[b]);
    }
  }
  for (int b = 0; b < kNumBuffers; ++b) {
    if (!is_out[b]) continue;
    FILE* f = std::fopen(argv[9 + 2 * b], "wb");
    if (!f || std::fwrite(result[b].data(), 1, result[b].size(), f) != result[b].size()) fail("cannot write output");
    std::fclose(f);
  }
  return 0;
}
