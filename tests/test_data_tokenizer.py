"""Tokenizer: builtin vocab, BERT vocab.txt, training from shards, JSON round trip."""

import pytest
import torch

from flip_scale.data.synthetic import write_synthetic_shards
from flip_scale.data.tokenizer import SPECIAL_TOKENS, builtin_vocab, load_tokenizer, \
    train_tokenizer


def test_builtin_is_fixed_length_cls_first_pad_zero():
    tok = load_tokenizer("builtin", 8, cls_token=True)
    ids = tok(["A Large RED circle", "a small blue square at the top right of it all"])
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    assert ids[:, 0].tolist() == [tok.cls_id] * 2 and tok.pad_id == 0
    assert ids[0, -1] == 0  # padded
    assert 0 not in ids[1].tolist()  # truncated, no padding
    assert tok.decode(ids[0]) == "a large red circle"
    assert tok.vocab_size == len(builtin_vocab())


def _bert_vocab(tmp_path):
    """A BERT-layout vocab.txt: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, then word pieces."""
    vocab = SPECIAL_TOKENS + ["a", "photo", "of", "cat", "##s", "dog", ".", "cafe"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return str(path)


def test_vocab_txt_authors_tokens_are_word_pieces_only(tmp_path):
    """The authors' ids (the default, data.text_cls_token false): configs/default.py:55 sets
    aug.txt.cls_token = False, so input_pipeline_laion.py:91-96 passes cls_token None and
    tfds_preprocess_text (lines 41-77) pads the BertTokenizer (line 87) word pieces to max_len = 32
    with 0 (tftx.pad_model_inputs, line 47) and prepends nothing; tf_text's BertTokenizer adds
    neither [CLS] nor [SEP]."""
    tok = load_tokenizer(_bert_vocab(tmp_path), 8)
    assert not tok.cls_token
    ids = tok(["A photo of Cats."])[0].tolist()
    assert ids == [5, 6, 7, 8, 9, 11, 0, 0]  # a photo of cat ##s . [PAD] [PAD]
    assert tok.decode(ids) == "a photo of cats."
    assert tok(["zebra"])[0].tolist() == [1] + [0] * 7  # unknown word -> [UNK]
    # lower_case=True in tf_text also strips accents (NFD, drop combining marks): Café -> cafe.
    assert tok(["Café"])[0].tolist()[0] == 12
    # Cut to the first 8 word pieces, nothing reserved for specials.
    long = tok(["a photo of cats. a photo of dogs."])[0].tolist()
    assert long == [5, 6, 7, 8, 9, 11, 5, 6]
    assert tok.encode_caption("a photo") == [5, 6] + [0] * 6
    assert tok.encode_caption("\u200b") is None  # no word piece at all


def test_vocab_txt_cls_mode_is_cls_word_pieces_sep(tmp_path):
    """data.text_cls_token true: BERT's [CLS] ... [SEP], so text_length - 2 word pieces."""
    tok = load_tokenizer(_bert_vocab(tmp_path), 8, cls_token=True)
    ids = tok(["A photo of Cats."])[0].tolist()
    assert ids == [2, 5, 6, 7, 8, 9, 11, 3]
    assert tok.decode(ids) == "a photo of cats."
    assert tok(["zebra"])[0].tolist()[:4] == [2, 1, 3, 0]
    assert tok(["a photo of cats. a photo of dogs."])[0].tolist() == [2, 5, 6, 7, 8, 9, 11, 3]


def test_cls_mode_survives_pickling_for_loader_workers(tmp_path):
    import pickle

    for cls in (False, True):
        tok = load_tokenizer(_bert_vocab(tmp_path), 8, cls_token=cls)
        copy = pickle.loads(pickle.dumps(tok))
        assert copy.cls_token is cls and torch.equal(copy(["a dog"]), tok(["a dog"]))


def test_a_json_with_a_cls_template_still_gives_word_pieces_only(tmp_path):
    """The saved tokenizer JSON carries BERT's [CLS]/[SEP] post-processor; the mode comes from
    data.text_cls_token, not from the file."""
    load_tokenizer(_bert_vocab(tmp_path), 8).save(str(tmp_path / "tok.json"))
    assert tok_ids(load_tokenizer(str(tmp_path / "tok.json"), 8)) == [5, 6, 7, 0, 0, 0, 0, 0]
    assert tok_ids(load_tokenizer(str(tmp_path / "tok.json"), 8, cls_token=True)) == [2, 5, 6, 7, 3, 0, 0, 0]


def tok_ids(tok):
    return tok(["A photo of"])[0].tolist()


def test_trained_tokenizer_round_trips_captions(tmp_path):
    shards = write_synthetic_shards(str(tmp_path / "s"), 40, 20, seed=0, image_size=16)
    out = str(tmp_path / "tok" / "tokenizer.json")
    train_tokenizer(str(tmp_path / "s"), 200, out)
    tok = load_tokenizer(out, 32)
    assert tok.vocab_size <= 200 and tok.pad_id == 0
    caption = "a photo of a large red circle at the top left"
    ids = tok([caption])[0]
    assert tok.cls_id not in ids.tolist() and tok.decode(ids) == caption
    assert 1 not in ids.tolist()  # no [UNK] for words seen in training
    # the BERT-style vocab.txt written beside it loads to the same ids
    assert torch.equal(load_tokenizer(str(tmp_path / "tok" / "tokenizer.vocab.txt"), 32)([caption])[0], ids)
    tok.save(str(tmp_path / "copy.json"))
    assert torch.equal(load_tokenizer(str(tmp_path / "copy.json"), 32)([caption])[0], ids)
    assert len(shards) == 2


def test_bad_spec_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_tokenizer(str(tmp_path / "nope.json"), 8)


def test_prep_tokenizer_command_output_loads_as_data_tokenizer(tmp_path, capsys):
    """`flip-scale prep tokenizer` end to end (through the package's command line)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    write_synthetic_shards(str(tmp_path / "s"), 30, 10, seed=2, image_size=16)
    out = tmp_path / "tok.json"
    spec = str(tmp_path / "s" / "{00000..00002}.tar")
    proc = subprocess.run([sys.executable, "-m", "flip_scale", "prep", "tokenizer", "--shards",
                           spec, "--vocab-size", "150", "--output", str(out)], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tok = load_tokenizer(str(out), 32)
    for caption in ["a small cyan cross in the center", "at the bottom right, a large green star"]:
        assert tok.decode(tok([caption])[0]) == caption
    from flip_scale.data.prep_cli import main_prep

    rc = main_prep(["tokenizer", "--shards", str(tmp_path / "none-{0..3}.tar"), "--vocab-size",
                    "150", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "matches no shards" in err[0]


def _tf_text_lower_case(s: str) -> str:
    """What tf_text's BertTokenizer(lower_case=True) (the authors' tokenizer, facebookresearch/flip
    input_pipeline_laion.py:87) does to text before splitting (tensorflow_text bert_tokenizer.py,
    BasicTokenizer.tokenize): case_fold_utf8 (ICU NFKC_Casefold, "NFKC normalization is implicitly
    applied"), normalize_utf8 NFD, then regex_replace \\p{Mn} -> "". NFKC_Casefold is written here
    as NFKC(casefold(NFKC(s))), Unicode's definition up to the default-ignorable removal."""
    import unicodedata as u

    folded = u.normalize("NFKC", u.normalize("NFKC", s).casefold())
    return "".join(c for c in u.normalize("NFD", folded) if u.category(c) != "Mn")


def test_normalizer_is_tf_texts_nfkc_casefold_on_every_letter():
    """Every letter, number and symbol of the Basic Multilingual Plane (CJK ideographs aside: BERT
    spaces them; controls, format characters and spaces: BERT's clean_text removes them), alone and
    inside a word: our normalizer gives tf_text's lower_case text."""
    import unicodedata as u

    from tokenizers import normalizers

    from flip_scale.data.tokenizer import tf_text_normalizer

    def cjk(c):  # BERT's _is_chinese_char ranges in the BMP: both tokenizers split them one a token
        return 0x4E00 <= ord(c) <= 0x9FFF or 0x3400 <= ord(c) <= 0x4DBF or 0xF900 <= ord(c) <= 0xFAFF

    norm = tf_text_normalizer()
    chars = [chr(cp) for cp in range(0x20, 0x10000) if not 0xD800 <= cp <= 0xDFFF
             and u.category(chr(cp))[0] in "LNSP" and not cjk(chr(cp)) and cp != 0xFFFD]
    assert len(chars) > 25000
    differ = [c for c in chars  # (CJK spaced as BERT does, e.g. KANGXI RADICALS)
              if norm.normalize_str(f"Ab{c}Σ") != "".join(f" {x} " if cjk(x) else x for x in _tf_text_lower_case(f"Ab{c}Σ"))]
    # Only where tokenizers' Unicode tables are older than Python's (NFKC of 5 chars of Unicode 12-14).
    skew = [c for c in differ if normalizers.NFKC().normalize_str(c) != u.normalize("NFKC", c)]
    assert differ == skew and len(skew) <= 8, [hex(ord(c)) for c in differ]


def test_vocab_txt_normalises_as_tf_text_lower_case(tmp_path):
    """Issue 20: `ﬁsh` -> fish and `ＣＡＴ` -> cat (NFKC), `Straße` -> strasse (case fold, not
    lowercase), accents dropped; before this the ligature was [UNK] and fullwidth letters [UNK]."""
    vocab = SPECIAL_TOKENS + ["fish", "cat", "cats", "st", "##ras", "##se", "cafe", "σοφοσ", "##s"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tok = load_tokenizer(str(path), 6)
    v = {t: i for i, t in enumerate(vocab)}
    assert tok(["ﬁsh"])[0].tolist() == [v["fish"], 0, 0, 0, 0, 0]
    assert tok(["ＣＡＴ"])[0].tolist() == [v["cat"], 0, 0, 0, 0, 0]
    assert tok(["Cats"])[0].tolist()[:1] == [v["cats"]]  # one piece where the vocabulary has it
    assert tok(["Straße"])[0].tolist()[:3] == [v["st"], v["##ras"], v["##se"]]
    assert tok(["CAFÉ ΣΟΦΟΣ σοφός"])[0].tolist()[:3] == [v["cafe"], v["σοφοσ"], v["σοφοσ"]]  # ς folds to σ
    assert 1 not in tok(["ﬁsh ＣＡＴ Straße"])[0].tolist()  # no [UNK]
    # The normaliser survives the JSON a run directory stores and the pickling loader workers do.
    import pickle

    tok.save(str(tmp_path / "tok.json"))
    for again in (load_tokenizer(str(tmp_path / "tok.json"), 6), pickle.loads(pickle.dumps(tok))):
        assert torch.equal(again(["ﬁsh ＣＡＴ"]), tok(["ﬁsh ＣＡＴ"]))
