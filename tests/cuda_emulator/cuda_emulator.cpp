// The emulator's scheduler: fibers, the checked barrier, launch checks, schedules (see cuda_emulator.h).
#include "cuda_emulator.h"

#include <c10/util/Exception.h>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMULATOR_ASAN 1
#endif

thread_local uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
thread_local dim3 blockDim, gridDim;

namespace cuda_emulator {
namespace {

// A fiber's saved execution context.  On x86-64 a switch saves the callee-saved registers on
// the old stack and swaps stack pointers (about 10 ns; ucontext's swapcontext makes a system
// call per switch); elsewhere ucontext serves.
#if defined(__x86_64__)
struct Context {
  void* sp = nullptr;
};
extern "C" void cuda_emulator_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.p2align 4
.globl cuda_emulator_switch
.type cuda_emulator_switch,@function
cuda_emulator_switch:
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
.size cuda_emulator_switch,.-cuda_emulator_switch
)");
void switch_context(Context& from, Context& to) { cuda_emulator_switch(&from.sp, to.sp); }
// A new context that starts in entry() on the given stack (entry never returns).
void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
  auto* top = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack + size)) & ~uintptr_t(15));
  top[-1] = 0;                                    // entry's (never used) return address
  top[-2] = reinterpret_cast<uint64_t>(entry);    // popped by `ret`
  for (int r = 3; r <= 8; ++r) top[-r] = 0;       // rbp, rbx, r12..r15
  top[-9] = 0x1F80ull | (0x037Full << 32);        // default MXCSR and x87 control word
  c.sp = top - 9;
}
#else
struct Context {
  ucontext_t uc;
};
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

#ifdef CUDA_EMULATOR_ASAN
constexpr size_t kStackBytes = 1 << 20;  // sanitizers enlarge frames
#else
constexpr size_t kStackBytes = 256 << 10;
#endif
constexpr size_t kGuardBytes = 4096;

enum class State { Ready, AtBarrier, Done, Failed };

struct Fiber {
  Context context;
  char* stack = nullptr;  // kGuardBytes of PROT_NONE, then kStackBytes
  State state = State::Ready;
  const char* barrier_file = nullptr;
  int barrier_line = 0;
  std::exception_ptr error;
};

// One grid launch in progress on this OS thread.
struct Grid {
  const LaunchSite* site;
  void (*body)(void*);
  void* context;
  std::vector<Fiber>* fibers;
  size_t current = 0;
  Context scheduler;
#ifdef CUDA_EMULATOR_ASAN
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
#endif
};

thread_local Grid* running = nullptr;
thread_local std::vector<Fiber> fiber_pool;
std::atomic<int64_t> launches{0};

std::string describe(const LaunchSite& s) {
  std::ostringstream o;
  o << "kernel " << s.kernel << " launched at " << s.file << ":" << s.line;
  return o.str();
}

std::string block_str() {
  std::ostringstream o;
  o << "block (" << blockIdx.x << ", " << blockIdx.y << ", " << blockIdx.z << ")";
  return o.str();
}

std::string thread_str(const Fiber* base, const Fiber& f) {
  const auto t = static_cast<unsigned>(&f - base);
  std::ostringstream o;
  o << "thread (" << t % blockDim.x << ", " << (t / blockDim.x) % blockDim.y << ", " << t / (blockDim.x * blockDim.y)
    << ")";
  return o.str();
}

// Switches from the scheduler to fiber f, and back when it waits or ends.
void resume(Grid& g, Fiber& f) {
#ifdef CUDA_EMULATOR_ASAN
  __sanitizer_start_switch_fiber(&g.scheduler_fake_stack, f.stack + kGuardBytes, kStackBytes);
#endif
  switch_context(g.scheduler, f.context);
#ifdef CUDA_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(g.scheduler_fake_stack, nullptr, nullptr);
#endif
}

// Switches from the running fiber to the scheduler; `ending`: the fiber never runs again.
void yield_to_scheduler(Grid& g, Fiber& f, bool ending) {
#ifdef CUDA_EMULATOR_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(ending ? nullptr : &fake_stack, g.scheduler_stack_bottom, g.scheduler_stack_size);
#else
  (void)ending;
#endif
  switch_context(f.context, g.scheduler);
#ifdef CUDA_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, &g.scheduler_stack_bottom, &g.scheduler_stack_size);
#endif
}

void fiber_entry() {
  Grid& g = *running;
  Fiber& f = (*g.fibers)[g.current];
#ifdef CUDA_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g.scheduler_stack_bottom, &g.scheduler_stack_size);
#endif
  try {
    g.body(g.context);
    f.state = State::Done;
  } catch (...) {
    f.error = std::current_exception();
    f.state = State::Failed;
  }
  yield_to_scheduler(g, f, /*ending=*/true);
  std::abort();  // never resumed
}

void set_thread(size_t t) {
  threadIdx = {static_cast<unsigned>(t % blockDim.x), static_cast<unsigned>((t / blockDim.x) % blockDim.y),
               static_cast<unsigned>(t / (blockDim.x * blockDim.y))};
}

// The schedule: the order of threads between barriers and of blocks in the grid.
struct Schedule {
  enum Kind { Forward, Reverse, Random } kind = Forward;
  uint64_t seed = 0;
};

thread_local std::string schedule_override;

Schedule current_schedule() {
  std::string s = schedule_override;
  if (s.empty()) {
    const char* env = std::getenv("CUDA_EMULATOR_SCHEDULE");
    s = env ? env : "forward";
  }
  Schedule out;
  if (s == "forward") return out;
  if (s == "reverse") {
    out.kind = Schedule::Reverse;
    return out;
  }
  if (s.rfind("random", 0) == 0) {
    out.kind = Schedule::Random;
    out.seed = s.size() > 7 && s[6] == ':' ? std::stoull(s.substr(7)) : 0;
    return out;
  }
  TORCH_CHECK(false, "cuda_emulator: CUDA_EMULATOR_SCHEDULE must be forward, reverse or random[:seed], got '", s, "'");
}

std::vector<size_t> order(size_t n, const Schedule& s, uint64_t salt) {
  std::vector<size_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  if (s.kind == Schedule::Reverse) std::reverse(v.begin(), v.end());
  if (s.kind == Schedule::Random) {
    std::mt19937_64 rng(s.seed * 0x9E3779B97F4A7C15ull + salt);
    std::shuffle(v.begin(), v.end(), rng);
  }
  return v;
}

// Every __shared__ variable seen so far (address -> bytes), and those of the running launch.
std::unordered_map<const void*, size_t> shared_variables;
thread_local std::unordered_set<const void*> launch_shared_variables;
thread_local size_t launch_shared_bytes = 0;
constexpr size_t kStaticSharedLimit = 48 * 1024;

// The running launch's dynamic shared memory: a heap block of exactly its size, so that the
// sanitizer build reports any access past its end.
struct AlignedDelete {
  void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t{128}); }
};
thread_local std::unique_ptr<unsigned char, AlignedDelete> dynamic_shared;
thread_local size_t dynamic_shared_bytes = 0;
std::mutex max_dynamic_mutex;
std::unordered_map<const void*, size_t> max_dynamic_shared;  // kernel -> opted-in bytes
constexpr size_t kDefaultDynamicLimit = 48 * 1024;

void poison(const void* address, size_t bytes) { std::memset(const_cast<void*>(address), 0xFF, bytes); }

// Fills shared memory with 0xFF bytes: NaN for half, bfloat16, float and double.
void poison_shared_memory() {
  for (const auto& [address, bytes] : shared_variables) poison(address, bytes);
  if (dynamic_shared_bytes) poison(dynamic_shared.get(), dynamic_shared_bytes);
}

void check_launch(const LaunchSite& site, const void* kernel, dim3 grid, dim3 block, size_t smem) {
  const auto where = [&] { return describe(site); };
  TORCH_CHECK(grid.x > 0 && grid.y > 0 && grid.z > 0, "cuda_emulator: ", where(), ": zero-size grid (", grid.x, ", ",
              grid.y, ", ", grid.z, ") (cudaErrorInvalidConfiguration)");
  TORCH_CHECK(block.x > 0 && block.y > 0 && block.z > 0, "cuda_emulator: ", where(), ": zero-size block (", block.x,
              ", ", block.y, ", ", block.z, ")");
  TORCH_CHECK(uint64_t(block.x) * block.y * block.z <= 1024 && block.x <= 1024 && block.y <= 1024 && block.z <= 64,
              "cuda_emulator: ", where(), ": block (", block.x, ", ", block.y, ", ", block.z,
              ") exceeds 1024 threads (or the per-dimension limits 1024, 1024, 64)");
  TORCH_CHECK(grid.x <= 2147483647u && grid.y <= 65535 && grid.z <= 65535, "cuda_emulator: ", where(), ": grid (",
              grid.x, ", ", grid.y, ", ", grid.z, ") exceeds the limits (2^31 - 1, 65535, 65535)");
  size_t limit = kDefaultDynamicLimit;
  {
    std::lock_guard<std::mutex> lock(max_dynamic_mutex);
    const auto it = max_dynamic_shared.find(kernel);
    if (it != max_dynamic_shared.end()) limit = std::max(limit, it->second);
  }
  TORCH_CHECK(smem <= limit, "cuda_emulator: ", where(), ": ", smem, " bytes of dynamic shared memory, over the ",
              limit, " bytes allowed (over 48 KB needs cudaFuncSetAttribute(kernel, ",
              "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) first) (cudaErrorInvalidValue)");
}

Fiber* fiber_base = nullptr;

void run_block(Grid& g, std::vector<Fiber>& fibers, const Schedule& schedule, uint64_t block_salt) {
  const size_t n = fibers.size();
  for (size_t t = 0; t < n; ++t) {
    Fiber& f = fibers[t];
    f.state = State::Ready;
    f.error = nullptr;
    f.barrier_file = nullptr;
#ifdef CUDA_EMULATOR_ASAN
    ASAN_UNPOISON_MEMORY_REGION(f.stack + kGuardBytes, kStackBytes);
#endif
    make_context(f.context, f.stack + kGuardBytes, kStackBytes, fiber_entry);
  }
  const std::vector<size_t> seq = order(n, schedule, block_salt);
  while (true) {
    for (size_t t : seq) {
      if (fibers[t].state != State::Ready) continue;
      g.current = t;
      set_thread(t);
      resume(g, fibers[t]);
      if (fibers[t].state == State::Failed) {
        std::ostringstream o;
        try {
          std::rethrow_exception(fibers[t].error);
        } catch (const c10::Error& e) {
          o << e.what_without_backtrace();
        } catch (const std::exception& e) {
          o << e.what();
        }
        TORCH_CHECK(false, "cuda_emulator: ", describe(*g.site), ", ", block_str(), ", ", thread_str(fibers.data(),
                    fibers[t]), ": ", o.str());
      }
    }
    const Fiber* waiting = nullptr;
    const Fiber* done = nullptr;
    for (const Fiber& f : fibers) {
      if (f.state == State::AtBarrier && waiting == nullptr) waiting = &f;
      if (f.state == State::Done && done == nullptr) done = &f;
    }
    if (waiting == nullptr) return;  // every thread returned
    TORCH_CHECK(done == nullptr, "cuda_emulator: ", describe(*g.site), ", ", block_str(), ": ",
                thread_str(fibers.data(), *done), " returned while ", thread_str(fibers.data(), *waiting),
                " waits at __syncthreads() at ", waiting->barrier_file, ":", waiting->barrier_line,
                " (a barrier must be reached by every thread of the block)");
    for (const Fiber& f : fibers) {
      TORCH_CHECK(f.barrier_line == waiting->barrier_line && std::strcmp(f.barrier_file, waiting->barrier_file) == 0,
                  "cuda_emulator: ", describe(*g.site), ", ", block_str(), ": threads wait at different barriers: ",
                  thread_str(fibers.data(), *waiting), " at ", waiting->barrier_file, ":", waiting->barrier_line,
                  ", ", thread_str(fibers.data(), f), " at ", f.barrier_file, ":", f.barrier_line);
    }
    for (Fiber& f : fibers) f.state = State::Ready;  // release the barrier
  }
}

void ensure_fibers(size_t n) {
  while (fiber_pool.size() < n) {
    Fiber f;
    void* mem = mmap(nullptr, kGuardBytes + kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(mem != MAP_FAILED, "cuda_emulator: cannot allocate a fiber stack");
    mprotect(mem, kGuardBytes, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    f.stack = static_cast<char*>(mem);
    fiber_pool.push_back(std::move(f));
  }
}

}  // namespace

void set_max_dynamic_shared(const void* kernel, int bytes) {
  TORCH_CHECK(bytes >= 0 && size_t(bytes) <= kMaxSharedOptin, "cuda_emulator: cudaFuncSetAttribute: ",
              "cudaFuncAttributeMaxDynamicSharedMemorySize must lie in [0, ", kMaxSharedOptin, "], got ", bytes,
              " (cudaErrorInvalidValue)");
  std::lock_guard<std::mutex> lock(max_dynamic_mutex);
  max_dynamic_shared[kernel] = size_t(bytes);
}

void* dynamic_shared_memory(const char* name, const char* file, int line) {
  TORCH_CHECK(running != nullptr, "cuda_emulator: extern __shared__ ", name, " used outside a kernel at ", file, ":",
              line);
  TORCH_CHECK(dynamic_shared_bytes > 0, "cuda_emulator: extern __shared__ ", name, " (", file, ":", line,
              ") used by a kernel launched without dynamic shared memory");
  return dynamic_shared.get();
}

void register_shared(const void* address, size_t bytes, const char* name, const char* file, int line) {
  Grid* g = running;
  TORCH_CHECK(g != nullptr, "cuda_emulator: __shared__ ", name, " declared outside a kernel at ", file, ":", line);
  // The first thread of the first block that declares it poisons it before any thread uses it.
  if (shared_variables.emplace(address, bytes).second) poison(address, bytes);
  if (launch_shared_variables.insert(address).second) {
    launch_shared_bytes += bytes;
    TORCH_CHECK(launch_shared_bytes <= kStaticSharedLimit, "__shared__ ", name, " (", file, ":", line,
                ") brings the kernel's static shared memory to ", launch_shared_bytes,
                " bytes, over the 48 KB a block may use");
    TORCH_CHECK(launch_shared_bytes + dynamic_shared_bytes <= kMaxSharedOptin, "__shared__ ", name, " (", file, ":",
                line, ") brings the kernel's shared memory (static ", launch_shared_bytes, " + dynamic ",
                dynamic_shared_bytes, " bytes) over the ", kMaxSharedOptin, " bytes a block may use");
  }
}

void syncthreads(const char* file, int line) {
  Grid* g = running;
  TORCH_CHECK(g != nullptr, "cuda_emulator: __syncthreads() called outside a kernel at ", file, ":", line);
  Fiber& f = (*g->fibers)[g->current];
  f.state = State::AtBarrier;
  f.barrier_file = file;
  f.barrier_line = line;
  yield_to_scheduler(*g, f, /*ending=*/false);
}

unsigned lane_id() {
  return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32;
}

void check_wmma_pointer(const void* p, unsigned ldm, size_t element_bytes, const char* what) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  TORCH_CHECK(address % 32 == 0, "wmma::", what, ": the pointer must be 256-bit (32-byte) aligned, got an address ",
              address % 32, " bytes past a 32-byte boundary");
  TORCH_CHECK((ldm * element_bytes) % 16 == 0, "wmma::", what, ": ldm must be a multiple of ",
              16 / element_bytes, " elements (16 bytes), got ", ldm);
}

void run_grid(const LaunchSite& site, const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem,
              void (*thread_body)(void*), void* context) {
  TORCH_CHECK(running == nullptr, "cuda_emulator: ", describe(site), " launched from inside a kernel");
  check_launch(site, kernel, grid, block, dynamic_smem);
  // 128-byte aligned like a GPU's shared memory window; exactly dynamic_smem bytes long.
  dynamic_shared.reset(dynamic_smem ? static_cast<unsigned char*>(::operator new[](dynamic_smem, std::align_val_t{128}))
                                    : nullptr);
  dynamic_shared_bytes = dynamic_smem;
  launches.fetch_add(1);
  const Schedule schedule = current_schedule();
  const size_t threads = size_t(block.x) * block.y * block.z;
  ensure_fibers(threads);
  std::vector<Fiber> fibers(threads);
  for (size_t t = 0; t < threads; ++t) fibers[t].stack = fiber_pool[t].stack;
  Grid g{&site, thread_body, context, &fibers};
  running = &g;
  launch_shared_variables.clear();
  launch_shared_bytes = 0;
  blockDim = block;
  gridDim = grid;
  const size_t blocks = size_t(grid.x) * grid.y * grid.z;
  try {
    const std::vector<size_t> block_order = order(blocks, schedule, ~uint64_t(0));
    for (size_t b : block_order) {
      blockIdx = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                  static_cast<unsigned>(b / (size_t(grid.x) * grid.y))};
      poison_shared_memory();
      run_block(g, fibers, schedule, b);
    }
  } catch (...) {
    running = nullptr;
    throw;
  }
  running = nullptr;
}

int64_t launch_count() { return launches.load(); }

void set_schedule(const std::string& s) { schedule_override = s; }

}  // namespace cuda_emulator
