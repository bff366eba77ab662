"""Text tokenizer: BERT-style uncased WordPiece, as FLIP used, on the `tokenizers` library.

`data.tokenizer` names one of
- a tokenizers JSON file (e.g. bert-base-uncased's tokenizer.json, or one written by
  `flip-scale prep tokenizer`),
- a BERT vocab.txt (one WordPiece token a line), built into an uncased BertWordPiece tokenizer,
- `builtin`: a small deterministic vocabulary made in memory from the synthetic captions'
  words plus single characters, so demos and tests need no file and no network.

Whatever the source, the output is text_length ids padded with the pad id (0 for BERT
vocabularies). FLIP uses no attention mask, so padding must be a stable id. Two layouts
(`data.text_cls_token`):
- false (default, the authors' tokens): the caption's first text_length word pieces, no [CLS],
  no [SEP]. The release sets `config.aug.txt.cls_token = False` (configs/default.py) and
  tf_text's BertTokenizer adds no special tokens (input_pipeline_laion.py, tfds_preprocess_text),
  so the text feature, the output at position 0, is that of the caption's first word piece.
- true: [CLS] first, then text_length - 2 word pieces and [SEP] (BERT's single-sentence
  layout); the feature at position 0 is then [CLS]'s.
"""

from __future__ import annotations

import functools
import os
import string
import sys
import unicodedata
from typing import Iterable, Iterator, Sequence

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, BERT's order of roles


def _strip_accents(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")


@functools.lru_cache(maxsize=1)
def _casefold_rules() -> tuple[tuple[str, str], ...]:
    """(char, its NFKC case fold) for every char that lowercasing leaves alone but case folding
    changes (ß -> ss, final ς -> σ, ᾳ -> αι, Cherokee, ...): where NFKC_Casefold and NFKC +
    lowercase disagree. 162 with Python 3.11's Unicode tables (a scan of ~1 s, once a process)."""
    rules = []
    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        folded = c.casefold()
        if folded != c and c.lower() == c and not 0xD800 <= cp <= 0xDFFF:
            folded = unicodedata.normalize("NFKC", folded)
            if folded != c:
                rules.append((c, folded))
    return tuple(rules)


def tf_text_normalizer(vocab: Sequence[str] | None = None) -> normalizers.Normalizer:
    """tf_text's BertTokenizer(lower_case=True) normalisation, which the authors tokenise with
    (facebookresearch/flip input_pipeline_laion.py:87): `case_fold_utf8` (ICU NFKC_Casefold:
    `ﬁsh` -> fish, `ＣＡＴ` -> cat, ß -> ss), NFD, combining marks (Mn) dropped, control and
    format characters removed; then BERT's splitting. tokenizers' BertNormalizer alone only
    lowercases (ﬁ stays one unknown character, fullwidth letters stay fullwidth), so NFKC and
    the case-fold rules run first. With a vocabulary, a rule whose two sides share no character
    with it is left out (the word is [UNK] either way): 74 of 162 for BERT's vocab.txt."""
    rules = _casefold_rules()
    if vocab is not None:
        chars = {c for tok in vocab for c in (tok[2:] if tok.startswith("##") else tok)}
        rules = tuple((c, f) for c, f in rules if chars & set(_strip_accents(c) + _strip_accents(f)))
    return normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase()]
        + [normalizers.Replace(c, f) for c, f in rules]
        + [normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True,
                                      lowercase=False)])


def _bert_pipeline(tok: Tokenizer, vocab: Sequence[str] | None = None) -> Tokenizer:
    """Give a WordPiece model the authors' (tf_text) uncased normalisation, BERT splitting,
    decoding and [CLS]/[SEP]."""
    tok.normalizer = tf_text_normalizer(vocab)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    # Mark the specials as special (ids unchanged) so decode(skip_special_tokens) drops them
    # and normalisation never splits them.
    tok.add_special_tokens([t for t in SPECIAL_TOKENS if tok.token_to_id(t) is not None])
    if tok.token_to_id("[CLS]") is not None and tok.token_to_id("[SEP]") is not None:
        _set_cls_sep(tok)  # used only with text_cls_token; a vocabulary without them still works without
    return tok


def _set_cls_sep(tok: Tokenizer) -> None:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise ValueError("tokenizer vocabulary lacks [CLS] or [SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])


def builtin_vocab() -> list[str]:
    """The builtin vocabulary: specials, synthetic caption words, characters and ## suffix characters."""
    from .synthetic import caption_words  # local import: synthetic pulls in PIL/numpy only

    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = list(SPECIAL_TOKENS)
    seen = set(vocab)
    # Characters and ##characters make every ASCII word encodable (no [UNK] for plain English).
    for t in chars + ["##" + c for c in string.ascii_lowercase + string.digits] + caption_words():
        if t not in seen:
            seen.add(t)
            vocab.append(t)
    return vocab


def _from_vocab(tokens: Sequence[str]) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    return _bert_pipeline(Tokenizer(WordPiece(vocab=vocab, unk_token="[UNK]",
                                              max_input_chars_per_word=100)), tokens)


class TextTokenizer:
    """Callable turning a list of captions into a LongTensor [B, text_length].

    cls_token false: word pieces only (the authors' layout); true: [CLS] word pieces [SEP].
    """

    def __init__(self, tokenizer: Tokenizer, text_length: int, cls_token: bool = False):
        if text_length < (2 if cls_token else 1):
            raise ValueError(f"text_length must be at least {2 if cls_token else 1}"
                             f"{' ([CLS] + one token)' if cls_token else ''}, got {text_length}")
        self.tokenizer = tokenizer
        self.text_length = text_length
        self.cls_token = bool(cls_token)
        pad_id = None
        for name in ("[PAD]", "<pad>"):
            pad_id = tokenizer.token_to_id(name)
            if pad_id is not None:
                pad_token = name
                break
        if pad_id is None:
            raise ValueError("tokenizer vocabulary has no [PAD] token")
        self.pad_id = pad_id
        self.cls_id = tokenizer.token_to_id("[CLS]")
        self.sep_id = tokenizer.token_to_id("[SEP]")
        # Fix padding/truncation here rather than trusting the file's settings: the model's
        # position table has exactly text_length entries.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=text_length)
        tokenizer.enable_padding(length=text_length, pad_id=pad_id, pad_token=pad_token)
        if self.cls_token:
            if self.cls_id is None or self.sep_id is None:
                raise ValueError("data.text_cls_token: the tokenizer vocabulary lacks [CLS] or [SEP]")
            if tokenizer.encode("a").ids[0] != self.cls_id:
                _set_cls_sep(tokenizer)  # a JSON without a post-processor: add BERT's template

    def encode_caption(self, caption: str) -> list[int] | None:
        """One caption's text_length ids, or None when it yields no word piece (only [CLS]/[SEP]/
        padding: a caption of only zero-width or control characters would train on no text)."""
        # add_special_tokens decides the layout, whatever post-processor a JSON file carries.
        ids = self.tokenizer.encode(caption, add_special_tokens=self.cls_token).ids
        return ids if any(t not in (self.cls_id, self.sep_id, self.pad_id) for t in ids) else None

    @property
    def vocab_size(self) -> int:
        """Number of entries in the embedding table the text tower needs."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Tokenise captions to int64 [B, text_length]: word pieces (after [CLS], before [SEP]
        with cls_token), then the pad id."""
        if isinstance(texts, str):
            texts = [texts]
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=self.cls_token)
        return torch.tensor([e.ids for e in encs], dtype=torch.long).reshape(len(encs),
                                                                             self.text_length)

    def decode(self, ids) -> str:
        """Token ids (list or 1-D tensor) back to text, special tokens removed."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def save(self, path: str) -> None:
        """Write the tokenizer as a tokenizers JSON file (loadable by load_tokenizer)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.tokenizer.save(path)

    # tokenizers objects pickle fine; define these so DataLoader workers get a usable copy.
    def __getstate__(self):
        return {"json": self.tokenizer.to_str(), "text_length": self.text_length,
                "cls_token": self.cls_token}

    def __setstate__(self, state):
        self.__init__(Tokenizer.from_str(state["json"]), state["text_length"], state["cls_token"])


def load_tokenizer(spec: str, text_length: int, cls_token: bool = False) -> TextTokenizer:
    """Load `spec` ("builtin", a tokenizers JSON file or a BERT vocab.txt) as a fixed-length
    tokenizer; `cls_token` is data.text_cls_token (false = the authors' word-piece-only ids)."""
    if spec == "builtin":
        return TextTokenizer(_from_vocab(builtin_vocab()), text_length, cls_token)
    if not os.path.isfile(spec):
        raise ValueError(f"data.tokenizer: no such file {spec!r} (expected a tokenizers JSON, "
                         f"a BERT vocab.txt, or 'builtin')")
    with open(spec, "rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"{"):
        try:
            tok = Tokenizer.from_file(spec)
        except Exception as e:  # noqa: BLE001 - surface the library's reason in one line
            raise ValueError(f"data.tokenizer: cannot read tokenizers JSON {spec!r}: {e}") from e
        return TextTokenizer(tok, text_length, cls_token)
    with open(spec, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    tokens = [t for t in tokens if t]
    if not tokens or "[PAD]" not in tokens or "[UNK]" not in tokens:
        raise ValueError(f"data.tokenizer: {spec!r} is not a BERT vocab.txt ([PAD]/[UNK] missing)")
    return TextTokenizer(_from_vocab(tokens), text_length, cls_token)


def _iter_shard_captions(shards: str) -> Iterator[str]:
    from .shards import expand_shards, iter_tar_samples

    for url in expand_shards(shards):
        for sample in iter_tar_samples(url):
            txt = sample.get("txt")
            if txt:
                caption = txt.decode("utf-8", errors="replace").strip()
                if caption:
                    yield caption


def train_tokenizer(shards: str, vocab_size: int, output: str,
                    captions: Iterable[str] | None = None) -> TextTokenizer:
    """Train an uncased WordPiece vocabulary of `vocab_size` on the captions of `shards`.

    Writes a tokenizers JSON to `output` (plus `output`'s stem + .vocab.txt, a BERT vocab) and
    returns the tokenizer. Special tokens get ids 0..4 ([PAD]=0), as in BERT's vocabulary.
    """
    from tokenizers.trainers import WordPieceTrainer

    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = tf_text_normalizer()  # the same text the tokenizer will later see
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                               min_frequency=1, continuing_subword_prefix="##",
                               show_progress=False)
    texts = captions if captions is not None else _iter_shard_captions(shards)
    n = 0

    def counted():
        nonlocal n
        for t in texts:
            n += 1
            yield t

    tok.train_from_iterator(counted(), trainer=trainer)
    if n == 0:
        raise ValueError(f"no captions found in {shards!r}")
    _bert_pipeline(tok, list(tok.get_vocab()))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tok.save(output)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    with open(os.path.splitext(output)[0] + ".vocab.txt", "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t, _ in vocab))
    return TextTokenizer(Tokenizer.from_file(output), 32)
