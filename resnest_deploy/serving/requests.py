"""Inference requests as the front reads them once, checks, and rebuilds for tritonserver.

Why rebuild: tritonserver 2.51's HTTP frontend allocates a JSON input from the shape a request
*declares* before it checks that shape (one request aborted the server), and a relay that checks one
reading of a request and forwards the client's bytes lets tritonserver read another (a JSON key given
twice: the check saw one value, Triton used the other). So a request is decoded here exactly once
(duplicate keys refused, nesting and size bounded, NaN/Infinity refused), checked, and what Triton
receives is a request built from that decoded value: JSON re-serialised, binary tensors cut at the
sizes computed here. Nothing in this module does I/O, so the front can run it inline for small bodies
and in a worker process for large ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from resnest_deploy.errors import RequestRejected

#: bytes per element of each KServe v2 datatype; BYTES elements carry their own length
DTYPE_BYTES = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
    "INT64": 8, "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8, "BYTES": 0,
}  # fmt: skip
MAX_RANK = 8
#: what any input of a model this front does not know may declare (a 4,096-image 224x224 batch)
DEFAULT_MAX_ELEMENTS = 4096 * 3 * 224 * 224
#: the JSON header of a binary-tensor request: names, shapes and parameters, never tensor data
MAX_JSON_HEADER = 1 << 20
MAX_NAME = 256
MAX_ITEMS = 64  # inputs, outputs, parameters of one request
_TOP_KEYS = {"id", "parameters", "inputs", "outputs"}
_INPUT_KEYS = {"name", "shape", "datatype", "parameters", "data"}
_OUTPUT_KEYS = {"name", "parameters"}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise RequestRejected(400, f"the JSON names key {twice!r} twice; send each key once")
    return out


def _no_constant(name: str) -> Any:
    raise RequestRejected(400, f"the JSON holds {name}, which is not JSON; send finite numbers")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def decode_json(raw: bytes | bytearray | memoryview) -> Any:
    """One strict reading of a JSON document (UTF-8, as RFC 8259 requires): duplicate keys,
    NaN/Infinity and deep nesting refused."""
    try:
        return _DECODER.decode(bytes(raw).decode("utf-8"))
    except RecursionError:
        raise RequestRejected(400, "the JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, RequestRejected):
            raise
        raise RequestRejected(400, "the request body is not valid UTF-8 JSON") from None


def encode_json(doc: Any) -> bytes:
    """``doc`` re-serialised; what JSON cannot carry (a number out of a double's range, read as
    infinity; a lone surrogate, which UTF-8 cannot encode) is the client's mistake: 400."""
    try:
        return _ENCODER.encode(doc).encode()
    except ValueError:  # UnicodeEncodeError is one
        raise RequestRejected(
            400, "the JSON holds a number out of range or a lone surrogate; send finite numbers and text"
        ) from None


class Infer(NamedTuple):
    """A checked infer request, rebuilt: the JSON Triton gets, and the binary tensors after it (a
    tuple: made once per request on the front's event loop, where a frozen dataclass costs more)."""

    header: bytes
    binary: bytes | memoryview  # every binary input's bytes, in order, cut at the sizes checked here
    binary_inputs: int

    @property
    def header_length(self) -> int | None:
        """The Inference-Header-Content-Length to send (None: a JSON-only request)."""
        return len(self.header) if self.binary_inputs else None

    @property
    def length(self) -> int:
        return len(self.header) + len(self.binary)


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise RequestRejected(400, f"{what} needs a 'name' string of 1..{MAX_NAME} characters")
    return value


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise RequestRejected(400, f"{what}'s 'parameters' must be an object of at most {MAX_ITEMS} entries")
    for key, v in value.items():
        if (
            len(key) > MAX_NAME
            or not isinstance(v, (str, int, float, bool))
            or (isinstance(v, str) and len(v) > 4096)
        ):
            raise RequestRejected(
                400, f"{what}'s parameter {key[:64]!r} must be a short string, number or bool"
            )
    return value


def _count(data: Any, datatype: str, limit: int) -> int:
    """Elements in a (possibly nested) JSON data list, each checked against the datatype."""
    if not isinstance(data, list):
        raise RequestRejected(400, "an input's 'data' must be a list")
    n, stack = 0, [data]
    while stack:
        for v in stack.pop():
            if isinstance(v, list):
                stack.append(v)
                continue
            if datatype == "BYTES":
                ok = isinstance(v, str)
            elif datatype == "BOOL":
                ok = isinstance(v, bool)
            else:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not ok:
                raise RequestRejected(400, f"an input's 'data' holds {type(v).__name__}, not {datatype}")
            n += 1
            if n > limit:
                return n
    return n


def _shape(value: Any, name: str, limit: int) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise RequestRejected(
            400, f"input {name!r} needs a 'shape' of at most {MAX_RANK} non-negative integers"
        )
    if math.prod(value) > limit:
        raise RequestRejected(
            400,
            f"input {name!r} declares shape {value}: more than the {limit} elements a request to this "
            "model may carry; send a smaller batch",
        )
    return value


def check_infer(header_doc: Any, binary: memoryview, max_elements: int) -> Infer:
    """Check a decoded infer request (its JSON header, the bytes after it) and rebuild it."""
    header, binary_inputs = _checked_header(header_doc, len(binary), max_elements)
    return Infer(header, bytes(binary), binary_inputs)


def _checked_header(header_doc: Any, binary_length: int, max_elements: int) -> tuple[bytes, int]:
    """The rebuilt JSON header and its count of binary inputs. Only the binary part's length is
    read: the inputs' sizes must add up to exactly that, so the tensors Triton gets are the body's
    bytes after the header, cut where this header says."""
    if not isinstance(header_doc, dict):
        raise RequestRejected(400, "an infer request is a JSON object")
    unknown = set(header_doc) - _TOP_KEYS
    if unknown:
        raise RequestRejected(400, f"unknown key {sorted(unknown)[0][:64]!r} in the infer request")
    inputs = header_doc.get("inputs")
    if not isinstance(inputs, list) or not inputs or len(inputs) > MAX_ITEMS:
        raise RequestRejected(400, "the request has no 'inputs' list")
    doc: dict[str, Any] = {}
    if "id" in header_doc:
        if not isinstance(header_doc["id"], str) or len(header_doc["id"]) > MAX_NAME:
            raise RequestRejected(400, f"'id' must be a string of at most {MAX_NAME} characters")
        doc["id"] = header_doc["id"]
    if "parameters" in header_doc:
        doc["parameters"] = _parameters(header_doc["parameters"], "the request")
    binary_inputs = 0
    offset = 0
    rebuilt = []
    for item in inputs:
        out, size = _checked_input(item, binary_length - offset, max_elements)
        if size is not None:
            binary_inputs += 1
            offset += size
        rebuilt.append(out)
    if offset != binary_length:
        raise RequestRejected(
            400, f"the body holds {binary_length} bytes of binary data, the inputs account for {offset}"
        )
    doc["inputs"] = rebuilt
    if "outputs" in header_doc:
        doc["outputs"] = _checked_outputs(header_doc["outputs"])
    return encode_json(doc), binary_inputs


def _checked_input(item: Any, binary_left: int, max_elements: int) -> tuple[dict[str, Any], int | None]:
    """One input rebuilt, and the bytes of binary data it takes (None: its data is in the JSON or
    in shared memory); ``binary_left``: what the binary part still holds."""
    if not isinstance(item, dict):
        raise RequestRejected(400, "each input is a JSON object")
    name = _name(item.get("name"), "each input")
    if set(item) - _INPUT_KEYS:
        raise RequestRejected(
            400, f"unknown key {sorted(set(item) - _INPUT_KEYS)[0][:64]!r} in input {name!r}"
        )
    datatype = item.get("datatype")
    if datatype not in DTYPE_BYTES:
        raise RequestRejected(400, f"input {name!r} has no known 'datatype' ({', '.join(DTYPE_BYTES)})")
    shape = _shape(item.get("shape"), name, max_elements)
    elements = math.prod(shape)
    out: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
    params = _parameters(item["parameters"], f"input {name!r}") if "parameters" in item else {}
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in item:
            raise RequestRejected(400, f"input {name!r} has both 'data' and 'binary_data_size'")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= binary_left:
            raise RequestRejected(400, f"input {name!r}: binary_data_size is not within the body")
        width = DTYPE_BYTES[datatype]
        if width and size != elements * width:
            raise RequestRejected(
                400, f"input {name!r}: {size} bytes of binary data for {elements} {datatype} elements"
            )
    elif "data" in item:
        n = _count(item["data"], datatype, elements)
        if n != elements:
            held = f"more than {elements}" if n > elements else str(n)
            raise RequestRejected(
                400, f"input {name!r} holds {held} elements; its shape {shape} says {elements}"
            )
        out["data"] = item["data"]
    elif not any(k.startswith("shared_memory") for k in params):
        raise RequestRejected(400, f"input {name!r} has no 'data' and no binary_data_size")
    if params:
        out["parameters"] = params
    return out, size


def _checked_outputs(outputs: Any) -> list[dict[str, Any]]:
    if not isinstance(outputs, list) or len(outputs) > MAX_ITEMS:
        raise RequestRejected(400, f"'outputs' must be a list of at most {MAX_ITEMS} objects")
    checked = []
    for item in outputs:
        if not isinstance(item, dict) or set(item) - _OUTPUT_KEYS:
            raise RequestRejected(400, "each output is an object with 'name' and optional 'parameters'")
        o: dict[str, Any] = {"name": _name(item.get("name"), "each output")}
        if "parameters" in item:
            o["parameters"] = _parameters(item["parameters"], f"output {o['name']!r}")
        checked.append(o)
    return checked


#: headers checked already: (the JSON's exact bytes, the binary part's length, the element bound) ->
#: what :func:`_checked_header` made of them. Clients send the same header again and again, and
#: the check is a function of exactly these three, so a hit is the same answer without a second
#: decode (a third of the front's Python per request). Only successes are kept, and few, small ones.
_CHECKED: dict[tuple[bytes, int, int], tuple[bytes, int]] = {}
_CHECKED_ENTRIES = 256
_CHECKED_MAX_JSON = 4096


def infer_from_body(body: bytes | bytearray, header_length: int | None, max_elements: int) -> Infer:
    """An infer request's whole body (its JSON, then binary tensors when ``header_length`` is given)
    decoded once, checked and rebuilt. The tensors are a view of ``body`` (not a copy: the front
    copies them once, into the request it writes)."""
    view = memoryview(body)
    if header_length is None:
        header_length = len(view)
    elif not 0 < header_length <= min(len(view), MAX_JSON_HEADER):
        raise RequestRejected(400, "Inference-Header-Content-Length is not within the body")
    raw, binary = view[:header_length], view[header_length:]
    key = (bytes(raw), len(binary), max_elements) if header_length <= _CHECKED_MAX_JSON else None
    found = _CHECKED.get(key) if key is not None else None
    if found is None:
        found = _checked_header(decode_json(raw), len(binary), max_elements)
        if key is not None:
            if len(_CHECKED) >= _CHECKED_ENTRIES:
                del _CHECKED[next(iter(_CHECKED))]
            _CHECKED[key] = found
    return Infer(found[0], binary, found[1])


def canonical_json(body: bytes | bytearray) -> bytes:
    """Any other JSON body the front forwards (repository, logging, trace, shared-memory APIs)."""
    return encode_json(decode_json(body)) if body.strip() else b""


def limit_for(limits: Mapping[str, int], model: str) -> int:
    return limits.get(model, DEFAULT_MAX_ELEMENTS)


def worker_infer(
    body: bytes | bytearray, header_length: int | None, max_elements: int
) -> tuple[int, str] | Infer:
    """:func:`infer_from_body` for a worker process: a rejection comes back as a value."""
    try:
        found = infer_from_body(body, header_length, max_elements)
        return found._replace(binary=bytes(found.binary))  # a view is not sent between processes
    except RequestRejected as e:
        return e.status, str(e)
