// The compiled CPU kernels of models/cpu_kernels.py, one extension (one translation unit, so torch's headers are
// compiled once): the selective scan and the mixer's conv + SiLU (selective_scan.h), the cross-entropy of the
// training loss (cross_entropy.h). The kernels include only the ATen headers they use and this file torch's pybind
// header: compiled alone here, torch/extension.h takes 26.8 s, these headers 9.5 s.

#include <torch/csrc/utils/pybind.h>

#include "cross_entropy.h"
#include "selective_scan.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace mom_cpu;
  m.def("forward", &scan_forward, "selective scan, forward: (out, pre-gate output, chunk-boundary states)");
  m.def("backward", &scan_backward, "selective scan, backward: (du, d delta, dz, dA, dB_t, dC_t, dD, d bias)");
  m.def("conv_forward", &conv_forward, "causal depthwise conv1d + SiLU, forward (time-major output)");
  m.def("conv_backward", &conv_backward, "causal depthwise conv1d + SiLU, backward: (dx, d weight, d bias)");
  m.def("ce_forward", &ce_forward, "cross-entropy per row, forward: (ce, logsumexp)");
  m.def("ce_backward", &ce_backward, "cross-entropy per row, backward: d logits");
}
