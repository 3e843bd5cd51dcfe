"""
Tuples, templates, strict matching, the canonical wire encoding, and the operations
that use them (L{Kind}).
"""

from lips.tuples._codec import packb, unpackb
from lips.tuples._model import (
    ANY,
    DEFAULT_LIMITS,
    FORMAL_TYPES,
    Limits,
    LTuple,
    Template,
    TemplateError,
    TupleError,
    TupleTooLarge,
    UnknownExtension,
    Value,
    field_key,
    formal_by_name,
    formal_name,
    make_template,
    make_tuple,
    tuple_keys,
)
from lips.tuples._ops import (
    MAX_SCAN,
    MAX_STEPS,
    AbortReason,
    AtomicAborted,
    Kind,
    Step,
    StepOp,
    StepResult,
    Tuples,
    steps_size,
)

__all__ = [
    "ANY",
    "DEFAULT_LIMITS",
    "FORMAL_TYPES",
    "MAX_SCAN",
    "MAX_STEPS",
    "AbortReason",
    "AtomicAborted",
    "Kind",
    "LTuple",
    "Limits",
    "Step",
    "StepOp",
    "StepResult",
    "Template",
    "TemplateError",
    "TupleError",
    "TupleTooLarge",
    "Tuples",
    "UnknownExtension",
    "Value",
    "field_key",
    "formal_by_name",
    "formal_name",
    "make_template",
    "make_tuple",
    "packb",
    "steps_size",
    "tuple_keys",
    "unpackb",
]
