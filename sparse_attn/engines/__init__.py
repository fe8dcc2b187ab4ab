"""engines stage of sparse-attn (see ARCHITECTURE)."""
