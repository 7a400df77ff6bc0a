// cappa-torch-ext: a C ABI over the parts of libtorch that tch does not bind.
//
// - autocast: the per-device autocast switch and dtype (tch's autocast is CUDA fp16 only);
// - c10d: a process group (Gloo, or NCCL when built with it) over a TCPStore rendezvous, and
//   the collectives the trainer needs. Every entry point catches C++ exceptions and returns
//   the message (malloc'ed, freed by cappa_free_string) instead of letting them cross the FFI.
//
// Tensors are passed as `at::Tensor*`, the handle that tch's `Tensor::as_ptr` gives.

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#ifdef CAPPA_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef CAPPA_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

char* copy_message(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

// Runs `body`; on an exception stores its message in *error and returns false.
template <typename F>
bool guarded(char** error, F&& body) {
  try {
    body();
    return true;
  } catch (const c10::Error& e) {
    *error = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return false;
}

at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

}  // namespace

extern "C" {

void cappa_free_string(char* s) { std::free(s); }

int cappa_has_gloo() {
#ifdef CAPPA_WITH_GLOO
  return 1;
#else
  return 0;
#endif
}

int cappa_has_nccl() {
#ifdef CAPPA_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

// ---- autocast -------------------------------------------------------------------------------

bool cappa_autocast_set(int cuda, int enabled, int bf16, int* was_enabled, int* was_bf16,
                        char** error) {
  return guarded(error, [&] {
    auto type = device_type(cuda);
    *was_enabled = at::autocast::is_autocast_enabled(type) ? 1 : 0;
    *was_bf16 = at::autocast::get_autocast_dtype(type) == at::kBFloat16 ? 1 : 0;
    at::autocast::set_autocast_dtype(type, bf16 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(type, enabled != 0);
  });
}

bool cappa_autocast_nesting(int increment, int* depth, char** error) {
  return guarded(error, [&] {
    *depth = increment ? at::autocast::increment_nesting() : at::autocast::decrement_nesting();
    if (!increment && *depth == 0) {
      at::autocast::clear_cache();
    }
  });
}

// ---- backend switches -----------------------------------------------------------------------

void cappa_set_tf32(int enabled) {
  at::globalContext().setAllowTF32CuBLAS(enabled != 0);
  at::globalContext().setAllowTF32CuDNN(enabled != 0);
}

int cappa_tf32() {
  return at::globalContext().allowTF32CuBLAS() && at::globalContext().allowTF32CuDNN() ? 1 : 0;
}

// ---- optimizer ----------------------------------------------------------------------------

// torch.optim.AdamW(fused=True)'s kernel on one tensor; `step` is a one-element float tensor
// holding the step count after this update (torch increments it before the call).
bool cappa_fused_adamw(at::Tensor* param, at::Tensor* grad, at::Tensor* exp_avg,
                       at::Tensor* exp_avg_sq, at::Tensor* step, double lr, double beta1,
                       double beta2, double weight_decay, double eps, char** error) {
  return guarded(error, [&] {
    std::vector<at::Tensor> params{*param}, grads{*grad}, m{*exp_avg}, v{*exp_avg_sq},
        steps{*step}, none;
    at::_fused_adamw_(params, grads, m, v, none, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
  });
}

// ---- c10d -----------------------------------------------------------------------------------

struct cappa_pg;

#if defined(CAPPA_WITH_GLOO) || defined(CAPPA_WITH_NCCL)
struct cappa_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  bool nccl;
  std::chrono::milliseconds timeout;
};

static void wait(cappa_pg* pg, const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait(pg->timeout)) {
    throw std::runtime_error("the collective did not finish within the timeout");
  }
}
#endif

// host_store: rank 0 hosts the TCPStore (else every rank connects to one that a launcher such
// as torchrun's agent already hosts).
cappa_pg* cappa_pg_new(const char* host, int port, int rank, int world_size, int host_store,
                       int backend_nccl, int timeout_ms, char** error) {
#if defined(CAPPA_WITH_GLOO) || defined(CAPPA_WITH_NCCL)
  cappa_pg* out = nullptr;
  guarded(error, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = host_store != 0 && rank == 0;
    opts.numWorkers = static_cast<std::size_t>(world_size);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>("cappa", tcp);
    c10::intrusive_ptr<c10d::Backend> backend;
    if (backend_nccl) {
#ifdef CAPPA_WITH_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options);
#else
      throw std::runtime_error(
          "this build of cappa-torch-ext has no NCCL backend (the CUDA and NCCL headers were "
          "missing when it was compiled: run `cargo xtask setup --cuda` and rebuild)");
#endif
    } else {
#ifdef CAPPA_WITH_GLOO
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* iface = std::getenv("GLOO_SOCKET_IFNAME");
      if (iface != nullptr && *iface != '\0') {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
#else
      throw std::runtime_error("this build of cappa-torch-ext has no Gloo backend");
#endif
    }
    out = new cappa_pg{store, backend, backend_nccl != 0, timeout};
  });
  return out;
#else
  (void)host; (void)port; (void)rank; (void)world_size; (void)host_store; (void)backend_nccl;
  (void)timeout_ms;
  *error = copy_message("cappa-torch-ext was built without c10d");
  return nullptr;
#endif
}

void cappa_pg_free(cappa_pg* pg) {
#if defined(CAPPA_WITH_GLOO) || defined(CAPPA_WITH_NCCL)
  delete pg;
#else
  (void)pg;
#endif
}

// op: 0 sum, 1 average, 2 max.
bool cappa_pg_all_reduce(cappa_pg* pg, at::Tensor* tensor, int op, char** error) {
#if defined(CAPPA_WITH_GLOO) || defined(CAPPA_WITH_NCCL)
  return guarded(error, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.timeout = pg->timeout;
    // Gloo has no AVG: sum, then divide (what torch.distributed users do by hand).
    bool divide = op == 1 && !pg->nccl;
    options.reduceOp = op == 2   ? c10d::ReduceOp(c10d::ReduceOp::MAX)
                       : op == 1 && pg->nccl ? c10d::ReduceOp(c10d::ReduceOp::AVG)
                                              : c10d::ReduceOp(c10d::ReduceOp::SUM);
    wait(pg, pg->backend->allreduce(tensors, options));
    if (divide) {
      tensor->div_(pg->backend->getSize());
    }
  });
#else
  (void)pg; (void)tensor; (void)op;
  *error = copy_message("cappa-torch-ext was built without c10d");
  return false;
#endif
}

// Gathers `input` from every rank into a new tensor (world_size, *input.shape) in rank order.
bool cappa_pg_all_gather(cappa_pg* pg, at::Tensor* input, at::Tensor** output, char** error) {
#if defined(CAPPA_WITH_GLOO) || defined(CAPPA_WITH_NCCL)
  return guarded(error, [&] {
    int size = pg->backend->getSize();
    at::Tensor contiguous = input->contiguous();
    std::vector<at::Tensor> inputs{contiguous};
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < size; ++r) {
      outputs[0].push_back(at::empty_like(contiguous));
    }
    c10d::AllgatherOptions options;
    options.timeout = pg->timeout;
    wait(pg, pg->backend->allgather(outputs, inputs, options));
    *output = new at::Tensor(at::stack(outputs[0], 0));
  });
#else
  (void)pg; (void)input; (void)output;
  *error = copy_message("cappa-torch-ext was built without c10d");
  return false;
#endif
}

bool cappa_pg_broadcast(cappa_pg* pg, at::Tensor* tensor, int root, char** error) {
#if defined(CAPPA_WITH_GLOO) || defined(CAPPA_WITH_NCCL)
  return guarded(error, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = pg->timeout;
    wait(pg, pg->backend->broadcast(tensors, options));
  });
#else
  (void)pg; (void)tensor; (void)root;
  *error = copy_message("cappa-torch-ext was built without c10d");
  return false;
#endif
}

bool cappa_pg_barrier(cappa_pg* pg, char** error) {
#if defined(CAPPA_WITH_GLOO) || defined(CAPPA_WITH_NCCL)
  return guarded(error, [&] {
    c10d::BarrierOptions options;
    options.timeout = pg->timeout;
    wait(pg, pg->backend->barrier(options));
  });
#else
  (void)pg;
  *error = copy_message("cappa-torch-ext was built without c10d");
  return false;
#endif
}

}  // extern "C"
