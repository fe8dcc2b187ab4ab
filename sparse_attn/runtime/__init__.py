"""runtime stage of sparse-attn (see ARCHITECTURE)."""
