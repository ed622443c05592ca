"""Tokens in and text out: tokenizing, special-token ids, UTF-8-safe streaming detokenization."""

from __future__ import annotations

import codecs
import ctypes

# The most characters handed to llama.cpp's tokenizer in one call (see Vocab.tokenize_bounded).
CHUNK_CHARS = 256


class Vocab:
    """The model's vocabulary, through llama.cpp's C API."""

    def __init__(self, model: int, vocab: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._model = model
        self._vocab = vocab
        self.handle = vocab   # the C ``llama_vocab *`` (what samplers and grammars are built from)
        self.n_tokens = llama_cpp.llama_vocab_n_tokens(vocab)
        self.bos = llama_cpp.llama_vocab_bos(vocab)
        self.eos = llama_cpp.llama_vocab_eos(vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        # A vocabulary of type NONE has no tokenizer: llama.cpp aborts the process if asked to use it.
        self.has_tokenizer = llama_cpp.llama_vocab_type(vocab) != llama_cpp.LLAMA_VOCAB_TYPE_NONE
        self._guarded = None   # see guard_in_text
        self._piece_buf = ctypes.create_string_buffer(256)
        self._piece_cache: dict[int, bytes] = {}

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of ``text`` with no BOS added; special tokens parsed when ``special``."""
        if not self.has_tokenizer:
            from localcascade.errors import EngineError

            raise EngineError("the model has no tokenizer: it cannot read text")
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buf = (self._lib.llama_token * capacity)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, special)
            if n >= 0:
                return list(buf[:n])
            capacity = -n

    def tokenize_bounded(self, text: str, *, special: bool, stop_after: int | None = None) -> list[int]:
        """``tokenize`` in pieces of at most CHUNK_CHARS, cut before whitespace where there is some.

        llama.cpp splits text at special tokens in time quadratic in their count within one call
        (user-defined ones, such as Gemma's runs of newlines, even with ``special`` off): 100,000
        "a\\n\\n" took 114 s in one uninterruptible call. Cut before whitespace, the pieces tokenize
        as the whole would, but for the rare merge across a cut.
        """
        if len(text) <= CHUNK_CHARS:
            return self.tokenize(text, special=special)
        tokens: list[int] = []
        start = 0
        while start < len(text):
            end = min(len(text), start + CHUNK_CHARS)
            if end < len(text):
                # Before whitespace; failing that before "<" or "[", where special tokens start, so
                # that markup without whitespace is not cut inside one.
                cut = max(text.rfind(c, start + 1, end) for c in " \n")
                if cut <= start:
                    cut = max(text.rfind(c, start + 1, end) for c in "<[")
                end = cut if cut > start else end
            tokens += self.tokenize(text[start:end], special=special)
            start = end
            if stop_after is not None and len(tokens) > stop_after:
                break
        return tokens

    def tokenize_marked(self, text: str, stop_after: int | None = None) -> list[int]:
        """Tokens of a chat rendering marked by ``ChatTemplate.render(mark_content=True)`` (or a
        piece of one): the template's markup with special tokens parsed, message content as text.

        With ``stop_after``, tokenizing ends once more tokens than that are made (a prompt that
        cannot fit anyway costs no more than the context it overflows).
        """
        from localcascade.engine.template import split_marked

        tokens: list[int] = []
        for part, is_content in split_marked(text):
            if is_content and self._guarded is not None and self._guarded.search(part):
                tokens += self._tokenize_guarded(part)
            else:
                tokens += self.tokenize_bounded(part, special=not is_content, stop_after=stop_after)
            if stop_after is not None and len(tokens) > stop_after:
                break
        return tokens

    def guard_in_text(self, texts) -> None:
        """Keep these tokens (the engine's markers: <think>, <tool_call>...) out of message text even
        where the vocabulary makes them user-defined, which llama.cpp matches in text too: a
        "</think>" typed by a user would otherwise end the model's thought."""
        import re

        import llama_cpp

        matched_in_text = []
        for text in texts:
            token = self.special_id(text)
            if token is not None and not llama_cpp.llama_vocab_get_attr(self._vocab, token) & (
                    llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN):
                matched_in_text.append(text)
        self._guarded = re.compile("|".join(map(re.escape, matched_in_text))) if matched_in_text else None

    def _tokenize_guarded(self, text: str) -> list[int]:
        """Text holding guarded marker texts: each is tokenized in two pieces, which no token spans."""
        tokens: list[int] = []
        start = 0
        for match in self._guarded.finditer(text):
            marker = match.group()
            tokens += self.tokenize_bounded(text[start:match.start()], special=False)
            tokens += self.tokenize(marker[:1], special=False) + self.tokenize(marker[1:], special=False)
            start = match.end()
        return tokens + self.tokenize_bounded(text[start:], special=False)

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes one token stands for (special tokens render as '' unless ``special``)."""
        key = token if not special else -token - 1
        cached = self._piece_cache.get(key)
        if cached is not None:
            return cached
        n = self._lib.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            data = buf.raw[:n]
        else:
            data = self._piece_buf.raw[:n]
        self._piece_cache[key] = data
        return data

    def text_of(self, token: int) -> str:
        """The token's text as written in the vocabulary ("<think>", "<|im_end|>")."""
        raw = self._lib.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def special_id(self, text: str) -> int | None:
        """The id of a token whose text is exactly ``text`` (e.g. "<think>"), or None."""
        ids = self.tokenize(text, special=True)
        if len(ids) == 1 and self.text_of(ids[0]) == text:
            return ids[0]
        return None

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        return b"".join(self.piece(t, special=special) for t in tokens).decode("utf-8", errors="replace")


class StreamDecoder:
    """Bytes of streamed tokens -> text, holding back incomplete UTF-8 sequences.

    A multi-byte character is often split over two tokens; decoding each
    token on its own would print replacement characters.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
