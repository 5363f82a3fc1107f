"""lz-string's compressToBase64 undone (the `lz64` compression older posthog-js versions use),
bounded like gzip: the output, counted in UTF-8 bytes as it is stored, may not exceed the body cap
nor MAX_INFLATION_RATIO times the request (lz-string output can grow with the square of its
input). Pure Python, about 1 µs a code: ingest_service/offload.py runs it off the event loop."""

from __future__ import annotations

from ingest_service.events import BodyRejected

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
# Each character as its six bits, most significant first ("=" is 64: no bits set); line breaks
# are skipped. str.translate makes the whole bit string in one C-speed pass.
_AS_BITS = {ord(char): format(n & 63, "06b") for n, char in enumerate(_ALPHABET)} | {ord("\r"): "", ord("\n"): ""}


def _refused(detail: str) -> BodyRejected:
    return BodyRejected(400, "bad_lz64", f"The lz64 body could not be decompressed: {detail}.")


def decompress_base64(text: str, max_bytes: int, too_large: BodyRejected) -> bytes:
    """The text compressToBase64 was given, as UTF-8; `too_large` past `max_bytes` of it, and
    BodyRejected (bad_lz64) when it is not lz-string. Time and memory linear in the input plus
    the (capped) output."""
    bits = text.translate(_AS_BITS)
    if bits.count("0") + bits.count("1") != len(bits):  # a character outside the alphabet stayed
        bad = next(char for char in text if ord(char) not in _AS_BITS)
        raise _refused(f"{bad!r} is not base64")
    if not bits:
        return b""
    reader = _Bits(bits)
    read = reader.read
    first = read(2)
    if first == 2:
        return b""
    if first > 2:
        raise _refused("it does not start with a character")
    w = chr(read(8 if first == 0 else 16))
    dictionary: list[str] = ["", "", "", w]
    result, size = [w], 1
    enlarge_in, num_bits = 4, 3
    while True:
        code = read(num_bits)
        if code < 2:
            dictionary.append(chr(read(8 if code == 0 else 16)))
            code = len(dictionary) - 1
            enlarge_in -= 1
        elif code == 2:
            break
        if enlarge_in == 0:
            enlarge_in, num_bits = 1 << num_bits, num_bits + 1
        if code < len(dictionary):
            entry = dictionary[code]
        elif code == len(dictionary):
            entry = w + w[0]
        else:
            raise _refused("a reference to nothing")
        # Characters first (cheap, and never more than UTF-8 bytes), bytes once at the end.
        size += len(entry)
        if size > max_bytes:
            raise too_large
        result.append(entry)
        dictionary.append(w + entry[0])
        enlarge_in -= 1
        w = entry
        if enlarge_in == 0:
            enlarge_in, num_bits = 1 << num_bits, num_bits + 1
    payload = _from_utf16_units("".join(result)).encode()
    if len(payload) > max_bytes:
        raise too_large
    return payload


def _from_utf16_units(units: str) -> str:
    """lz-string works on JavaScript's UTF-16 code units: a character outside the BMP (an emoji)
    comes out as two surrogate halves, joined here; a lone half is not text."""
    try:
        return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        raise _refused("it holds a lone UTF-16 surrogate") from None


class _Bits:
    """The bit string read `count` bits at a time, the first bit read the lowest (lz-string's order)."""

    __slots__ = ("bits", "position")

    def __init__(self, bits: str):
        self.bits = bits
        self.position = 0

    def read(self, count: int) -> int:
        start = self.position
        end = self.position = start + count
        if end > len(self.bits):
            raise _refused("it ends too early")
        return int(self.bits[start:end][::-1], 2)
