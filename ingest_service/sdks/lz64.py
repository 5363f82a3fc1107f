"""lz-string's compressToBase64 undone (the `lz64` compression older posthog-js versions use),
bounded: the output may not exceed the body cap, so a crafted body cannot inflate without limit
(lz-string output can grow with the square of its input)."""

from __future__ import annotations

from ingest_service.events import BodyRejected

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_VALUE = {char: n for n, char in enumerate(_ALPHABET)}


def _refused(detail: str) -> BodyRejected:
    return BodyRejected(400, "bad_lz64", f"The lz64 body could not be decompressed: {detail}.")


def decompress_base64(text: str, max_chars: int) -> str:
    """The text compressToBase64 was given; BodyRejected when it is not lz-string or too large."""
    try:
        values = [_VALUE[char] for char in text if char not in "\r\n"]
    except KeyError as error:
        raise _refused(f"{error.args[0]!r} is not base64") from None
    if not values:
        return ""
    bits = _Bits(values)
    dictionary: list[str] = ["", "", ""]
    first = bits.read(2)
    if first == 2:
        return ""
    if first > 2:
        raise _refused("it does not start with a character")
    w = chr(bits.read(8 if first == 0 else 16))
    dictionary.append(w)
    result, size = [w], len(w)
    enlarge_in, num_bits = 4, 3
    while True:
        code = bits.read(num_bits)
        if code in (0, 1):
            dictionary.append(chr(bits.read(8 if code == 0 else 16)))
            code = len(dictionary) - 1
            enlarge_in -= 1
        elif code == 2:
            return _from_utf16_units("".join(result))
        if enlarge_in == 0:
            enlarge_in, num_bits = 1 << num_bits, num_bits + 1
        if code < len(dictionary):
            entry = dictionary[code]
        elif code == len(dictionary):
            entry = w + w[0]
        else:
            raise _refused("a reference to nothing")
        size += len(entry)
        if size > max_chars:
            raise BodyRejected(413, "body_too_large",
                               f"The lz64 body decompresses past the {max_chars}-character cap; send smaller batches.")
        result.append(entry)
        dictionary.append(w + entry[0])
        enlarge_in -= 1
        w = entry
        if enlarge_in == 0:
            enlarge_in, num_bits = 1 << num_bits, num_bits + 1


def _from_utf16_units(units: str) -> str:
    """lz-string works on JavaScript's UTF-16 code units: a character outside the BMP (an emoji)
    comes out as two surrogate halves, joined here; a lone half is not text."""
    try:
        return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        raise _refused("it holds a lone UTF-16 surrogate") from None


class _Bits:
    """The 6-bit values' bits, most significant first, read `n` at a time (lowest bit first)."""

    def __init__(self, values: list[int]):
        self.values = values
        self.index = 0
        self.value = values[0]
        self.position = 32

    def read(self, count: int) -> int:
        bits = 0
        for power in range(count):
            if self.position == 0:
                self.index += 1
                if self.index >= len(self.values):
                    raise _refused("it ends too early")
                self.value, self.position = self.values[self.index], 32
            if self.value & self.position:
                bits |= 1 << power
            self.position >>= 1
        return bits
