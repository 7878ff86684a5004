"""The soak benchmark's corpus of malformed requests, REST and gRPC.

Every request here is one a TensorFlow Serving compatible server must refuse cleanly: with
a 4xx (or 503) over REST, with a gRPC status such as INVALID_ARGUMENT, NOT_FOUND or
RESOURCE_EXHAUSTED over gRPC; never with a 5xx, gRPC UNKNOWN or INTERNAL, a hang, or by
dying. (Some variants are legal and may also be answered 200 / OK, e.g. pixel values of
-5 or 300, an unknown ``output_filter`` name; the benchmark counts those as accepted.)

    from benchmarks.soak_corpus import rest_corpus, grpc_corpus
    for case in rest_corpus(1000, seed=0):
        case.category, case.note    # "rest:deep_json", "1025 nested objects"
        case.method, case.path, case.body, case.headers    # or case.raw: bytes for a socket
    for case in grpc_corpus(200, seed=0):
        case.method, case.message   # "Predict", a PredictRequest

Requests are generated in code (no fixture files), deterministically for a seed, grouped
by category (each category many variants). The big bodies (1000 zero faces, 30 MB of tiny
instances, a 20000x20000 PNG) are built once, by string multiplication and zlib, and shared
by the requests that send them. Heavy categories are capped in count so that the corpus
stays bounded in time whatever ``n``.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import random
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from serving.contract import (
    CLASS_ID,
    IMAGES_INPUT,
    PROBABILITIES,
    SIGNATURE_IMAGES,
    SIGNATURE_PIXELS,
)

SIDE = 48  # faces are SIDE x SIDE x 1 gray pixels, values 0-255
PIXELS = SIDE * SIDE
BODY_LIMIT = 32 * 1024 * 1024  # fer-serve's default --rest_api_max_body_bytes
EVIL_HOST = "evil.example"  # a Host no response may redirect to


@dataclass(frozen=True)
class Case:
    """One request of the corpus and what it exercises.

    REST: ``method`` ``path`` with ``headers`` and ``body``, sent by an HTTP client; or, when
    ``raw`` is set, those bytes written to a socket as they are (``{HOST}`` replaced by the
    server's address), then ``stream_mib`` chunks of 1 MiB in chunked encoding, then the
    write side shut when ``half_close``. gRPC: ``method`` is the RPC (``Predict``,
    ``GetModelMetadata``, ``GetModelStatus``) and ``message`` its request.
    """

    api: str = ""  # "REST" or "gRPC"; filled in from the category
    category: str = ""  # e.g. "rest:deep_json"; filled in from the category
    note: str = ""  # the variant, in a few words
    method: str = "POST"
    path: str = ""
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes | None = None
    stream_mib: int = 0
    half_close: bool = False
    read_timeout: float = 30.0
    message: Any = None
    #: Outcomes besides a 4xx/503 (or a gRPC error status) that are fine for this request:
    #: "closed" (the server closed without answering), "reset", "no reply" (nothing within
    #: ``read_timeout``), for the requests that never complete by design.
    tolerate: frozenset[str] = frozenset()
    slow_ok: bool = False  # may take over 5 s by design

    def __repr__(self) -> str:  # bodies can be 30 MB
        return f"Case({self.category}: {self.note})"


@dataclass(frozen=True)
class Category:
    """A kind of malformed request: ``make(rng, model)`` gives one variant; ``weight`` is its
    share of the corpus, ``cap`` the most requests it gets (heavy ones)."""

    name: str
    make: Callable[[random.Random, str], Case]
    weight: float = 1.0
    cap: int | None = None
    what: str = ""


REST_CATEGORIES: list[Category] = []
GRPC_CATEGORIES: list[Category] = []


def _category(registry: list[Category], prefix: str, weight: float = 1.0,
              cap: int | None = None) -> Callable[[Callable], Callable]:
    def register(make: Callable[[random.Random, str], Case]) -> Callable:
        name = prefix + make.__name__.lstrip("_")
        what = (make.__doc__ or "").strip().splitlines()[0] if make.__doc__ else ""
        registry.append(Category(name, make, weight, cap, what))
        return make
    return register


def _rest(weight: float = 1.0, cap: int | None = None) -> Callable[[Callable], Callable]:
    return _category(REST_CATEGORIES, "rest:", weight, cap)


def _grpc(weight: float = 1.0, cap: int | None = None) -> Callable[[Callable], Callable]:
    return _category(GRPC_CATEGORIES, "grpc:", weight, cap)


def allocate(categories: Sequence[Category], n: int) -> list[int]:
    """How many requests each category gets out of ``n``: one each (the first ``n`` when
    there are fewer), the rest by weight, no category over its cap."""
    if n <= 0:
        return [0] * len(categories)
    if n < len(categories):
        return [1] * n + [0] * (len(categories) - n)
    counts = [1] * len(categories)
    left = n - len(categories)
    while left > 0:
        open_ = [i for i, c in enumerate(categories) if c.cap is None or counts[i] < c.cap]
        if not open_:
            break
        total = sum(categories[i].weight for i in open_)
        given = 0
        for i in open_:
            share = int(left * categories[i].weight / total)
            if categories[i].cap is not None:
                share = min(share, categories[i].cap - counts[i])
            counts[i] += share
            given += share
        if not given:  # less than one each: one at a time, heaviest weight first
            for i in sorted(open_, key=lambda i: -categories[i].weight)[:left]:
                counts[i] += 1
                given += 1
        left -= given
    return counts


def _corpus(categories: Sequence[Category], api: str, n: int, seed: int,
            model: str) -> Iterator[Case]:
    for category, count in zip(categories, allocate(categories, n), strict=True):
        rng = random.Random(f"{seed}/{category.name}")
        for _ in range(count):
            yield dataclasses.replace(category.make(rng, model), api=api,
                                      category=category.name)


def rest_corpus(n: int, seed: int = 0, model: str = "fer") -> Iterator[Case]:
    """``n`` malformed REST requests for the model ``model``, grouped by category."""
    return _corpus(REST_CATEGORIES, "REST", n, seed, model)


def grpc_corpus(n: int, seed: int = 0, model: str = "fer") -> Iterator[Case]:
    """``n`` malformed gRPC requests for the model ``model``, grouped by category (imports
    the TensorFlow Serving protos, hence TensorFlow)."""
    _protos()  # import before the first category, not in the middle of a run
    return _corpus(GRPC_CATEGORIES, "gRPC", n, seed, model)


# --- JSON text, built by string multiplication ---------------------------------------------

def array_text(shape: Sequence[int], leaf: str = "0") -> str:
    """A rectangular JSON array of ``shape`` whose every number is the text ``leaf``."""
    text = leaf
    for n in reversed(shape):
        text = "[" + ",".join([text] * n) + "]"
    return text


@functools.lru_cache(maxsize=64)
def face_text(leaf: str = "0") -> str:
    """One face [48,48,1] as compact JSON, every pixel ``leaf``."""
    return array_text((SIDE, SIDE, 1), leaf)


def face_with(value: str, index: int) -> str:
    """A zero face [48,48,1] whose pixel ``index`` is the JSON text ``value``."""
    leaves = ["0"] * PIXELS
    leaves[index % PIXELS] = value
    rows = ("[" + ",".join(f"[{v}]" for v in leaves[r * SIDE:(r + 1) * SIDE]) + "]"
            for r in range(SIDE))
    return "[" + ",".join(rows) + "]"


def body(tensor: str, key: str = "instances", **fields: str) -> bytes:
    """A predict body: ``fields`` (JSON texts, by key) and then ``key``: ``tensor``."""
    head = "".join(f"{json.dumps(k)}:{v}," for k, v in fields.items())
    return ("{" + head + json.dumps(key) + ":" + tensor + "}").encode("utf-8", "surrogatepass")


def _predict_path(model: str, version: str | None = None) -> str:
    return f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"


def _post(model: str, note: str, data: bytes, **kw: Any) -> Case:
    return Case(note=note, method="POST", path=kw.pop("path", _predict_path(model)), body=data,
                **kw)


@functools.lru_cache(maxsize=8)
def zero_batch(n: int, key: str = "instances") -> bytes:
    """``n`` zero faces [n,48,48,1], compact (about 9 KB a face)."""
    return body(array_text((n,), face_text()), key)


@functools.lru_cache(maxsize=4)
def tiny_instances(unit: bytes, megabytes: int = 30, key: str = "instances") -> bytes:
    """``{"instances":[unit,unit,...]}`` of about ``megabytes`` MB."""
    count = megabytes * 1_000_000 // (len(unit) + 1)
    return b'{"' + key.encode() + b'":[' + (unit + b",") * (count - 1) + unit + b"]}"


# --- images --------------------------------------------------------------------------------

def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


def png(width: int, height: int, idat: bytes, color_type: int = 0) -> bytes:
    """A PNG with the given header and compressed image data (8-bit, gray by default)."""
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


@functools.lru_cache(maxsize=2)
def png_bomb(side: int = 20000) -> bytes:
    """A valid ``side`` x ``side`` gray PNG of zeros: ~400 MB of pixels in ~400 KB."""
    compressor = zlib.compressobj(9)
    rows = b"\x00" * (side + 1) * 100  # filter byte + pixels, 100 scanlines
    parts = [compressor.compress(rows) for _ in range(side // 100)]
    parts.append(compressor.compress(b"\x00" * (side + 1) * (side % 100)))
    parts.append(compressor.flush())
    return png(side, side, b"".join(parts))


@functools.lru_cache(maxsize=1)
def tiny_png() -> bytes:
    """A valid 2x2 gray PNG."""
    return png(2, 2, zlib.compress(b"\x00\x10\x20\x00\x30\x40"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _images_body(values: Sequence[str], key: str = "instances") -> bytes:
    """A ``predict_images`` body whose instances are the JSON texts ``values``."""
    return body("[" + ",".join(values) + "]", key, signature_name=json.dumps(SIGNATURE_IMAGES))


def _b64_value(data: bytes) -> str:
    return '{"b64":"' + b64(data) + '"}'


# --- REST categories -----------------------------------------------------------------------

@_rest(weight=2)
def _bad_json(rng: random.Random, model: str) -> Case:
    """JSON that does not parse: truncated, garbage, trailing junk, wrong syntax."""
    good = body("[" + face_text() + "]")
    variants: list[tuple[str, Callable[[], bytes]]] = [
        ("truncated", lambda: good[:rng.randrange(1, len(good))]),
        ("garbage bytes", lambda: rng.randbytes(rng.randint(1, 4000))),
        ("empty body", lambda: b""),
        ("whitespace", lambda: b" \n\t "),
        ("trailing junk", lambda: good + b" }x"),
        ("single quotes", lambda: b"{'instances': [[[1]]]}"),
        ("comment", lambda: b'{"instances": [[1]] /* c */}'),
        ("BOM", lambda: b"\xef\xbb\xbf" + good),
        ("trailing commas", lambda: b'{"instances":[[1],],}'),
        ("unquoted key", lambda: b"{instances:[[1]]}"),
        ("unclosed", lambda: b'{"instances":[[1]]'),
        ("NUL after", lambda: b'{"instances":[[1]]}\x00'),
        ("control char in string", lambda: b'{"signature_name":"a\x01b","instances":[[1]]}'),
        ("two objects", lambda: b'{"instances":[[1]]}{"instances":[[1]]}'),
        ("bad escape", lambda: b'{"signature_name":"\\x41","instances":[[1]]}'),
        ("utf-16", lambda: '{"instances":[[1]]}'.encode("utf-16")),
        ("bare number", lambda: b"1"),
        ("bare string", lambda: b'"instances"'),
    ]
    note, make = rng.choice(variants)
    return _post(model, note, make())


@_rest()
def _invalid_utf8(rng: random.Random, model: str) -> Case:
    """Bodies that are not UTF-8: stray bytes, overlong forms, encoded surrogates."""
    junk = rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82",
                       b"\xf5\x80\x80\x80", b"\x80"])
    where = rng.choice(["signature_name", "key", "string pixel", "b64 value"])
    if where == "signature_name":
        data = b'{"signature_name":"' + junk + b'","instances":[[1]]}'
    elif where == "key":
        data = b'{"' + junk + b'":1,"instances":[[1]]}'
    elif where == "string pixel":
        data = b'{"instances":[[["' + junk + b'"]]]}'
    else:
        data = b'{"signature_name":"predict_images","instances":[{"b64":"' + junk + b'"}]}'
    return _post(model, f"{junk!r} in {where}", data)


@_rest()
def _lone_surrogate(rng: random.Random, model: str) -> Case:
    r"""Lone UTF-16 surrogate escapes (``"\ud800"``), valid JSON but not encodable text."""
    s = rng.choice([r"\ud800", r"\udfff", r"\udc00\ud800", r"a\ud83d"])
    where = rng.choice(["signature_name", "key", "string pixel", "b64 value", "extra field"])
    if where == "signature_name":
        data = ('{"signature_name":"' + s + '","instances":[[1,2]]}').encode()
    elif where == "key":
        data = ('{"' + s + '":1,"instances":[[1,2]]}').encode()
    elif where == "string pixel":
        data = ('{"instances":[[["' + s + '"]]]}').encode()
    elif where == "b64 value":
        data = ('{"signature_name":"predict_images","instances":[{"b64":"' + s + '"}]}').encode()
    else:
        data = ('{"instances":[' + face_text() + '],"note":"' + s + '"}').encode()
    return _post(model, f"{s} in {where}", data)


@_rest()
def _deep_json(rng: random.Random, model: str) -> Case:
    """JSON nested deeper than 1,024 levels (objects and arrays), up to 100,000."""
    kind, depth = rng.choice([("objects", 1025), ("objects", 2000), ("objects", 20000),
                              ("arrays", 1000), ("arrays", 1025), ("arrays", 5000),
                              ("arrays", 100000), ("instances arrays", 2000),
                              ("instances arrays", 100000), ("signature_name arrays", 3000)])
    if kind == "objects":
        data = '{"a":' * depth + "1" + "}" * depth
    elif kind == "arrays":
        data = "[" * depth + "]" * depth
    elif kind == "instances arrays":
        data = '{"instances":' + "[" * depth + "1" + "]" * depth + "}"
    else:
        data = '{"signature_name":' + "[" * depth + "]" * depth + ',"instances":[[1]]}'
    return _post(model, f"{depth} nested {kind}", data.encode())


@_rest()
def _nested_arrays(rng: random.Random, model: str) -> Case:
    """A tensor of 65..1023 nested arrays: more dimensions than any array library allows."""
    k = rng.randint(65, 1023)
    key = rng.choice(["instances", "inputs"])
    return _post(model, f"{key} rank {k}", ('{"' + key + '":' + "[" * k + "1" + "]" * k
                                             + "}").encode())


@_rest()
def _big_ints(rng: random.Random, model: str) -> Case:
    """Integers beyond 64 bits (and beyond Python's 4,300-digit limit) as pixels."""
    value = rng.choice(["-999999999999999999999999999999", "18446744073709551616",
                        "-9223372036854775809", "9223372036854775808", "9" * 400,
                        "1" * 5000, "-" + "7" * 20000])
    where = rng.choice(["lone", "in a face", "signature_name", "flat"])
    if where == "lone":
        data = body("[[" + value + "]]")
    elif where == "in a face":
        data = body("[" + face_with(value, rng.randrange(PIXELS)) + "]")
    elif where == "signature_name":
        data = body("[" + face_text() + "]", signature_name=value)
    else:
        data = body("[" + value + "]")
    return _post(model, f"{len(value.lstrip('-'))}-digit int, {where}", data)


@_rest()
def _wrong_shape(rng: random.Random, model: str) -> Case:
    """Faces of the wrong shape: [47,48,1], [48,48,3], ragged lists, empty lists."""
    batch = rng.randint(1, 3)
    shape = rng.choice([(47, 48, 1), (48, 47, 1), (49, 48, 1), (48, 48, 3), (48, 48, 2),
                        (48, 48), (48, 48, 1, 1), (1, 48, 48, 1), (48,), (1,), (0,), (),
                        (2304,), (24, 96, 1)])
    variant = rng.choice(["shape", "shape", "ragged row", "ragged batch", "empty", "columnar"])
    if variant == "shape":
        data = body(array_text((batch, *shape)))
        note = f"[{batch},{','.join(map(str, shape))}]"
    elif variant == "ragged row":
        rows = ["[" + ",".join(["[0]"] * SIDE) + "]"] * SIDE
        rows[rng.randrange(SIDE)] = "[" + ",".join(["[0]"] * rng.choice([0, 1, 47, 49])) + "]"
        data = body("[" + "[" + ",".join(rows) + "]" + "]")
        note = "ragged row"
    elif variant == "ragged batch":
        data = body("[" + face_text() + "," + array_text((47, 48, 1)) + "]")
        note = "ragged batch [48..],[47..]"
    elif variant == "empty":
        text = rng.choice(["[]", "[[]]", "[[[]]]", "[[],[]]"])
        data = body(text, rng.choice(["instances", "inputs"]))
        note = f"empty {text}"
    else:
        data = body(rng.choice([face_text(), "0", "[0]", array_text((48, 48))]), "inputs")
        note = "columnar without batch"
    return _post(model, note, data)


@_rest()
def _wrong_types(rng: random.Random, model: str) -> Case:
    """Strings, booleans, nulls and objects where pixels belong."""
    value = rng.choice(['"a"', '"0"', "true", "false", "null", "{}", '{"x":1}', "[]",
                        '{"b64":"AA=="}', '""'])
    where = rng.choice(["pixel", "pixel", "instance", "instances", "inputs"])
    if where == "pixel":
        data = body("[" + face_with(value, rng.randrange(PIXELS)) + "]")
    elif where == "instance":
        data = body("[" + value + "]")
    elif where == "instances":
        data = body(value)
    else:
        data = body(value, "inputs")
    return _post(model, f"{value} as {where}", data)


@_rest()
def _bad_numbers(rng: random.Random, model: str) -> Case:
    """NaN, Infinity, 1e39, 1e400, -5, 300 as pixel values (one pixel or all)."""
    value = rng.choice(["NaN", "Infinity", "-Infinity", "1e39", "1e400", "-1e400", "-5",
                        "300", "1e-400", "-0.0", "255.5", "-3.4e38"])
    if rng.random() < 0.5:
        return _post(model, f"one pixel {value}",
                     body("[" + face_with(value, rng.randrange(PIXELS)) + "]"))
    return _post(model, f"all pixels {value}", body("[" + face_text(value) + "]"))


@_rest(weight=0.05, cap=20)
def _oversized_batch(rng: random.Random, model: str) -> Case:
    """1,000 to 3,000 zero faces in one request (9 to 28 MB, under the body limit)."""
    n = rng.choice([1000, 1000, 2000, 3000])
    key = rng.choice(["instances", "inputs"])
    return _post(model, f"[{n},48,48,1] zeros as {key}", zero_batch(n, key))


@_rest(weight=0.05, cap=6)
def _many_tiny(rng: random.Random, model: str) -> Case:
    """~30 MB of tiny instances (``[0],`` repeated, millions of them)."""
    unit = rng.choice([b"[0]", b"0", b"[[[0]]]"])
    key = rng.choice(["instances", "inputs"])
    data = tiny_instances(unit, 30, key)
    return _post(model, f"{len(data) // 1_000_000} MB of {unit.decode()} as {key}", data)


@_rest()
def _unknown_signature(rng: random.Random, model: str) -> Case:
    """Signature names that do not exist, or are not strings."""
    value = rng.choice(['"nope"', '""', '"SERVING_DEFAULT"', '" serving_default"',
                        '"serving_default\\u0000"', "5", "null", "true", "[]", "{}",
                        '"' + "x" * 10000 + '"', '"__saved_model_init_op"', '"serving_tta"',
                        '"predict_images_tta"', '"../serving_default"'])
    return _post(model, f"signature_name {value[:30]}",
                 body("[" + face_text() + "]", signature_name=value))


@_rest()
def _instances_inputs(rng: random.Random, model: str) -> Case:
    """Both or neither of ``instances`` and ``inputs``; inputs under the wrong names."""
    face = face_text()
    variants = {
        "both": '{"instances":[' + face + '],"inputs":[' + face + "]}",
        "neither": "{}",
        "typo instance": '{"instance":[' + face + "]}",
        "inputs wrong name": '{"inputs":{"image":[' + face + "]}}",
        "inputs extra name": '{"inputs":{"pixels":[' + face + '],"extra":[' + face + "]}}",
        "instances mixed keys": '{"instances":[{"pixels":' + face + '},{"other":' + face + "}]}",
        "instances object+list": '{"instances":[{"pixels":' + face + "}," + face + "]}",
        "instances object": '{"instances":{"pixels":[' + face + "]}}",
        "instances empty objects": '{"instances":[{},{}]}',
        "body a list": "[" + face + "]",
        "body null": "null",
        "body a string": '"instances"',
    }
    note = rng.choice(sorted(variants))
    return _post(model, note, variants[note].encode())


@_rest()
def _bad_base64(rng: random.Random, model: str) -> Case:
    """``{"b64": ...}`` values that are not base64, or not strings."""
    value = rng.choice(['"!!!"', '"AAA"', '"A"', '"AA=A"', '"4pyTIMOgIGxhIG1vZGU"', '"=="',
                        '"AA==\\n"', '"\\u00f1"', "123", "null", "[]", "{}", "true"])
    shape = rng.choice(["instances", "inputs", "extra key", SIGNATURE_PIXELS])
    if shape == "instances":
        data = _images_body(['{"b64":' + value + "}"])
    elif shape == "inputs":
        data = _images_body(['{"b64":' + value + "}"], key="inputs")
    elif shape == "extra key":
        data = _images_body(['{"b64":' + value + ',"x":1}'])
    else:
        data = body('[{"b64":' + value + "}]")
    return _post(model, f"b64 {value[:12]} ({shape})", data)


@_rest()
def _images_not_image(rng: random.Random, model: str) -> Case:
    """``predict_images`` with bytes that are not an image (or a broken one)."""
    good = tiny_png()
    bad_crc = good[:-5] + bytes([good[-5] ^ 0xFF]) + good[-4:]
    variants: dict[str, Callable[[], bytes]] = {
        "empty": lambda: b"",
        "text": lambda: b"hello, world",
        "random bytes": lambda: rng.randbytes(rng.randint(1, 5000)),
        "JPEG SOI + junk": lambda: b"\xff\xd8\xff\xe0" + rng.randbytes(200),
        "PNG signature only": lambda: good[:8],
        "truncated PNG": lambda: good[:rng.randint(9, len(good) - 1)],
        "PNG bad CRC": lambda: bad_crc,
        "PNG 0x0": lambda: png(0, 0, zlib.compress(b"")),
        "GIF header only": lambda: b"GIF89a" + rng.randbytes(20),
        "BMP header only": lambda: b"BM" + rng.randbytes(50),
        "SVG": lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
    }
    note = rng.choice(sorted(variants))
    images = [_b64_value(variants[note]())]
    if rng.random() < 0.3:  # next to a valid image
        images.insert(rng.randint(0, 1), _b64_value(good))
        note += " beside a valid PNG"
    return _post(model, note, _images_body(images))


@_rest(weight=0.05, cap=20)
def _images_bomb(rng: random.Random, model: str) -> Case:
    """Decompression bombs: a 20000x20000 PNG in ~400 KB; PNGs claiming 2^31-1 pixels."""
    variant = rng.choice(["bomb", "bomb", "two bombs", "claims 2^31-1 square",
                          "claims 10^6 x 1", "claims 1 x 10^6 RGB"])
    if variant == "bomb":
        images = [_b64_value(png_bomb())]
    elif variant == "two bombs":
        images = [_b64_value(png_bomb())] * 2
    elif variant == "claims 2^31-1 square":
        images = [_b64_value(png(2**31 - 1, 2**31 - 1, zlib.compress(b"\x00" * 1000)))]
    elif variant == "claims 10^6 x 1":
        images = [_b64_value(png(10**6, 1, zlib.compress(b"\x00" * 100)))]
    else:
        images = [_b64_value(png(1, 10**6, zlib.compress(b"\x00" * 100), color_type=2))]
    return _post(model, variant, _images_body(images))


@_rest()
def _images_float(rng: random.Random, model: str) -> Case:
    """Float pixels sent to ``predict_images`` (which takes encoded images)."""
    variants = {
        "a face": ["[" + face_text() + "]", "instances"],
        "1.5": ["[[1.5]]", "instances"],
        "flat floats": ["[0.5,1.5]", "inputs"],
        "ints": ["[1,2]", "instances"],
        "b64 and float": ['[{"b64":"' + b64(tiny_png()) + '"},0.5]', "instances"],
    }
    note = rng.choice(sorted(variants))
    tensor, key = variants[note]
    return _post(model, note, body(tensor, key, signature_name=json.dumps(SIGNATURE_IMAGES)))


@_rest()
def _unknown_path(rng: random.Random, model: str) -> Case:
    """Paths that are no route: other verbs, bad versions, odd bytes, very long."""
    path = rng.choice([
        "/", "/v1", "/v1/models", "/v1/models/", f"/v1/models/{model}:classify",
        f"/v1/models/{model}:regress", f"/v1/models/{model}:predictx",
        f"/v1/models/{model}/versions/abc", f"/v1/models/{model}/versions/-1:predict",
        f"/v1/models/{model}/versions/1.5:predict", f"/v2/models/{model}/infer",
        f"/v1/models/{model}/metadata/extra", "/%ff%fe", "/v1/models/%ED%A0%80",
        "/" + "a" * 8000, f"/v1/models/{model}:predict?x=" + "y" * 4000,
        "/v1/models/../../etc/passwd", f"/v1/models/{model}/labels/:predict",
        f"/v1/models/{model}:predict/extra", "//v1//models//" + model,
    ])
    method = rng.choice(["GET", "POST"])
    data = body("[" + face_text() + "]") if method == "POST" else b""
    return Case(note=f"{method} {path[:50]}", method=method, path=path, body=data)


@_rest()
def _unknown_method(rng: random.Random, model: str) -> Case:
    """Methods a route does not take (PUT, DELETE, BREW, GET on :predict, ...)."""
    method, path = rng.choice([
        ("PUT", _predict_path(model)), ("DELETE", _predict_path(model)),
        ("PATCH", _predict_path(model)), ("OPTIONS", _predict_path(model)),
        ("TRACE", _predict_path(model)), ("BREW", _predict_path(model)),
        ("GET", _predict_path(model)), ("HEAD", _predict_path(model)),
        ("POST", f"/v1/models/{model}"), ("POST", f"/v1/models/{model}/metadata"),
        ("DELETE", f"/v1/models/{model}"), ("PUT", f"/v1/models/{model}/versions/1"),
    ])
    data = body("[" + face_text() + "]") if method not in ("GET", "HEAD") else b""
    return Case(note=f"{method} {path}", method=method, path=path, body=data)


@_rest()
def _host_header(rng: random.Random, model: str) -> Case:
    """Trailing-slash paths with ``Host: evil.example``: no redirect may point there."""
    path = rng.choice([f"/v1/models/{model}/", f"/v1/models/{model}/metadata/",
                       f"/v1/models/{model}/versions/1/", "/v1/models/",
                       f"/v1/models/{model}//"])
    variant = rng.choice(["Host", "Host with port", "X-Forwarded-Host", "absolute URI"])
    if variant == "absolute URI":
        raw = (f"GET http://{EVIL_HOST}{path} HTTP/1.1\r\nHost: {EVIL_HOST}\r\n"
               "Connection: close\r\n\r\n").encode()
        return Case(note=f"GET http://{EVIL_HOST}{path}", method="GET", path=path, raw=raw,
                    read_timeout=10)
    headers = {"Host": (("Host", EVIL_HOST),), "Host with port": (("Host", EVIL_HOST + ":80"),),
               "X-Forwarded-Host": (("X-Forwarded-Host", EVIL_HOST),)}[variant]
    return Case(note=f"GET {path} with {variant}", method="GET", path=path, headers=headers)


def _raw_request(method: str, path: str, headers: Sequence[tuple[str, str]],
                 data: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: {HOST}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


@_rest()
def _body_limit(rng: random.Random, model: str) -> Case:
    """A Content-Length over the 32 MiB body limit, then a little of the body and a close."""
    length = rng.choice([BODY_LIMIT + 1, 33 * 2**20, 2**31, 2**63, 10**30, 10**100])
    raw = _raw_request("POST", _predict_path(model),
                       [("Content-Type", "application/json"), ("Content-Length", str(length))],
                       b'{"instances":[[[[0],[0],[0]')
    # Answered at once from the header, or never (the body does not come): both fine.
    return Case(note=f"Content-Length {length:.3g}", path=_predict_path(model), raw=raw,
                read_timeout=5, tolerate=frozenset({"no reply", "closed", "reset"}))


@_rest()
def _content_length(rng: random.Random, model: str) -> Case:
    """Wrong Content-Length headers: not a number, two of them, shorter or longer than the
    body, together with chunked encoding."""
    data = b'{"instances":[[[[0]]]]}'
    path = _predict_path(model)
    variant = rng.choice(["not a number", "negative", "float", "two differing", "shorter",
                          "longer then close", "with chunked", "bad chunk size"])
    tolerate: frozenset[str] = frozenset()
    half_close = False
    if variant == "not a number":
        raw = _raw_request("POST", path, [("Content-Length", "abc")], data)
    elif variant == "negative":
        raw = _raw_request("POST", path, [("Content-Length", "-1")], data)
    elif variant == "float":
        raw = _raw_request("POST", path, [("Content-Length", "2.3e1")], data)
    elif variant == "two differing":
        raw = _raw_request("POST", path, [("Content-Length", str(len(data))),
                                          ("Content-Length", "5")], data)
    elif variant == "shorter":
        raw = _raw_request("POST", path, [("Content-Length", str(len(data) - 5))], data)
    elif variant == "longer then close":
        raw = _raw_request("POST", path, [("Content-Length", str(len(data) + 1000))], data)
        half_close = True
        tolerate = frozenset({"closed", "no reply", "reset"})  # the body never completes
    elif variant == "with chunked":
        raw = _raw_request("POST", path, [("Content-Length", "3"),
                                          ("Transfer-Encoding", "chunked")],
                           b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n")
    else:
        raw = _raw_request("POST", path, [("Transfer-Encoding", "chunked")],
                           b"zz\r\n" + data + b"\r\n0\r\n\r\n")
    return Case(note=variant, path=path, raw=raw, half_close=half_close, read_timeout=5,
                tolerate=tolerate)


@_rest(weight=0.05, cap=6)
def _chunked_limit(rng: random.Random, model: str) -> Case:
    """A chunked body (no Content-Length) that runs past the body limit: 33 to 40 MiB."""
    mib = rng.choice([33, 40])
    raw = _raw_request("POST", _predict_path(model), [("Transfer-Encoding", "chunked")])
    # Refused once over the limit; the server may close while the rest is still coming.
    return Case(note=f"{mib} MiB chunked", path=_predict_path(model), raw=raw, stream_mib=mib,
                read_timeout=10, tolerate=frozenset({"closed", "reset"}))


@_rest()
def _unknown_keys(rng: random.Random, model: str) -> Case:
    """Valid faces with keys the API does not have (``output_filter``, ``outputs``, ...)."""
    extra = rng.choice([("output_filter", '["nope"]'), ("output_filter", '[PROBABILITIES]'),
                        ("outputs", '["nope"]'), ("nope", "null"), ("batch", "5"),
                        ("model_spec", '{"name":"other"}'), ("", "1")])
    fields = {extra[0]: extra[1]}
    return _post(model, f"{extra[0] or 'empty key'}: {extra[1]}",
                 body("[" + face_text() + "]", **fields))


@_rest()
def _unknown_model(rng: random.Random, model: str) -> Case:
    """Unknown model names, versions and labels, for predict, status and metadata."""
    target = rng.choice([
        ("nope", None, None), (model.upper(), None, None), (model + "%20", None, None),
        ("%00", None, None), ("%C3%A9", None, None), (model, "999", None), (model, "0", None),
        (model, str(2**63), None), (model, "9" * 30, None), (model, None, "nope"),
        (model, None, "stable"), (model, None, "%00"),
    ])
    name, version, label = target
    base = f"/v1/models/{name}" + (f"/versions/{version}" if version else "") + (
        f"/labels/{label}" if label else "")
    kind = rng.choice(["predict", "status", "metadata"])
    if kind == "predict":
        return _post(model, f"predict {base}", body("[" + face_text() + "]"),
                     path=base + ":predict")
    path = base if kind == "status" else base + "/metadata"
    return Case(note=f"{kind} {base}", method="GET", path=path)


# --- gRPC ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _protos() -> SimpleNamespace:
    from tensorflow.core.framework import (
        resource_handle_pb2,
        tensor_pb2,
        tensor_shape_pb2,
        types_pb2,
    )
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        predict_pb2,
    )
    return SimpleNamespace(tensor=tensor_pb2, types=types_pb2, shape=tensor_shape_pb2,
                           resource=resource_handle_pb2, predict=predict_pb2,
                           metadata=get_model_metadata_pb2, status=get_model_status_pb2)


def tensor(dtype: int, dims: Sequence[int], **values: Any) -> Any:
    """A TensorProto of ``dtype`` (an enum value, any int) and ``dims``, with ``values``
    (``float_val=[...]``, ``tensor_content=b"..."``, ...) as they are, unchecked."""
    p = _protos()
    t = p.tensor.TensorProto(dtype=dtype)
    for d in dims:
        t.tensor_shape.dim.add(size=d)
    for field, value in values.items():
        if field == "tensor_content":
            t.tensor_content = value
        else:
            getattr(t, field).extend(value)
    return t


def zero_face_tensor(n: int = 1) -> Any:
    """``n`` zero faces, DT_FLOAT [n,48,48,1]."""
    return tensor(_protos().types.DT_FLOAT, [n, SIDE, SIDE, 1],
                  tensor_content=bytes(4 * PIXELS * n))


def predict_request(model: str, inputs: dict[str, Any], signature: str = "",
                    version: int | None = None, label: str = "",
                    output_filter: Sequence[str] = ()) -> Any:
    """A PredictRequest, unchecked."""
    r = _protos().predict.PredictRequest()
    r.model_spec.name = model
    if signature:
        r.model_spec.signature_name = signature
    if version is not None:
        r.model_spec.version.value = version
    if label:
        r.model_spec.version_label = label
    for name, t in inputs.items():
        r.inputs[name].CopyFrom(t)
    r.output_filter.extend(output_filter)
    return r


def _grpc_predict(note: str, request: Any, **kw: Any) -> Case:
    return Case(note=note, method="Predict", message=request, **kw)


def _odd_dtype_request(rng: random.Random, model: str, dtype: int,
                       **values: Any) -> tuple[str, Any]:
    dims = rng.choice([[1, SIDE, SIDE, 1], [1], []])
    name, signature = rng.choice([("pixels", ""), (IMAGES_INPUT, SIGNATURE_IMAGES)])
    return (f"dims {dims} to {signature or SIGNATURE_PIXELS}",
            predict_request(model, {name: tensor(dtype, dims, **values)}, signature))


@_grpc()
def _dtype_resource(rng: random.Random, model: str) -> Case:
    """DT_RESOURCE inputs (with and without a resource handle)."""
    p = _protos()
    values = rng.choice([{}, {"resource_handle_val": [p.resource.ResourceHandleProto(
        device="/job:x", container="c", name="v")]}])
    note, request = _odd_dtype_request(rng, model, p.types.DT_RESOURCE, **values)
    return _grpc_predict(f"DT_RESOURCE {note}{' + handle' if values else ''}", request)


@_grpc()
def _dtype_variant(rng: random.Random, model: str) -> Case:
    """DT_VARIANT inputs (with and without a variant value)."""
    p = _protos()
    values = rng.choice([{}, {"variant_val": [p.tensor.VariantTensorDataProto(
        type_name="x", metadata=b"\x00\x01")]}])
    note, request = _odd_dtype_request(rng, model, p.types.DT_VARIANT, **values)
    return _grpc_predict(f"DT_VARIANT {note}{' + value' if values else ''}", request)


@_grpc()
def _dtype_undefined(rng: random.Random, model: str) -> Case:
    """dtype enum values TensorFlow does not define (999, DT_INVALID, 2^31-1, negative)."""
    dtype = rng.choice([999, 0, 100, 2**31 - 1, -1, 25 + 100])
    values = rng.choice([{}, {"float_val": [1.0]}, {"tensor_content": bytes(16)}])
    note, request = _odd_dtype_request(rng, model, dtype, **values)
    return _grpc_predict(f"dtype {dtype} {note}", request)


@_grpc()
def _dtype_complex(rng: random.Random, model: str) -> Case:
    """DT_COMPLEX64 / DT_COMPLEX128 pixels."""
    p = _protos()
    dtype, field = rng.choice([(p.types.DT_COMPLEX64, "scomplex_val"),
                               (p.types.DT_COMPLEX128, "dcomplex_val")])
    count = rng.choice([2, 2 * PIXELS])
    request = predict_request(model, {"pixels": tensor(dtype, [1, SIDE, SIDE, 1],
                                                       **{field: [1.0] * count})})
    return _grpc_predict(f"{p.types.DataType.Name(dtype)} ({count // 2} values)", request)


@_grpc()
def _dtype_other(rng: random.Random, model: str) -> Case:
    """Half, bfloat16, bool, quantized and unsigned 64-bit pixels."""
    p = _protos()
    t = p.types
    dtype, field, value = rng.choice([
        (t.DT_HALF, "half_val", 15360), (t.DT_BFLOAT16, "half_val", 16256),
        (t.DT_BOOL, "bool_val", True), (t.DT_QINT8, "int_val", 1),
        (t.DT_QUINT16, "int_val", 1), (t.DT_UINT64, "uint64_val", 2**64 - 1),
        (t.DT_INT64, "int64_val", -2**63), (t.DT_FLOAT8_E5M2, "float_val", 1.0),
    ])
    request = predict_request(model, {"pixels": tensor(dtype, [1, SIDE, SIDE, 1],
                                                       **{field: [value]})})
    return _grpc_predict(p.types.DataType.Name(dtype), request)


@_grpc()
def _dtype_string(rng: random.Random, model: str) -> Case:
    """DT_STRING sent to ``serving_default`` (which takes float pixels)."""
    p = _protos()
    dims, values = rng.choice([([1, SIDE, SIDE, 1], [b"abc"]), ([1], [b"abc"]),
                               ([1, SIDE, SIDE, 1], [b"1"] * PIXELS), ([2], [tiny_png()] * 2)])
    request = predict_request(model, {"pixels": tensor(p.types.DT_STRING, dims,
                                                       string_val=values)})
    return _grpc_predict(f"DT_STRING dims {dims}, {len(values)} values", request)


@_grpc()
def _int_overflow(rng: random.Random, model: str) -> Case:
    """Integer values that do not fit the dtype (DT_INT16 with ``int_val=[-301640232]``)."""
    p = _protos()
    t = p.types
    dtype, value = rng.choice([(t.DT_INT16, -301640232), (t.DT_INT16, 40000),
                               (t.DT_INT8, 1000), (t.DT_UINT8, -1), (t.DT_UINT16, -5),
                               (t.DT_UINT8, 2**31 - 1)])
    dims = rng.choice([[1, SIDE, SIDE, 1], [1]])
    request = predict_request(model, {"pixels": tensor(dtype, dims, int_val=[value])})
    return _grpc_predict(f"{t.DataType.Name(dtype)} int_val=[{value}] dims {dims}", request)


@_grpc(weight=0.1, cap=20)
def _dims_broadcast(rng: random.Random, model: str) -> Case:
    """A ~60-byte request that asks for thousands of faces: dims [2000,48,48,1],
    ``float_val=[1.0]`` (one value, broadcast by TensorFlow's reader)."""
    n = rng.choice([2000, 2000, 1000, 5000])
    request = predict_request(model, {"pixels": tensor(_protos().types.DT_FLOAT,
                                                       [n, SIDE, SIDE, 1], float_val=[1.0])})
    return _grpc_predict(f"dims [{n},48,48,1] float_val=[1.0]", request)


@_grpc()
def _dims_huge(rng: random.Random, model: str) -> Case:
    """Dims no memory holds: [10^9,48,48,1], [2^62,2^62], an overflowing product."""
    p = _protos()
    dims = rng.choice([[10**9, SIDE, SIDE, 1], [2**31, SIDE, SIDE, 1], [2**62, 2**62],
                       [2**40, SIDE, SIDE, 1], [10**18]])
    dtype, values = rng.choice([(p.types.DT_FLOAT, {"float_val": [1.0]}),
                                (p.types.DT_FLOAT, {}),
                                (p.types.DT_STRING, {"string_val": [b"a"]})])
    name = IMAGES_INPUT if dtype == p.types.DT_STRING else "pixels"
    signature = SIGNATURE_IMAGES if name == IMAGES_INPUT else ""
    request = predict_request(model, {name: tensor(dtype, dims, **values)}, signature)
    return _grpc_predict(f"{p.types.DataType.Name(dtype)} dims {dims} {sorted(values)}",
                         request)


@_grpc()
def _dims_negative(rng: random.Random, model: str) -> Case:
    """Negative dims ([-1,48,48,1], [1,-48,48,1], -2^63)."""
    dims = rng.choice([[-1, SIDE, SIDE, 1], [1, -SIDE, SIDE, 1], [-2**63, SIDE, SIDE, 1],
                       [-1], [1, SIDE, SIDE, -1]])
    values = rng.choice([{"float_val": [1.0]}, {"tensor_content": bytes(4 * PIXELS)}, {}])
    request = predict_request(model, {"pixels": tensor(_protos().types.DT_FLOAT, dims,
                                                       **values)})
    return _grpc_predict(f"dims {dims} {sorted(values)}", request)


@_grpc()
def _tensor_content_length(rng: random.Random, model: str) -> Case:
    """``tensor_content`` whose length does not match dims x dtype size."""
    dims = rng.choice([[1, SIDE, SIDE, 1], [2, SIDE, SIDE, 1]])
    right = 4 * PIXELS * dims[0]
    n = rng.choice([0, 3, 100, right - 1, right + 1, right - 4, right + 4 * PIXELS,
                    right // 2])
    request = predict_request(model, {"pixels": tensor(_protos().types.DT_FLOAT, dims,
                                                       tensor_content=bytes(n))})
    return _grpc_predict(f"{n} bytes for dims {dims}", request)


@_grpc()
def _nan_inf(rng: random.Random, model: str) -> Case:
    """NaN and +-Inf pixels (one broadcast value, or in a full face)."""
    value = rng.choice([float("nan"), float("inf"), float("-inf"), 3.4e38, -5.0, 300.0])
    if rng.random() < 0.5:
        t = tensor(_protos().types.DT_FLOAT, [1, SIDE, SIDE, 1], float_val=[value])
        note = f"float_val=[{value}]"
    else:
        content = bytearray(4 * PIXELS)
        i = rng.randrange(PIXELS)
        content[4 * i:4 * i + 4] = struct.pack("<f", value)
        t = tensor(_protos().types.DT_FLOAT, [1, SIDE, SIDE, 1], tensor_content=bytes(content))
        note = f"one pixel {value}"
    return _grpc_predict(note, predict_request(model, {"pixels": t}))


@_grpc()
def _unknown_signature(rng: random.Random, model: str) -> Case:
    """Signature names that do not exist."""
    name = rng.choice(["nope", "SERVING_DEFAULT", "x" * 10000, "\x00", "__saved_model_init_op",
                       "serving_tta", "predict_images_tta", "serving_default ", "é"])
    return _grpc_predict(f"signature {name[:20]!r}",
                         predict_request(model, {"pixels": zero_face_tensor()}, name))


@_grpc()
def _unknown_model(rng: random.Random, model: str) -> Case:
    """Unknown model names, versions and labels."""
    name, version, label = rng.choice([
        ("nope", None, ""), ("", None, ""), (model.upper(), None, ""), (model + "\x00", None, ""),
        ("é" * 100, None, ""), (model, 999, ""), (model, 0, ""), (model, -1, ""),
        (model, 2**62, ""), (model, None, "nope"), (model, None, "stable"),
    ])
    request = predict_request(name, {"pixels": zero_face_tensor()}, version=version, label=label)
    return _grpc_predict(f"model {name[:12]!r} version {version} label {label!r}", request)


@_grpc()
def _output_filter(rng: random.Random, model: str) -> Case:
    """Output filters naming outputs that do not exist."""
    names = rng.choice([["nope"], [PROBABILITIES, "nope"], [""], [PROBABILITIES] * 100,
                        [CLASS_ID, CLASS_ID]])
    request = predict_request(model, {"pixels": zero_face_tensor()}, output_filter=names)
    return _grpc_predict(f"output_filter {names[:3]}", request)


@_grpc()
def _missing_inputs(rng: random.Random, model: str) -> Case:
    """No inputs, or inputs under the wrong name."""
    name = rng.choice([None, "image", "", "Pixels", IMAGES_INPUT])
    inputs = {} if name is None else {name: zero_face_tensor()}
    signature = rng.choice(["", SIGNATURE_IMAGES]) if name != IMAGES_INPUT else ""
    request = predict_request(model, inputs, signature)
    return _grpc_predict(f"inputs {list(inputs)} to {signature or SIGNATURE_PIXELS}", request)


@_grpc()
def _extra_inputs(rng: random.Random, model: str) -> Case:
    """The right input and another one."""
    p = _protos()
    extra = rng.choice([("extra", zero_face_tensor()),
                        (IMAGES_INPUT, tensor(p.types.DT_STRING, [1], string_val=[tiny_png()])),
                        ("", zero_face_tensor())])
    request = predict_request(model, {"pixels": zero_face_tensor(), extra[0]: extra[1]})
    return _grpc_predict(f"pixels + {extra[0]!r}", request)


@_grpc()
def _images_bad(rng: random.Random, model: str) -> Case:
    """``predict_images`` with float pixels, non-image bytes, an empty batch."""
    p = _protos()
    variant = rng.choice(["float pixels", "text", "random bytes", "empty string", "empty batch",
                          "claims 2^31-1 square"])
    if variant == "float pixels":
        t = zero_face_tensor()
    elif variant == "empty batch":
        t = tensor(p.types.DT_STRING, [0])
    else:
        data = {"text": b"hello", "random bytes": rng.randbytes(rng.randint(1, 3000)),
                "empty string": b"",
                "claims 2^31-1 square": png(2**31 - 1, 2**31 - 1, zlib.compress(bytes(100)))
                }[variant]
        t = tensor(p.types.DT_STRING, [1], string_val=[data])
    return _grpc_predict(variant, predict_request(model, {IMAGES_INPUT: t}, SIGNATURE_IMAGES))


@_grpc(weight=0.1, cap=10)
def _images_bomb(rng: random.Random, model: str) -> Case:
    """``predict_images`` with a 20000x20000 PNG of ~400 KB."""
    p = _protos()
    t = tensor(p.types.DT_STRING, [1], string_val=[png_bomb()])
    return _grpc_predict("20000x20000 PNG",
                         predict_request(model, {IMAGES_INPUT: t}, SIGNATURE_IMAGES))


@_grpc()
def _metadata(rng: random.Random, model: str) -> Case:
    """GetModelMetadata with unknown fields, models or versions."""
    p = _protos()
    r = p.metadata.GetModelMetadataRequest()
    fields, name, version = rng.choice([([], model, None), (["nope"], model, None),
                                        (["signature_def", "signature_def"], model, None),
                                        (["signature_def"], "nope", None),
                                        (["signature_def"], model, 999)])
    r.model_spec.name = name
    if version is not None:
        r.model_spec.version.value = version
    r.metadata_field.extend(fields)
    return Case(note=f"fields {fields} model {name} version {version}",
                method="GetModelMetadata", message=r)


@_grpc()
def _model_status(rng: random.Random, model: str) -> Case:
    """GetModelStatus for unknown models, versions and labels."""
    p = _protos()
    r = p.status.GetModelStatusRequest()
    name, version, label = rng.choice([("nope", None, ""), (model, 999, ""), (model, -1, ""),
                                       (model, None, "nope"), ("", None, "")])
    r.model_spec.name = name
    if version is not None:
        r.model_spec.version.value = version
    if label:
        r.model_spec.version_label = label
    return Case(note=f"model {name!r} version {version} label {label!r}",
                method="GetModelStatus", message=r)
