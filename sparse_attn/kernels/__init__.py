"""kernels stage of sparse-attn (see ARCHITECTURE)."""
