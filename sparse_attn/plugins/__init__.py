"""plugins stage of sparse-attn (see ARCHITECTURE): the TensorRT plugin of the op.

* :mod:`.aot`: ahead-of-time PTX of the Triton kernel (no GPU needed to compile).
* :mod:`.tensorrt_plugin`: ``register()`` declares ``sparse_attn::BlockSparseAttention`` to
  TensorRT through ``tensorrt.plugin`` (importable without TensorRT).

See ``docs/gpu.md`` for what has and has not run on real hardware.
"""
