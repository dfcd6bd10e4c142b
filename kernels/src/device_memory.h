// Device memory for the forward and the kernel tests: cudaMalloc'd (never managed) on the device, the heap under
// the emulation, where "device" pointers are host pointers.
#pragma once
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "simt.h"

namespace sana {

#if defined(__CUDACC__)
inline void check(cudaError_t e, const char *what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
inline void *deviceAlloc(size_t bytes) {
  void *p = nullptr;
  check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
  return p;
}
inline void deviceFree(void *p) { cudaFree(p); }
inline void toDevice(void *dst, const void *src, size_t bytes, simt::Stream s) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync H2D");
}
inline void toHost(void *dst, const void *src, size_t bytes, simt::Stream s) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync D2H");
}
inline void deviceZero(void *p, size_t bytes, simt::Stream s) { check(cudaMemsetAsync(p, 0, bytes, s), "cudaMemsetAsync"); }
inline void checkLaunch(const char *what) { check(cudaGetLastError(), what); }
#else
inline void *deviceAlloc(size_t bytes) {
  void *p = std::malloc(bytes ? bytes : 1);
  if (!p) throw std::runtime_error("out of host memory");
  return p;
}
inline void deviceFree(void *p) { std::free(p); }
inline void toDevice(void *dst, const void *src, size_t bytes, simt::Stream) { std::memcpy(dst, src, bytes); }
inline void toHost(void *dst, const void *src, size_t bytes, simt::Stream) { std::memcpy(dst, src, bytes); }
inline void deviceZero(void *p, size_t bytes, simt::Stream) { std::memset(p, 0, bytes); }
inline void checkLaunch(const char *) {}
#endif

/** One device allocation, freed with its owner. */
struct Buffer {
  void *ptr = nullptr;
  size_t bytes = 0;
  Buffer() = default;
  explicit Buffer(size_t n) : ptr(deviceAlloc(n)), bytes(n) {}
  Buffer(const Buffer &) = delete;
  Buffer &operator=(const Buffer &) = delete;
  Buffer(Buffer &&o) noexcept : ptr(o.ptr), bytes(o.bytes) { o.ptr = nullptr; }
  Buffer &operator=(Buffer &&o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(bytes, o.bytes);
    return *this;
  }
  ~Buffer() {
    if (ptr) deviceFree(ptr);
  }
  template <class T> T *as() const { return (T *)ptr; }
};

inline Buffer upload(const void *data, size_t bytes) {
  Buffer b(bytes);
  toDevice(b.ptr, data, bytes, nullptr);
  return b;
}
inline Buffer upload(const std::vector<float> &v) { return upload(v.data(), v.size() * sizeof(float)); }

inline int ceilDiv(int a, int b) { return (a + b - 1) / b; }
inline int roundUp(int a, int b) { return ceilDiv(a, b) * b; }

}  // namespace sana
