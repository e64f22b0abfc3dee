"""What a LiteRT file holds and what XNNPack runs of it: the export tests' view of a graph.

`xnnpack_delegation` reads the interpreter's private `_get_ops_details`, which
is why this lives with the tests and not in the product.
"""

import collections
import importlib
import os
from pathlib import Path


def litert_operators(path):
    """`{"builtin": Counter(op name), "custom": Counter(custom code)}` of a LiteRT file, read from its flatbuffer.

    Custom codes starting with "Flex" are TensorFlow ops (SELECT_TF_OPS) that need
    the Flex delegate, which LiteRT's plain runtime lacks.
    """
    schema = importlib.import_module("ai_edge_litert.schema_py_generated")
    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    counts = {"builtin": collections.Counter(), "custom": collections.Counter()}
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(i).OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                counts["custom"][code.CustomCode().decode()] += 1
            else:
                counts["builtin"][names[builtin]] += 1
    return counts


def xnnpack_delegation(path, input_shape):
    """Which ops of a LiteRT file XNNPack runs at `input_shape`: `(delegated, not_delegated, partitions)`.

    The interpreter applies XNNPack by default; each delegated partition becomes one
    DELEGATE node whose inputs and outputs bound the original nodes it replaced, so
    a node is delegated when it lies between a DELEGATE node's outputs and inputs.
    Returns two `Counter`s of op names and the number of partitions.
    """
    interpreter = importlib.import_module("ai_edge_litert.interpreter").Interpreter(model_path=os.fspath(path))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], list(input_shape))
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()
    original = [n for n in nodes if n["op_name"] != "DELEGATE"]
    producer = {int(t): n["index"] for n in original for t in n["outputs"]}
    delegated = set()
    partitions = [n for n in nodes if n["op_name"] == "DELEGATE"]
    for partition in partitions:
        boundary = {int(t) for t in partition["inputs"]}
        pending = [int(t) for t in partition["outputs"]]
        while pending:
            tensor = pending.pop()
            if tensor in boundary or tensor not in producer or producer[tensor] in delegated:
                continue
            delegated.add(producer[tensor])
            pending.extend(int(t) for t in nodes[producer[tensor]]["inputs"] if t >= 0)
    inside = collections.Counter(n["op_name"] for n in original if n["index"] in delegated)
    outside = collections.Counter(n["op_name"] for n in original if n["index"] not in delegated)
    return inside, outside, len(partitions)
