// SIMT emulation (test support): the threads of a block run as ucontext fibers on the calling host thread.
// A fiber runs until it reaches a meeting point (__syncthreads, a warp exchange) or returns; the scheduler then
// releases every group whose live members all wait at the same kind of meeting point. A block whose fibers can
// never all meet (divergent __syncthreads, a warp collective with lanes gone) aborts with a message: on a GPU that
// is a hang or undefined behaviour.
#include "simt.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace simt {
thread_local ThreadState *current = nullptr;

namespace {
enum class Wait { None, Block, Warp, Done };

struct Fiber {
  ucontext_t ctx;
  ThreadState state;
  Wait wait = Wait::None;
  const void *deposit = nullptr;  // warp exchange: this lane's bytes
  void *collect = nullptr;        // warp exchange: where this lane wants the whole warp's bytes
  size_t bytes = 0;
};

constexpr size_t kStackBytes = 256 * 1024;

struct Scheduler {
  ucontext_t main;
  std::vector<Fiber> fibers;
  std::vector<std::vector<char>> stacks;
  const std::function<void()> *body = nullptr;
  Fiber *running = nullptr;
};
thread_local Scheduler *sched = nullptr;

void fiber_entry() {
  Scheduler *s = sched;
  (*s->body)();
  s->running->wait = Wait::Done;
  swapcontext(&s->running->ctx, &s->main);
}

void yield_to_scheduler() {
  Fiber *f = sched->running;
  swapcontext(&f->ctx, &sched->main);
  current = &sched->running->state;
}

// getcontext returns twice: kept out of launch() so its loop counters stay in registers safely
__attribute__((noinline)) void prepare(Fiber &f, std::vector<char> &stack, unsigned t, dim3 block, dim3 blockId, dim3 grid) {
  f.state.tid = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
  f.state.bid = blockId;
  f.state.bdim = block;
  f.state.gdim = grid;
  f.state.lane = t & 31;
  f.state.warp = t >> 5;
  f.wait = Wait::None;
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = stack.data();
  f.ctx.uc_stack.ss_size = stack.size();
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_entry, 0);
}

[[noreturn]] void deadlock(const char *what, const dim3 &b) {
  std::fprintf(stderr, "simt emulation: %s in block (%u,%u,%u)\n", what, b.x, b.y, b.z);
  std::abort();
}
}  // namespace

void syncthreads() {
  sched->running->wait = Wait::Block;
  yield_to_scheduler();
}

void warp_exchange(const void *mine, void *all, size_t bytes) {
  Fiber *f = sched->running;
  f->wait = Wait::Warp;
  f->deposit = mine;
  f->collect = all;
  f->bytes = bytes;
  yield_to_scheduler();
}

void launch(dim3 grid, dim3 block, const std::function<void()> &body) {
  const unsigned n = block.x * block.y * block.z;
  if (n == 0 || n > 1024) {
    std::fprintf(stderr, "simt emulation: block of %u threads\n", n);
    std::abort();
  }
  Scheduler s;
  Scheduler *outer = sched;
  ThreadState *outerCurrent = current;
  sched = &s;
  s.body = &body;
  s.fibers.resize(n);
  s.stacks.resize(n);
  for (auto &st : s.stacks) st.resize(kStackBytes);
  const unsigned warps = (n + 31) / 32;

  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        for (unsigned t = 0; t < n; t++) prepare(s.fibers[t], s.stacks[t], t, block, dim3(bx, by, bz), grid);
        std::vector<bool> runnable(n, true);
        for (;;) {
          for (unsigned t = 0; t < n; t++) {
            if (!runnable[t]) continue;
            s.running = &s.fibers[t];
            current = &s.fibers[t].state;
            s.fibers[t].wait = Wait::None;
            swapcontext(&s.main, &s.fibers[t].ctx);
            runnable[t] = false;
          }
          unsigned done = 0, atBlock = 0;
          for (auto &f : s.fibers) {
            done += f.wait == Wait::Done;
            atBlock += f.wait == Wait::Block;
          }
          if (done == n) break;
          bool progressed = false;
          for (unsigned w = 0; w < warps; w++) {
            unsigned lo = w * 32, hi = std::min(n, lo + 32), atWarp = 0, live = 0;
            for (unsigned t = lo; t < hi; t++) {
              live += s.fibers[t].wait != Wait::Done;
              atWarp += s.fibers[t].wait == Wait::Warp;
            }
            if (atWarp == 0) continue;
            if (atWarp != hi - lo) {
              if (atWarp == live) deadlock("warp collective with exited lanes", dim3(bx, by, bz));
              continue;  // the other lanes are still on their way (or at a block barrier: checked below)
            }
            const size_t bytes = s.fibers[lo].bytes;
            for (unsigned t = lo; t < hi; t++)
              if (s.fibers[t].bytes != bytes) deadlock("warp lanes meet at different collectives", dim3(bx, by, bz));
            for (unsigned t = lo; t < hi; t++)
              for (unsigned u = lo; u < hi; u++)
                std::memcpy((char *)s.fibers[t].collect + (u - lo) * bytes, s.fibers[u].deposit, bytes);
            for (unsigned t = lo; t < hi; t++) runnable[t] = true;
            progressed = true;
          }
          if (!progressed) {
            if (atBlock + done != n) deadlock("warp collective and __syncthreads interleaved", dim3(bx, by, bz));
            if (done != 0) deadlock("__syncthreads after some threads returned", dim3(bx, by, bz));
            for (unsigned t = 0; t < n; t++) runnable[t] = true;
          }
        }
      }
  sched = outer;
  current = outerCurrent;
}
}  // namespace simt
