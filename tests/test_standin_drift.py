"""The stand-ins (tests/standins/tensorrt_api.py) cannot drift from the real TensorRT-RTX bindings.

For every stand-in family (8.5, 8.6, 10, 11, rtx), every class, method, property, enum member and module
function the stand-in provides that shares a name with the real `tensorrt_rtx` module must exist there with
the same shape: the same argument names (read from pybind11's signature docstrings), the same kind of return
value, a property where the stand-in has one (settable where the stand-in lets code set it), and, for the
rtx stand-in, the same enum values. The rtx stand-in claims to be TensorRT-RTX, so every name it has must
exist in the real module. Names only older TensorRT has (BuilderFlag.FP16, int8_calibrator, ...) are not
shared and not checked here.
"""

from __future__ import annotations

import inspect
import re

import pytest
from rtx_helpers import real_tensorrt_rtx
from standins.tensorrt_api import VERSIONS, make_tensorrt

STANDIN_ONLY = {"calls", "roadseg_flavour", "standin_gpu", "standin_target"}
# Attributes the code under test reads from objects the stand-ins create in __init__ (not class-level).
INSTANCE_ATTRIBUTES = {"ITensor": ("name", "shape", "dtype"), "IExecutionContext": ("engine",)}
# Real classes with a Python constructor; the stand-ins' other constructors are their own business.
CONSTRUCTIBLE = {"Logger", "Builder", "OnnxParser", "Runtime"}
SIGNATURE = re.compile(r"^\s*(?:\d+\.\s*)?(\w+)\((.*)\)\s*->\s*(.+?)\s*$", re.M)


@pytest.fixture(scope="module")
def real():
    return real_tensorrt_rtx()


def split_arguments(text: str) -> list[str]:
    """Top-level comma split (types hold brackets and commas)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[(<{"
        depth -= ch in "])>}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in [*parts, current] if p.strip()]


def return_kind(annotation: str) -> str:
    name = annotation.strip().strip("'\"").rsplit(".", 1)[-1]
    if name in ("None", "bool", "int", "str", "float", "tuple"):
        return name
    if name in ("bytes", "IHostMemory", "Buffer"):
        return "buffer"
    return "object"


def real_signatures(function) -> list[tuple[list[str], list[str], str]]:
    """[(argument names, required names, return kind)] per pybind overload, self excluded."""
    found = []
    for _name, arguments, returns in SIGNATURE.findall(function.__doc__ or ""):
        names, required = [], []
        for argument in split_arguments(arguments):
            name = argument.split(":")[0].split("=")[0].strip()
            if name in ("self", "*args", "**kwargs"):
                continue
            names.append(name)
            if "=" not in argument:
                required.append(name)
        found.append((names, required, return_kind(returns)))
    return found


def standin_signature(function) -> tuple[list[str], str]:
    signature = inspect.signature(function)
    names = [p for p in signature.parameters if p != "self"]
    annotation = signature.return_annotation
    if annotation is inspect.Signature.empty:
        return names, "unannotated (annotate the stand-in's return type)"
    return names, return_kind(annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "x"))


def is_enum(value) -> bool:
    return isinstance(value, type) and hasattr(value, "__members__")


def check_method(standin_cls, real_cls, name: str, problems: list[str]) -> None:
    names, kind = standin_signature(getattr(standin_cls, name))
    overloads = real_signatures(getattr(real_cls, name))
    if not overloads:
        problems.append(f"{real_cls.__name__}.{name}: no signature in the real docstring")
        return
    for real_names, required, real_kind in overloads:
        if real_names[: len(names)] == names and set(required) <= set(names) and real_kind == kind:
            return
    problems.append(f"{real_cls.__name__}.{name}{tuple(names)} -> {kind} matches none of the real "
                    f"{[(n, k) for n, _r, k in overloads]}")


def check_class(standin_cls, real_cls, strict: bool, problems: list[str]) -> None:
    if standin_cls.__name__ in CONSTRUCTIBLE:
        check_method(standin_cls, real_cls, "__init__", problems)
    members = {n: v for klass in reversed(standin_cls.__mro__[:-1]) for n, v in vars(klass).items()}
    settable = set(getattr(standin_cls, "_settable", ()))
    for name, value in members.items():
        if name.startswith("_"):
            continue
        if not hasattr(real_cls, name):
            if strict:
                problems.append(f"{real_cls.__name__}.{name}: the rtx stand-in has it, TensorRT-RTX does not")
            continue
        real_value = getattr(real_cls, name)
        if not (isinstance(value, property) or name in settable or callable(value)):
            if int(value) != int(real_value):  # a constant such as Logger.WARNING
                problems.append(f"{real_cls.__name__}.{name} = {value} in the stand-in, {int(real_value)} real")
        elif isinstance(value, property) or name in settable:
            if not isinstance(real_value, property):
                problems.append(f"{real_cls.__name__}.{name}: a property in the stand-in, not in TensorRT-RTX")
            elif name in settable and real_value.fset is None:
                problems.append(f"{real_cls.__name__}.{name}: settable in the stand-in, read-only in TensorRT-RTX")
        else:
            check_method(standin_cls, real_cls, name, problems)
    for name in settable | set(INSTANCE_ATTRIBUTES.get(standin_cls.__name__, ())):
        if not hasattr(real_cls, name) and not strict:
            continue  # only older TensorRT has it (int8_calibrator)
        real_value = getattr(real_cls, name, None)
        if not isinstance(real_value, property):
            problems.append(f"{real_cls.__name__}.{name}: the stand-in's attribute is no property in TensorRT-RTX")


def drift(standin, real, strict: bool) -> list[str]:
    problems: list[str] = []
    for name, value in vars(standin).items():
        if name.startswith("_") or name in STANDIN_ONLY:
            continue
        if not hasattr(real, name):
            if strict:
                problems.append(f"{name}: the rtx stand-in has it, TensorRT-RTX does not")
            continue
        real_value = getattr(real, name)
        if is_enum(value):
            for member, flag in value.__members__.items():
                if member not in real_value.__members__:
                    if strict:
                        problems.append(f"{name}.{member}: not in TensorRT-RTX")
                    continue
                if strict and int(flag) != int(real_value.__members__[member]):
                    problems.append(f"{name}.{member} = {int(flag)} in the stand-in, "
                                    f"{int(real_value.__members__[member])} in TensorRT-RTX")
        elif isinstance(value, type):
            check_class(value, real_value, strict, problems)
        elif callable(value) and not callable(real_value):
            problems.append(f"{name}: a function in the stand-in, not in TensorRT-RTX")
    return problems


@pytest.mark.parametrize("family", list(VERSIONS))
def test_standin_shares_its_shape_with_the_real_tensorrt_rtx(real, family):
    standin = make_tensorrt(VERSIONS[family])
    problems = drift(standin, real, strict=family == "rtx")
    assert not problems, "\n".join(problems)


def test_drift_check_catches_a_renamed_argument_and_a_missing_name(real):
    """The check itself can fail: a stand-in whose method lost the real argument name, or invents a name."""
    standin = make_tensorrt(VERSIONS["rtx"])

    def set_compute_capability(self, capability, index: int) -> bool:  # real: (compute_capability, index)
        return True

    standin.IBuilderConfig.set_compute_capability = set_compute_capability
    standin.Builder.invented = lambda self: None
    problems = drift(standin, real, strict=True)
    assert any("set_compute_capability" in p for p in problems)
    assert any("Builder.invented" in p for p in problems)
