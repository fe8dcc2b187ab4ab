"""plugins stage of sparse-attn (see ARCHITECTURE)."""
