// CPU emulation (emu.h): the part of cooperative_groups that se_fused.cu and
// the forward's cooperative excitation (se_forward.cu) use.
#pragma once
#include "emu.h"

#include <algorithm>
// CUDA's device min / max overloads (se_fused.cu calls them unqualified).
using std::max;
using std::min;

namespace cooperative_groups {
struct cluster_group {
  unsigned block_rank() const { return ::emu::cluster_rank(); }
  unsigned num_blocks() const { return ::emu::cluster_size(); }
  void sync() const { ::emu::cluster_sync(); }
  template <class T> T* map_shared_rank(T* p, unsigned rank) const {
    return static_cast<T*>(::emu::map_shared(const_cast<void*>(static_cast<const void*>(p)), rank));
  }
};
inline cluster_group this_cluster() { return cluster_group{}; }
struct grid_group {
  void sync() const { ::emu::grid_sync(); }
};
inline grid_group this_grid() { return grid_group{}; }
}  // namespace cooperative_groups
