"""A client for served models: images preprocessed as the served model's config records, sent over
HTTP or gRPC with Triton's protocol (KServe v2, through ``tritonclient``), and answered as a local
``predict`` answers (the same softmax, top-k and class names).

The server is untrusted: what its config says (the transform, the input form, the sizes) is checked
before it is used, and what it answers must be finite logits of the expected shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from resnest_deploy import _deps, data, formats
from resnest_deploy.errors import ArtifactError, ClientError, first_line
from resnest_deploy.limits import MAX_BATCH
from resnest_deploy.models import get_spec
from resnest_deploy.predict import Prediction, top_predictions

TIMEOUT_S = 30.0
#: images per request, at most (and at most the model's max_batch_size)
CHUNK = 8
MAX_SIDE = 8192
_DATATYPES = {"TYPE_FP32": "FP32", "TYPE_UINT8": "UINT8", "FP32": "FP32", "UINT8": "UINT8"}
_DEFAULT_PORT = {"http": 8000, "https": 8000, "grpc": 8001, "grpcs": 8001}


@dataclass(frozen=True)
class Endpoint:
    """Where the server is: ``http://host:port`` (the default scheme), ``grpc://host:port``, or
    ``https://`` / ``grpcs://`` for TLS."""

    scheme: str
    address: str  # host:port

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORT:
            raise ClientError(
                (f"{{server}} {url!r}: unknown scheme {scheme!r}; use http://HOST:PORT or grpc://HOST:PORT"),
                param="server",
            )
        if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
            raise ClientError(
                (
                    f"{{server}} {url!r} is not HOST:PORT with a scheme; e.g. http://127.0.0.1:8000 "
                    "or grpc://127.0.0.1:8001"
                ),
                param="server",
            )
        try:
            port = parts.port or _DEFAULT_PORT[scheme]
        except ValueError:
            raise ClientError(f"{{server}} {url!r} has an invalid port", param="server") from None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(scheme, f"{host}:{port}")

    @property
    def grpc(self) -> bool:
        return self.scheme.startswith("grpc")

    @property
    def ssl(self) -> bool:
        return self.scheme in ("https", "grpcs")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"


@dataclass(frozen=True)
class ServedModel:
    """What a client must know to feed a served classifier, read from its config and checked."""

    name: str
    input_name: str
    output_name: str
    datatype: str  # FP32 or UINT8
    form: formats.InputForm
    transform: data.Transform
    max_batch_size: int  # 0: the model takes one image per request, without a batch dimension
    num_classes: int
    #: where the transform came from: the served config, or the arch's registry entry
    transform_source: str


class Connection:
    """One ``tritonclient`` client over HTTP or gRPC, with one error type for both."""

    def __init__(self, endpoint: Endpoint, timeout: float = TIMEOUT_S) -> None:
        self.endpoint, self.timeout = endpoint, timeout
        if endpoint.grpc:
            grpc = _deps.require("tritonclient.grpc")
            self.module = grpc
            self.client = grpc.InferenceServerClient(endpoint.address, ssl=endpoint.ssl)
        else:
            http = _deps.require("tritonclient.http")
            self.module = http
            self.client = http.InferenceServerClient(
                endpoint.address, ssl=endpoint.ssl, connection_timeout=timeout, network_timeout=timeout
            )

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.endpoint.grpc:
            kwargs["client_timeout"] = self.timeout
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # tritonclient, gevent, grpc and socket errors alike
            raise ClientError(self._explain(what, e)) from None

    def _explain(self, what: str, e: Exception) -> str:
        text = first_line(e, 300)
        if "restricted" in text:
            return f"{self.endpoint}: {what} is not allowed: the server keeps that API closed"
        if "Expected HTTP/" in text:
            return f"{self.endpoint} does not answer HTTP; is that the gRPC port? then write grpc://{self.endpoint.address}"
        if "http1.x server" in text:
            return f"{self.endpoint} answers HTTP, not gRPC; is that the HTTP port? then write http://{self.endpoint.address}"
        if (
            isinstance(e, ConnectionError | OSError)
            or "UNAVAILABLE" in text
            or "Connection refused" in text
            or "failed to connect" in text.lower()
        ):
            return (
                f"cannot reach {self.endpoint} ({text}); is `resnest-deploy serve` running there? "
                "(gRPC is its --grpc-port, default 8001; HTTP its --http-port, default 8000)"
            )
        return f"{self.endpoint}: {what} failed: {text}"

    def models(self) -> list[str]:
        """Names of the ready models (Triton's repository API; ``serve`` keeps it closed)."""
        index = self._call("listing the models", self.client.get_model_repository_index)
        if self.endpoint.grpc:
            index = json.loads(_json_of(index)).get("models", [])
        return sorted(str(m.get("name")) for m in index if m.get("state", "READY") == "READY")

    def config(self, model: str) -> dict[str, Any]:
        if self.endpoint.grpc:
            what = f"reading model {model!r}'s config"
            found = self._call(what, self.client.get_model_config, model, as_json=True)
            return dict(found.get("config", {}))
        return dict(self._call(f"reading model {model!r}'s config", self.client.get_model_config, model))

    def infer(self, model: ServedModel, x: np.ndarray) -> np.ndarray:
        m = self.module
        batched = model.max_batch_size > 0
        x = x if batched else x[0]
        inp = m.InferInput(model.input_name, list(x.shape), model.datatype)
        inp.set_data_from_numpy(np.ascontiguousarray(x))
        if self.endpoint.grpc:
            outputs = [m.InferRequestedOutput(model.output_name)]
        else:
            outputs = [m.InferRequestedOutput(model.output_name, binary_data=True)]
        result = self._call(
            f"inference on {model.name!r}", self.client.infer, model.name, [inp], outputs=outputs
        )
        y = result.as_numpy(model.output_name)
        return _checked_logits(y, 1 if not batched else len(x), model)


def _json_of(message: Any) -> str:
    from google.protobuf import json_format

    return str(json_format.MessageToJson(message, preserving_proto_field_name=True))


def _checked_logits(y: Any, n: int, model: ServedModel) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype.kind != "f":
        raise ClientError(f"model {model.name!r} answered no float {model.output_name!r} output")
    y = y.reshape(n, -1) if y.size == n * model.num_classes else y
    if y.shape != (n, model.num_classes) or not np.isfinite(y).all():
        raise ClientError(
            f"model {model.name!r} answered {model.output_name!r} of shape {list(y.shape)} "
            f"(expected finite [{n}, {model.num_classes}]); is it a classifier resnest-deploy served?"
        )
    return y.astype(np.float32)


def _params(config: dict[str, Any]) -> dict[str, str]:
    raw = config.get("parameters") or {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): str(v.get("string_value", "")) for k, v in raw.items() if isinstance(v, dict)}


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    try:
        i = int(v)
    except (TypeError, ValueError):
        raise ClientError(f"the served config's {what} is not a number ({v!r})") from None
    if not lo <= i <= hi:
        raise ClientError(f"the served config's {what} {i} is outside {lo}..{hi}")
    return i


def transform_from(record: Any, hw: tuple[int, int], name: str) -> data.Transform:
    """The transform a served config records (``serving.config.transform_record``), checked."""
    from resnest_deploy.metadata import _three_numbers

    if not isinstance(record, dict):
        raise ClientError(f"model {name!r}'s 'preprocessing' parameter is not a JSON object")
    crop = record.get("crop")
    if not (isinstance(crop, list) and len(crop) == 2):
        raise ClientError(f"model {name!r}'s preprocessing has no crop [H, W]")
    h, w = (_int(v, "crop", 1, MAX_SIDE) for v in crop)
    if (h, w) != hw:
        raise ClientError(f"model {name!r}'s preprocessing crops {h}x{w} but its input is {hw[0]}x{hw[1]}")
    resize = _int(record.get("resize"), "resize", h, MAX_SIDE)
    interpolation = record.get("interpolation")
    if interpolation not in data.RESAMPLE_NAMES:
        raise ClientError(f"model {name!r}'s preprocessing names an unknown interpolation {interpolation!r}")
    mean, std = record.get("mean"), record.get("std")
    if not (_three_numbers(mean, positive=False) and _three_numbers(std, positive=True)):
        raise ClientError(f"model {name!r}'s preprocessing mean/std are not three plausible numbers each")
    m0, m1, m2 = (float(v) for v in mean)  # type: ignore[union-attr]
    s0, s1, s2 = (float(v) for v in std)  # type: ignore[union-attr]
    return data.Transform(h, resize, str(interpolation), (m0, m1, m2), (s0, s1, s2), None if w == h else w)


def describe(config: dict[str, Any], name: str, arch: str | None = None) -> ServedModel:
    """What to send ``name`` and what it answers, from its config (Triton's model configuration):
    one image input, one logits output, and the ``preprocessing`` parameter resnest-deploy writes
    (or, for a model served otherwise, the transform of ``arch``)."""
    inputs, outputs = config.get("input") or [], config.get("output") or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise ClientError(
            f"model {name!r} has {len(inputs)} inputs and {len(outputs)} outputs; a classifier served by "
            "resnest-deploy has one of each"
        )
    inp, outp = inputs[0], outputs[0]
    params = _params(config)
    form_name = params.get("input_format") or "float"
    if form_name not in formats.INPUT_FORMATS:
        raise ClientError(f"model {name!r} records an unknown input format {form_name!r}")
    datatype = _DATATYPES.get(str(inp.get("data_type")))
    if datatype != ("UINT8" if form_name.startswith("uint8") else "FP32"):
        raise ClientError(
            f"model {name!r} takes {inp.get('data_type')}, not what its {form_name} input form takes"
        )
    dims = [_int(d, "input dims", 1, MAX_SIDE) for d in inp.get("dims") or []]
    out_dims = [_int(d, "output dims", 1, 1_000_000) for d in outp.get("dims") or []]
    max_batch = _int(config.get("max_batch_size", 0), "max_batch_size", 0, MAX_BATCH)
    if len(dims) != 3 or len(out_dims) != 1:
        raise ClientError(
            f"model {name!r} takes {dims} and answers {out_dims}; expected one image (3 dims) and one "
            "row of logits"
        )
    hw = formats.InputForm(form_name).hw([0, *dims])
    record = params.get("preprocessing")
    if record:
        try:
            parsed = json.loads(record)
        except json.JSONDecodeError:
            raise ClientError(f"model {name!r}'s 'preprocessing' parameter is not JSON") from None
        transform, source = transform_from(parsed, hw, name), "the served model's config"
    else:
        arch = arch or params.get("arch")
        if not arch:
            raise ClientError(
                (
                    f"model {name!r} records no preprocessing and no arch (not served by "
                    f"resnest-deploy?); pass {{arch}} to preprocess as that arch was evaluated"
                ),
                param="arch",
            )
        transform = data.Transform.from_pretrained(get_spec(arch).pretrained, *hw)
        source = f"the {arch} registry entry"
    form = formats.InputForm(form_name, transform.mean, transform.std)
    return ServedModel(
        name,
        str(inp.get("name")),
        str(outp.get("name")),
        datatype,
        form,
        transform,
        max_batch,
        out_dims[0],
        source,
    )


def choose_model(conn: Connection, model: str | None) -> str:
    if model:
        return model
    try:
        names = conn.models()
    except ClientError as e:
        why = str(e)
        raise ClientError(
            f"name the model with {{model}} (`serve` prints 'serving NAME'); {why}",
            param="model",
        ) from None
    if len(names) != 1:
        listed = ", ".join(names) or "none ready"
        raise ClientError(f"{conn.endpoint} serves {listed}; name one with {{model}}", param="model")
    return names[0]


def predict_served(
    images: Sequence[str | os.PathLike[str]],
    server: str,
    *,
    model: str | None = None,
    arch: str | None = None,
    topk: int = 5,
    timeout: float = TIMEOUT_S,
) -> tuple[list[Prediction], ServedModel]:
    """Top-k of each image from a served model: the local ``predict``'s answer, computed remotely."""
    from resnest_deploy.predict import image_paths

    paths = image_paths(images)
    endpoint = Endpoint.parse(server)
    with Connection(endpoint, timeout) as conn:
        name = choose_model(conn, model)
        served = describe(conn.config(name), name, arch)
        loaded = data.load_images(paths, served.transform)
        if loaded.skipped:
            path, why = loaded.skipped[0]
            raise ArtifactError(f"{path} is not an image Pillow can read ({why}); pass jpg/png/webp files")
        x = served.form.from_normalised(loaded.array)
        chunk = max(1, min(CHUNK, served.max_batch_size or 1))
        logits = np.concatenate([conn.infer(served, x[i : i + chunk]) for i in range(0, len(x), chunk)])
    return top_predictions(paths, logits, topk), served
