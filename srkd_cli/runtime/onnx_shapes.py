"""Symbolic shapes on an ONNX graph's tensors, so onnxruntime can fuse what it otherwise cannot."""

from __future__ import annotations

import logging
from typing import Dict, Optional


def with_symbolic_shapes(proto):
    """The graph with symbolic shapes on every tensor (`height`, `width`, ...), where they can be inferred.

    With them onnxruntime can prove that an Add's two inputs have one shape and fold the Add
    into the convolution before it (its NCHWc Conv + Sum fusion); in a graph whose sizes are
    unknown, every Add stays a pass of its own over memory (SqueezeSR: 6 % slower). Only for
    conv nets: SwinIR's window padding defeats the symbolic arithmetic. Graphs of convolutions
    and element-wise ops (SqueezeSR) are annotated here directly; others
    go through onnxruntime's symbolic shape inference, whose sympy import alone takes ~0.5 s.
    """
    shapes = conv_net_shapes(proto.graph)
    if shapes is not None:
        _annotate(proto.graph, shapes)
        return proto
    # Its warnings (e.g. "Unable to determine if 2*height <= ..." on BSRN's crop) are about shapes it
    # leaves unknown, which costs speed at most: not for the user's terminal.
    log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    except Exception:  # an optimisation only: the graph without shapes runs the same
        return proto
    finally:
        log.setLevel(level)


_ELEMENTWISE = {"Relu", "Add", "Sub", "Mul", "Div", "Sigmoid", "Clip", "LeakyRelu", "Identity"}


def conv_net_shapes(graph) -> Optional[Dict[str, list]]:
    """Each tensor's dims (ints or symbol names) for a graph of 4-D float tensors built only from
    (ungrouped, undilated) Convs, element-wise ops (with constants), channel Concat and
    DepthToSpace; None otherwise."""
    from onnx import helper

    inits = {t.name: t for t in graph.initializer}
    consts = set(inits)
    if len(graph.input) != 1:
        return None
    dims = graph.input[0].type.tensor_type.shape.dim
    shapes: Dict[str, list] = {graph.input[0].name: [d.dim_param or d.dim_value for d in dims]}
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = [shapes.get(i) for i in node.input if i and i not in consts]
        if node.op_type == "Constant" or (node.op_type == "Identity" and node.input[0] in consts):
            consts.update(node.output)  # the exporter aliases shared initializers through Identity
            if node.input and node.input[0] in inits:
                inits[node.output[0]] = inits[node.input[0]]
            continue
        if len(node.output) != 1 or any(i is None for i in ins) or not ins:
            return None
        x = ins[0]
        if node.op_type == "Conv":
            w = inits.get(node.input[1])
            if w is None or len(w.dims) != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                return None
            k = list(w.dims[2:])
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if any(v != 1 for v in attrs.get("dilations", [1, 1])) or int(attrs.get("group", 1)) != 1:
                return None
            strides = list(attrs.get("strides", [1, 1]))
            spatial = [_conv_dim(x[2 + i], k[i], pads[i] + pads[i + 2], strides[i]) for i in range(2)]
            shapes[node.output[0]] = [x[0], int(w.dims[0])] + spatial
        elif node.op_type in _ELEMENTWISE:
            if any(i != x for i in ins):
                return None
            shapes[node.output[0]] = x
        elif node.op_type == "Concat" and attrs.get("axis") == 1:
            if any(i[:1] + i[2:] != x[:1] + x[2:] for i in ins) or not all(isinstance(i[1], int) for i in ins):
                return None
            shapes[node.output[0]] = [x[0], sum(i[1] for i in ins), x[2], x[3]]
        elif node.op_type == "DepthToSpace":
            b = int(attrs["blocksize"])
            if not isinstance(x[1], int):
                return None
            shapes[node.output[0]] = [x[0], x[1] // (b * b)] + [d * b if isinstance(d, int) else f"{d}*{b}" for d in x[2:]]
        else:
            return None
    return shapes


def _conv_dim(d, k: int, pad: int, stride: int):
    """A conv's output size along one axis, for a size that is an int or a symbol name."""
    if isinstance(d, int):
        return (d + pad - k) // stride + 1
    if stride == 1 and pad == k - 1:
        return d
    off = pad - k
    return f"({d}{off:+d})//{stride}+1" if off else f"{d}//{stride}+1"


def _annotate(graph, shapes: Dict[str, list]) -> None:
    from onnx import TensorProto, helper

    outputs = {o.name for o in graph.output}
    del graph.value_info[:]
    for name, dims in shapes.items():
        if name == graph.input[0].name or name in outputs:
            continue
        graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    for out in graph.output:
        if out.name in shapes:
            out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, shapes[out.name]))


__all__ = ["conv_net_shapes", "with_symbolic_shapes"]
