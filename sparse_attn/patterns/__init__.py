"""patterns stage of sparse-attn (see ARCHITECTURE)."""
