"""multipart/form-data uploads parsed in one call, off the event loop.

Starlette's form parser feeds every chunk of an upload through the event loop and a spooled
temporary file; for image uploads of a few hundred kilobytes under concurrency that loop
became the service's bottleneck (benchmarks/bench_serve.py). Here the route reads the body (the
upload limit is enforced while it arrives, by the Gate) and the thread that decodes the image
(a decode thread for searches, a worker thread for adds) also parses the form, with
python-multipart's parser directly."""
from __future__ import annotations

from dataclasses import dataclass, field

from .service import BadInput

MAX_FIELDS = 16


@dataclass
class Form:
    """The parts of a form: at most one file, text fields by name."""

    data: bytes = b""
    filename: str | None = None       # None: no file part was sent
    fields: dict[str, str] = field(default_factory=dict)


def parse_form(body: bytes, content_type: str, file_field: str = "file") -> Form:
    """Parse a multipart/form-data body; BadInput (400) for a malformed one."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadInput("multipart/form-data without a boundary", 400)
    form = Form()
    parts: list[tuple[dict[bytes, bytes], list[bytes]]] = []
    header = [b"", b""]

    def begin() -> None:
        parts.append(({}, []))

    def header_field(d: bytes, s: int, e: int) -> None:
        header[0] += d[s:e]

    def header_value(d: bytes, s: int, e: int) -> None:
        header[1] += d[s:e]

    def header_end() -> None:
        parts[-1][0][header[0].strip().lower()] = header[1].strip()
        header[0] = header[1] = b""

    def data(d: bytes, s: int, e: int) -> None:
        parts[-1][1].append(d[s:e])

    parser = MultipartParser(boundary, {"on_part_begin": begin, "on_header_field": header_field,
                                        "on_header_value": header_value, "on_header_end": header_end,
                                        "on_part_data": data})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as e:  # noqa: BLE001 - python-multipart raises its own error types
        raise BadInput(f"malformed multipart/form-data: {e}", 400) from None
    if len(parts) > MAX_FIELDS + 1:
        raise BadInput(f"too many form parts ({len(parts)}; at most {MAX_FIELDS + 1})", 400)
    for headers, chunks in parts:
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disp:
            if name != file_field or form.filename is not None:
                raise BadInput(f"send one file, in the form field {file_field!r}", 400)
            form.filename = disp[b"filename"].decode("utf-8", "replace")
            form.data = b"".join(chunks)
        elif name:
            try:
                form.fields[name] = b"".join(chunks).decode("utf-8")
            except UnicodeDecodeError:
                raise BadInput(f"form field {name!r} is not UTF-8 text", 400) from None
    return form
