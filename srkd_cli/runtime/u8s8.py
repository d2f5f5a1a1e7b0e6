"""Whether this CPU's onnxruntime int8 convs sum u8 x s8 products exactly (see `quantize`).

Kept apart from `quantize` and free of torch, so the probe can run under an emulated CPU
(qemu-user) in seconds rather than the half-minute that importing torch there takes.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=None)
def u8s8_saturates() -> bool:
    """Whether onnxruntime's int8 convs on this CPU saturate u8 x s8 pair sums at 16 bits.

    Runs one 1x1 QDQ conv over 16 channels of 255 x 127 (exact sum 518,160, 126.5 output steps
    of 4096); a saturating kernel (x86 without VNNI) gives 8 x 32,767, 64 steps.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    c = 16
    consts = {"sx": np.array(1.0, np.float32), "zx": np.array(0, np.uint8), "w": np.full((1, c, 1, 1), 127, np.int8),
              "sw": np.array([1.0], np.float32), "zw": np.array([0], np.int8), "sy": np.array(4096.0, np.float32),
              "zy": np.array(0, np.uint8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"])]
    graph = helper.make_graph(nodes, "u8s8-probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.full((1, c, 4, 4), 255, np.float32)})
    return float(np.max(y)) < 100 * 4096
