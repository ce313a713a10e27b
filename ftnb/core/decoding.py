"""Text files in any common Unicode encoding: which one a file is in (its byte order mark, or the pattern of its NUL
bytes when it has none), its lines read as bytes in constant memory, and a line decoded with a bad byte's column
counted in characters, as a text editor shows it."""
import codecs
from dataclasses import dataclass

# UTF-32-LE before UTF-16-LE: their BOMs start alike
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
HEAD_BYTES = 4096  # read to tell the encoding
CHUNK = 1 << 16
ESCAPE = "ftnb.escape"  # error handler: each undecodable byte b becomes the lone surrogate U+DC00+b


def _escape(e):
    return "".join(chr(0xDC00 + b) for b in e.object[e.start:e.end]), e.end


codecs.register_error(ESCAPE, _escape)


@dataclass(frozen=True)
class Encoding:
    """How a file's bytes are text: `codec` (a Python codec name that reads no BOM of its own) and the length of the
    byte order mark that starts the file (`bom`, 0 when it has none)."""
    codec: str = "utf-8"
    bom: int = 0
    guessed: bool = False  # no BOM, but the NUL bytes can only mean this

    @property
    def label(self):
        """As the data report says it: "utf-8", "utf-8 with BOM", "utf-16-le with BOM", "utf-16-le (no BOM)"."""
        return self.codec + (" with BOM" if self.bom else " (no BOM)" if self.guessed else "")

    @property
    def newline(self):
        return "\n".encode(self.codec)  # one code unit: 1, 2 or 4 bytes

    def decode(self, raw, whole_file=False):
        """The text of `raw` (bytes: one line, or the `whole_file`), or raise ValueError naming the first bad bytes
        and where they are ("at column 5", or "at line 3, column 5" in a whole file)."""
        try:
            return raw.decode(self.codec)
        except UnicodeDecodeError as e:
            bad = raw[e.start:e.end]
            before = raw[:e.start].decode(self.codec, "replace")
            line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
            where = f"line {line}, column {column}" if whole_file else f"column {column}"
            raise ValueError(f"not valid {self.codec.upper()} ({'byte' if len(bad) == 1 else 'bytes'} "
                             f"{' '.join(f'0x{b:02x}' for b in bad)} at {where})") from None


def sniff(head):
    """The Encoding of a file that starts with the bytes `head` (a few KB)."""
    for bom, codec in BOMS:
        if head.startswith(bom):
            return Encoding(codec, len(bom))
    codec = _nul_pattern(head)
    return Encoding(codec, 0, True) if codec else Encoding()


def _nul_pattern(head):
    """The UTF-16/32 codec a BOM-less `head` must be in, or None. UTF-8 text holds no NUL bytes. UTF-16 or UTF-32
    text decodes (in the right byte order only) to text without NULs that starts with ASCII (JSON punctuation, a CSV
    header) or is a quarter ASCII at least. Random bytes fail one of these."""
    if b"\x00" not in head:
        return None
    for codec, unit in (("utf-32-le", 4), ("utf-32-be", 4), ("utf-16-le", 2), ("utf-16-be", 2)):
        sample = head[:len(head) - len(head) % unit]
        try:
            text = sample.decode(codec)
        except UnicodeDecodeError as e:
            if e.start < len(sample) - 4:  # a character cut at the end of the sample is fine
                continue
            text = sample[:e.start].decode(codec)
        mostly_ascii = text[:1] < "\x80" or 4 * sum(c < "\x80" for c in text) >= len(text)
        if len(text) >= 2 and "\x00" not in text and mostly_ascii:
            return codec
    return None


def lines(fh, newline, limit):
    """Each line of the binary file `fh` (newline included) as bytes, or None for a line over `limit` bytes, which is
    skipped. `newline` is one code unit and counts only where a unit starts (the UTF-16-LE newline is b"\\n\\x00";
    the byte 0x0a inside another character is no line end)."""
    unit = len(newline)
    buf, start, search, skipping = b"", 0, 0, False
    while True:
        i = buf.find(newline, search)
        while i != -1 and (i - start) % unit:
            i = buf.find(newline, i + 1)
        if i != -1:
            end = i + unit
            if not skipping:
                yield buf[start:end] if i - start <= limit else None
            start = search = end
            skipping = False
            continue
        if (len(buf) - start) // unit * unit > limit and not skipping:  # whole units, none a newline
            yield None
            skipping = True
        if skipping:  # drop what was read of the enormous line, whole units only
            start += (len(buf) - start) // unit * unit
        chunk = fh.read(CHUNK)
        if not chunk:
            if start < len(buf) and not skipping:
                yield buf[start:]
            return
        search = (len(buf) - start) // unit * unit  # the whole units before this were searched
        buf, start = buf[start:] + chunk, 0
