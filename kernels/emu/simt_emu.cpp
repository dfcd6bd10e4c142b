// SIMT emulation (test support): the threads of a block run as fibers on the calling host thread.
// A fiber runs until it reaches a meeting point (__syncthreads, a warp exchange) or returns; the scheduler then
// releases every group whose live members all wait at the same kind of meeting point. A block whose fibers can
// never all meet (divergent __syncthreads, a warp collective with lanes gone) aborts with a message: on a GPU that
// is a hang or undefined behaviour.
#include "simt.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

// ---- fiber context switch: callee-saved registers + FP control words on the fiber's own stack, no syscalls
// (ucontext's swapcontext saves the signal mask with a syscall on every switch, 50× slower here) ----
#if defined(__x86_64__)
extern "C" void simt_ctx_switch(void **saveSp, void *loadSp);
asm(R"(
  .text
  .globl simt_ctx_switch
  .type simt_ctx_switch,@function
simt_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_ctx_switch,.-simt_ctx_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace {
struct Context {
  void *sp = nullptr;
};
void switchContext(Context &from, Context &to) { simt_ctx_switch(&from.sp, to.sp); }
/** A fresh context that starts `entry` on [stack, stack + bytes) (entry never returns). */
void makeContext(Context &ctx, char *stack, size_t bytes, void (*entry)()) {
  auto top = (uintptr_t)(stack + bytes) & ~(uintptr_t)15;
  auto *slot = (uint64_t *)top;
  slot[-1] = 0;                  // fake return address of entry: rsp ≡ 8 (mod 16) at its first instruction
  slot[-2] = (uint64_t)entry;    // simt_ctx_switch's ret
  for (int r = 3; r <= 8; r++) slot[-r] = 0;  // rbp rbx r12 r13 r14 r15
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  auto *control = (unsigned char *)&slot[-9];
  __builtin_memcpy(control, &mxcsr, 4);
  __builtin_memcpy(control + 4, &fpucw, 2);
  ctx.sp = &slot[-9];
}
}  // namespace
#else
#include <ucontext.h>
namespace {
struct Context {
  ucontext_t uc;
};
void switchContext(Context &from, Context &to) { swapcontext(&from.uc, &to.uc); }
__attribute__((noinline)) void makeContext(Context &ctx, char *stack, size_t bytes, void (*entry)()) {
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = stack;
  ctx.uc.uc_stack.ss_size = bytes;
  ctx.uc.uc_link = nullptr;
  makecontext(&ctx.uc, entry, 0);
}
}  // namespace
#endif

namespace simt {
thread_local ThreadState *current = nullptr;

namespace {
enum class Wait { None, Block, Warp, Done };

struct Fiber {
  Context ctx;
  ThreadState state;
  Wait wait = Wait::None;
  const void *deposit = nullptr;  // warp exchange: this lane's bytes
  void *collect = nullptr;        // warp exchange: where this lane wants the whole warp's bytes
  size_t bytes = 0;
};

constexpr size_t kStackBytes = 128 * 1024;

struct Scheduler {
  Context main;
  std::vector<Fiber> fibers;
  const std::function<void()> *body = nullptr;
  Fiber *running = nullptr;
};
thread_local Scheduler *sched = nullptr;

void fiber_entry() {
  Scheduler *s = sched;
  (*s->body)();
  s->running->wait = Wait::Done;
  switchContext(s->running->ctx, s->main);
}

void yield_to_scheduler() {
  Fiber *f = sched->running;
  switchContext(f->ctx, sched->main);
  current = &sched->running->state;
}

/** Fiber stacks, allocated once per host thread and never zero-filled. */
char *fiberStack(unsigned t) {
  thread_local std::vector<std::unique_ptr<char[]>> stacks;
  while (stacks.size() <= t) stacks.emplace_back(new char[kStackBytes]);
  return stacks[t].get();
}

void prepare(Fiber &f, unsigned t, dim3 block, dim3 blockId, dim3 grid) {
  f.state.tid = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
  f.state.bid = blockId;
  f.state.bdim = block;
  f.state.gdim = grid;
  f.state.lane = t & 31;
  f.state.warp = t >> 5;
  f.wait = Wait::None;
  makeContext(f.ctx, fiberStack(t), kStackBytes, fiber_entry);
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
  const unsigned warps = (n + 31) / 32;

  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        for (unsigned t = 0; t < n; t++) prepare(s.fibers[t], t, block, dim3(bx, by, bz), grid);
        std::vector<bool> runnable(n, true);
        for (;;) {
          for (unsigned t = 0; t < n; t++) {
            if (!runnable[t]) continue;
            s.running = &s.fibers[t];
            current = &s.fibers[t].state;
            s.fibers[t].wait = Wait::None;
            switchContext(s.main, s.fibers[t].ctx);
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
                if (bytes) std::memcpy((char *)s.fibers[t].collect + (u - lo) * bytes, s.fibers[u].deposit, bytes);
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
