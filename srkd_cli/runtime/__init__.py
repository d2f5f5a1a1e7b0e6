"""Mechanisms that run a torch model some other way, knowing nothing of architectures.

`graph` (in-memory ONNX and TorchScript forms, with `onnx_shapes`), `ort` (onnxruntime sessions
behind the model interface), `tiles` (exact pieces with a halo), `shuffle` (pixel-shuffle
copies), `allocator` (glibc's malloc tuning) and `u8s8` (whether this CPU's int8 convs
saturate). They import nothing of srkd but `errors`; `backends.py` decides which architecture
runs in which form (it asks `archs.ArchSpec`).
"""
