"""export stage of sparse-attn (see ARCHITECTURE)."""
