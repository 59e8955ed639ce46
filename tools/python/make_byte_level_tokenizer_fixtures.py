#!/usr/bin/env python3
# Golden fixtures for the byte-level BPE path of data/tokenizer (Llama 3 and GPT-2 style
# tokenizer.json files).
#
# Rerun from the repository root (needs transformers 4.42.4 and the tokenizers library it installs;
# make_tokenizer_fixtures.py runs this too):
#     python3 tools/python/make_byte_level_tokenizer_fixtures.py
# Llama 3's own files cannot be downloaded here, so this script builds small tokenizers of the same
# form with the tokenizers library: a byte-level BPE trained on TRAINING_TEXT (a few KB of English,
# code, numbers and many scripts) to about 1000 pieces, and writes under
# tests/fixtures/tokenizer/byte_level/:
#   llama3/tokenizer.json        Llama 3's pipeline: no normalizer; pre-tokenizer Sequence[Split(the
#                                Llama 3 regex, Isolated), ByteLevel(add_prefix_space false,
#                                use_regex false)]; BPE with ignore_merges, no byte fallback, and a few
#                                extra pieces that no merge produces (so ignore_merges changes ids);
#                                Llama 3.1's first special tokens as added tokens after the pieces;
#                                post-processor Sequence[ByteLevel, TemplateProcessing prepending
#                                <|begin_of_text|>]; decoder ByteLevel
#   llama3/tokenizer_config.json the fields of Meta-Llama-3-8B-Instruct's config that matter
#                                (PreTrainedTokenizerFast, bos/eos, clean_up_tokenization_spaces true)
#   llama3_no_cleanup/tokenizer_config.json   the same with clean_up_tokenization_spaces false
#   gpt2/tokenizer.json          GPT-2's pipeline: ByteLevel(add_prefix_space false, use_regex true)
#                                pre-tokenizer, plain BPE, <|endoftext|> and two non-special added
#                                tokens (one with a space, one with a non-ASCII letter: the ByteLevel
#                                decoder passes the first through and mangles the second, as GPT-2
#                                tokenizers do)
#   gpt2/tokenizer_config.json   GPT2Tokenizer, <|endoftext|> for bos/eos/unk
#   golden_<variant>.json        per variant: how transformers loads it, its special ids, and for
#                                every text of texts.json AutoTokenizer's ids without and with special
#                                tokens, then decodes (with and without skip_special_tokens) of those
#                                ids and of random id sequences (invalid UTF-8, cut characters,
#                                clean-up patterns)
#   texts.json                   the texts: most of make_tokenizer_fixtures.py's corpus, BYTE_LEVEL_TEXTS
#                                and random byte-level texts
#   pre_tokens.json              per tokenizer.json (llama3, gpt2), the pre-tokens of every text
#                                (pre_tokenizer.pre_tokenize_str): the regex splits on their own, where
#                                a merge table could hide a difference
#   dataset_hashes.txt           FNV-1a hashes (as in make_tokenizer_fixtures.py) of the llama3 ids of
#                                system, prompt, chosen, rejected of every row of the real dataset
# and, for the Llama/Mistral fixtures of make_tokenizer_fixtures.py (run that first),
#   ../sentencepiece_special_tokens.json   AutoTokenizer(text)["input_ids"] (BOS added by
#                                LlamaTokenizerFast's post-processor) of the chatml and json/legacy
#                                variants on the hand-written texts
import json
import os
import random
import shutil
import sys
import tempfile

import tokenizers
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

sys.path.insert(0, os.path.dirname(__file__))
from make_tokenizer_fixtures import (DATASET, HAND_WRITTEN, fnv1a64, load_json_variant, load_variant as load_sentencepiece_variant,  # noqa: E402
                                     random_corpus, space_runs)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(REPO, "tests", "fixtures", "tokenizer", "byte_level")

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Meta-Llama-3.1's first special tokens, in their order (ids follow the pieces, as 128000.. do there).
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
]
VOCAB_SIZE = 1000

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. It's a sentence you've seen before, isn't it? We'll see.
I'm sure they're right: the dog didn't move, and the fox's jump was perfect. THE END. She'd say "WE'RE DONE!"
A tokenizer splits text into pieces; a byte-level BPE never meets a character it cannot spell, because every
byte has a piece of its own. Merges join frequent pairs, one after another, until the vocabulary is full.
Configurable safety tuning trains a model on preference pairs whose system prompt says which answer is wanted:
a harmless assistant refuses, an uncensored one complies. The system prompt selects the behaviour at inference.
You are a helpful assistant. You are a helpful yet harmless assistant that avoids generating illegal content.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 12345 65536 1000000 3.14159 2.71828 -273.15 1e-5 0x1F 0b1010.
Dates and times: 2024-01-01T12:00:00Z, 1999-12-31 23:59:59, 07/04/1776, 12:30pm. Prices: $4.99, €12,50, £100.
Phone +1 (555) 010-9999; version 4.42.4; IP 192.168.0.1; ratio 16:9; score 98.6%.

def tokenize(text: str) -> list[int]:
    ids = []
    for word in text.split():
        if word in vocab:
            ids.append(vocab[word])
        else:
            ids.extend(encode_bytes(word.encode("utf-8")))
    return ids

for (int i = 0; i < n; i++) {
\tif (a[i] != b[i]) { return -1; }
\tsum += a[i] * b[i];
}
SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;
<html><body class="main"><p>Hello &amp; welcome!</p></body></html>
{"key": "value", "list": [1, 2, 3], "nested": {"a": null, "b": true}}
https://example.com/path/to/page?query=1&lang=en#section user.name@example.org

Français : « Ça va ? » — l'été à Paris, où l'on mange des crêpes. Déjà vu, naïve, cœur, façade.
Deutsch: Straße, Größe, Übermut, schön, Mädchen, Fußgänger. Español: ¿Dónde está la estación? ¡Olé! niño, año.
Português: não, coração, informação. Polski: zażółć gęślą jaźń. Čeština: příliš žluťoučký kůň.
Русский: Привет, мир! Как дела? Съешь же ещё этих мягких французских булок. Українська: Ґанок, їжак, є.
Ελληνικά: Γειά σου Κόσμε, καλημέρα. Türkçe: İstanbul, ığdır, şçğüö.
中文：我爱自然语言处理。今天天气很好，我们去公园散步吧。机器学习和深度学习。
日本語：日本語のテキストです。カタカナとひらがな、漢字を混ぜて書きます。東京は大きい都市です。
한국어: 안녕하세요, 세계! 한국어 텍스트를 처리합니다.
العربية: مرحبا بالعالم، كيف حالك؟ اللغة العربية جميلة. עברית: שלום עולם, מה שלומך?
हिन्दी: नमस्ते दुनिया, आप कैसे हैं? ไทย: สวัสดีชาวโลก ภาษาไทย. ქართული: გამარჯობა.
Combining marks: e\u0301 a\u0300 o\u0308 n\u0303 Z\u0351\u0300\u0301 ; precomposed: é à ö ñ.
Emoji: 👍 👍🏽 🤖 🎉 🔥 😀 ❤️ 👨\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 🇫🇷 🇯🇵 — in text 😀 here.
Math: ∀x ∈ ℝ, x² ≥ 0; ∑ᵢ aᵢ = ∫ f(x) dx; π ≈ 3.14; α β γ δ; ½ ¾ ⅓; Ⅻ ①②③.
Whitespace:\tone tab\t\ttwo tabs, double  space,   triple   space,\r\nwindows line\r\n\r\nblank line,
    indented four, \u00a0non-breaking\u00a0space, \u3000ideographic space, trailing spaces   \n\n\n
Punctuation runs: !!! ??? ... --- *** ### @@@ ((( ))) [[[ ]]] {{{ }}} ''' \"\"\" ;;; ::: ,,, ~~~ ``` ___
Contractions: it's IT'S he'll HE'LL we've WE'VE they're THEY'RE I'm I'M she'd SHE'D don't DON'T 'tis.
"""

# Texts aimed at the byte-level pre-tokenizers, on top of make_tokenizer_fixtures.py's corpus.
BYTE_LEVEL_TEXTS = [
    # contractions: Llama 3 matches them case-insensitively (with Unicode case folding: ſ is s),
    # GPT-2 only in lower case
    "'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'rE", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'lL", "'d", "'D",
    "it's", "IT'S", "he'll", "HE'LL", "we've", "they're", "I'm", "she'd", "don't", "DON'T", "'tis", "x'sy",
    "'ſ", "'ſt", "'K", "'ß", "''s", "'''", "' s", " 's", "  's", "\n's", "'s'", "o'clock", "rock 'n' roll",
    "'sss", "'lll", "'dd", "'reve", "l'été", "qu'il", "'1", "'\u00e9", "\u2019s curly", "'\u0301",
    # digit runs of 1 to 7, with neighbours
    "1", "12", "123", "1234", "12345", "123456", "1234567", " 1234567", "a1234567b", "1,234,567.89",
    "٣٤٥٦٧", "１２３４", "½¾", "Ⅻ", "①②③④", "x² y³", "007", "3.14159265", "-12345", "+1 (555) 010-9999",
    "12a34", "a12 b345 c6789",
    # whitespace runs before letters, before punctuation, at the end
    " x", "  x", "   x", "    x", "\tx", "\t\tx", " \tx", "\t x", "x ", "x  ", "x   ", "x\t", "x \t ",
    "a  b", "a   b", "a \t b", "a\u00a0b", "a \u00a0b", "a\u00a0 b", "\u00a0\u00a0x", "\u3000\u3000x", " \u3000x",
    "  .", " .", "   ...", " ,", "a  ,b", "\u2028x", "a\u0085b", "x\u000bx", "x\u000cx", " \u200bx",
    # newlines mixed with spaces and carriage returns
    "\n", "\n\n", "\r", "\r\r", "\r\n", "\n\r", " \n", "\n ", " \n ", "  \n  ", "\n  x", "x\n  ", "x \n\n y",
    "a\r\nb", "a\r\n\r\nb", "a \r\n b", "a\n\n\n\nb", "\t\n\t", " \r \n ", "x\n", "x\n\n", "x\r\n",
    "end.\n", "end!\n\n", "end?\r\n", "...\n\n...", "}\n}\n", ";\n\n", " \n\tx", "\n\u3000x",
    # punctuation and symbol runs
    "!!!", "?!?!", "...", "…", "---", "—", "***", "###", "@@@", "((()))", "[[]]", "{{}}", "<<>>", "\"\"\"",
    "''''", "``` code ```", "==>", "=>", "->", "::", "a::b", "x+=1;", "#!/bin/sh", "a--b", "~/.bashrc",
    " !!", "  !!", "!!\n", "!!\n\nx", " ?\n", "«»", "„“", "¿¡", "§¶†‡", "©®™", "°±×÷", "€£¥$", "#1", "$5",
    # emoji, ZWJ sequences, flags, variation selectors, skin tones
    "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "👩🏽\u200d💻", "🧑\u200d🤝\u200d🧑", "❤️", "❤", "☺️", "✌🏿",
    "🇫🇷🇯🇵🇺🇸", "🇫", "a👍b", " 👍", "👍 ", "👍👍👍", "1️⃣", "#️⃣", "\u200d", "a\u200db", "\ufe0f",
    # combining marks and scripts
    "e\u0301", "e\u0301\u0301\u0301", "\u0301", " \u0301", "a\u0300b", "Z\u0351\u0300\u0301\u0302", "ñ n\u0303",
    "ﬁ", "Ǆ ǅ ǆ", "ǅungla", "İstanbul", "ı", "ß", "ẞ", "Σσς",
    "中文测试", "我爱自然语言处理。", "日本語のテキスト", "한국어", "مرحبا بالعالم", "שלום", "नमस्ते",
    "สวัสดี", "ქართული", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𓀀𓀁", "\U0001F600", "\U0010FFFF", "\ue000", "\u0378",
    "\x00", "a\x00b", "\x7f", "\x1b[0m", "\ufeffbom", "\ufffd",
    # special tokens of both fixtures written in the text
    "<|begin_of_text|>", "<|begin_of_text|>Hello", "Hello<|end_of_text|>", "<|eot_id|><|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat's 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    " <|eot_id|> ", "x<|eot_id|>y", "<|eot_id", "<|eot_id|>>", "<|reserved_special_token_0|>", "<|python_tag|>code",
    "<|endoftext|>", "a<|endoftext|>b", " <|endoftext|> ", "<|endoftext|><|endoftext|>", "<|tool call|>",
    "x <|tool call|>  y", "café", "un café noir", "cafécafé",
    # decode clean-up patterns (transformers' clean_up_tokenization)
    "Hello , world !", "Is it ?", "wait ...", "I can 't", "don 't", "do n't", "I 'm", "he 's", "we 've",
    "they 're", "a ' b", "x ' ' y", "n ' t", " n't", "  .", "a ! ! b", "end .", "' s", "it 's 'ell",
]


# --- Building the tokenizers. ------------------------------------------------------------------------


def train(pre_tokenizer):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TRAINING_TEXT.splitlines(keepends=True), trainer)
    return json.loads(tokenizer.to_str())


def finish(tokenizer_json, special_tokens, other_tokens, post_processor):
    tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json))
    tokenizer.add_special_tokens(special_tokens)  # ids after the pieces, in this order
    tokenizer.add_tokens(other_tokens)
    tokenizer.post_processor = post_processor(tokenizer)
    tokenizer.decoder = decoders.ByteLevel()
    return json.loads(tokenizer.to_str())


def llama3_tokenizer_json():
    trained = train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]))
    trained["model"]["ignore_merges"] = True
    # Pieces that no merge produces: with ignore_merges a pre-token equal to one of them is that one
    # piece; without it, the merges spell it in several pieces (as Llama 3's tiktoken-made merges do).
    vocab = trained["model"]["vocab"]
    for word in [" tokenization", " configurable", "       ", "\n\n\n\n", "!!!", " 123", "ção", " Привет", "中文",
                 "'LL", " 👍"]:
        piece = byte_level_string(word)
        if piece not in vocab:
            vocab[piece] = len(vocab)
    special = [AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL_TOKENS]

    def template(tokenizer):
        bos = "<|begin_of_text|>"
        return processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                          special_tokens=[(bos, tokenizer.token_to_id(bos))])])
    return finish(trained, special, [], template)


def gpt2_tokenizer_json():
    trained = train(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    special = [AddedToken("<|endoftext|>", special=True, normalized=False)]
    others = [AddedToken("<|tool call|>", special=False, normalized=False, rstrip=True),
              AddedToken("café", special=False, normalized=True)]
    return finish(trained, special, others, lambda tokenizer: processors.ByteLevel(trim_offsets=False))


def byte_level_string(text):
    return "".join(piece for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
                   .pre_tokenize_str(text))


def added_tokens_decoder(tokenizer_json):
    return {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in tokenizer_json["added_tokens"]}


def llama3_config(tokenizer_json, clean_up):
    return {
        "added_tokens_decoder": added_tokens_decoder(tokenizer_json),
        "bos_token": "<|begin_of_text|>",
        "clean_up_tokenization_spaces": clean_up,
        "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def gpt2_config(tokenizer_json):
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder(tokenizer_json),
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "model_max_length": 1024,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>",
    }


def write_json(path, obj, compact=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def write_tokenizer_files():
    llama3 = llama3_tokenizer_json()
    gpt2 = gpt2_tokenizer_json()
    write_json(os.path.join(OUT, "llama3", "tokenizer.json"), llama3, compact=True)
    write_json(os.path.join(OUT, "llama3", "tokenizer_config.json"), llama3_config(llama3, True))
    write_json(os.path.join(OUT, "llama3_no_cleanup", "tokenizer_config.json"), llama3_config(llama3, False))
    write_json(os.path.join(OUT, "gpt2", "tokenizer.json"), gpt2, compact=True)
    write_json(os.path.join(OUT, "gpt2", "tokenizer_config.json"), gpt2_config(gpt2))


# --- Variants: how transformers loads each directory. ---------------------------------------------------

VARIANTS = {
    # name: (loader, {file name in the tokenizer directory: path under byte_level/})
    "llama3": ("AutoTokenizer", {"tokenizer.json": "llama3/tokenizer.json",
                                 "tokenizer_config.json": "llama3/tokenizer_config.json"}),
    "llama3_no_cleanup": ("AutoTokenizer", {"tokenizer.json": "llama3/tokenizer.json",
                                            "tokenizer_config.json": "llama3_no_cleanup/tokenizer_config.json"}),
    "llama3_json_only": ("PreTrainedTokenizerFast", {"tokenizer.json": "llama3/tokenizer.json"}),
    "gpt2": ("AutoTokenizer", {"tokenizer.json": "gpt2/tokenizer.json",
                               "tokenizer_config.json": "gpt2/tokenizer_config.json"}),
}
EXPECTED_CLASS = {"llama3": "PreTrainedTokenizerFast", "llama3_no_cleanup": "PreTrainedTokenizerFast",
                  "llama3_json_only": "PreTrainedTokenizerFast", "gpt2": "GPT2TokenizerFast"}


def load_variant(name):
    loader, files = VARIANTS[name]
    if loader == "PreTrainedTokenizerFast":
        return PreTrainedTokenizerFast(tokenizer_file=os.path.join(OUT, files["tokenizer.json"]))
    with tempfile.TemporaryDirectory() as directory:
        for file_name, path in files.items():
            shutil.copyfile(os.path.join(OUT, path), os.path.join(directory, file_name))
        return AutoTokenizer.from_pretrained(directory)


# --- Texts and id sequences. -----------------------------------------------------------------------------


def random_byte_level_texts(count, seed=4321):
    fragments = [
        "hello", "World", " the", "The", "'s", "'S", "'ll", "'VE", "n't", "'", "\"", " ", "  ", "   ", "\t", "\n",
        "\n\n", "\r\n", "\r", ".", ",", "!", "?", "...", "-", "(", ")", "1", "12", "345", "6789", "0", "é", "e\u0301",
        "ñ", "ß", "中", "文", "の", "한", "ж", "ع", "😀", "👍🏾", "\u200d", "👨\u200d👩", "\u00a0", "\u3000", "\u2028",
        "<|eot_id|>", "<|begin_of_text|>", "<|endoftext|>", "<|tool call|>", "café", "ſ", "İ", "½", "٣", "_", "#",
    ]
    rng = random.Random(seed)
    return ["".join(rng.choice(fragments) for _ in range(rng.randint(1, 16))) for _ in range(count)]


def corpus():
    return HAND_WRITTEN + space_runs() + random_corpus(100) + BYTE_LEVEL_TEXTS + random_byte_level_texts(120)


# Byte strings at the edges of UTF-8 decoding (Rust's from_utf8_lossy: one U+FFFD per maximal
# invalid subpart): overlongs, surrogates, past U+10FFFF, bad leads, cut characters.
UTF8_EDGES = [b"\xe0\x80\x80", b"\xe0\xa0\x80", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\x9f\xbf",
              b"\xf0\x80\x80\x80", b"\xf0\x90\x80\x80", b"\xf4\x90\x80\x80", b"\xf4\x8f\xbf\xbf",
              b"\xc0\x80", b"\xc1\xbf", b"\xc2\x80", b"\xf5\x80", b"\xff", b"\x80", b"\xbf\xbf", b"\xe4\xb8",
              b"\xe4\xb8A", b"\xe4A\xb8", b"\xf0\x9f\x98", b"\xf0\x9f\x98x", b"\xf0\x9f\x98\x80",
              b"a\xe4\xb8\xad\xe4", b"\xe4\xe4\xb8\xad", b" \xc3", b"\xc3 .", b"\xc3\xa9\xc3"]


def utf8_edge_sequences(tokenizer):
    """UTF8_EDGES as sequences of single-byte pieces."""
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    stand_in = bytes_to_unicode()
    return [[vocab[stand_in[b]] for b in edge] for edge in UTF8_EDGES]


def random_id_sequences(tokenizer, count, seed=77):
    """Id sequences for decode: single bytes (cut and invalid UTF-8), added tokens, merged pieces, and
    the pieces of transformers' clean-up patterns (" .", " n't", " 's", ...)."""
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    added = sorted(tokenizer.added_tokens_decoder)
    single_bytes = sorted(i for piece, i in vocab.items() if len(piece) == 1)
    merged = sorted(i for piece, i in vocab.items() if len(piece) > 1)
    clean_up = [vocab[p] for p in (byte_level_string(t) for t in
                                   (" ", ".", "?", "!", ",", "'", " '", "n", "t", "'t", "n't", "'s", "s", "'m", "m",
                                    "ve", "'ve", "re", "'re", " n", "  ", "...")) if p in vocab]
    rng = random.Random(seed)
    pools = [single_bytes, added, merged, clean_up, clean_up]
    return [[rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 14))] for _ in range(count)]


# --- Golden data. ------------------------------------------------------------------------------------------


def ignore_merges_differences(texts):
    """How many texts the llama3 tokenizer.json encodes differently once ignore_merges is off."""
    with open(os.path.join(OUT, "llama3", "tokenizer.json"), encoding="utf-8") as f:
        tokenizer_json = json.load(f)
    with_flag = Tokenizer.from_str(json.dumps(tokenizer_json))
    tokenizer_json["model"]["ignore_merges"] = False
    without_flag = Tokenizer.from_str(json.dumps(tokenizer_json))
    return sum(1 for t in texts
               if with_flag.encode(t, add_special_tokens=False).ids != without_flag.encode(t, add_special_tokens=False).ids)


def variant_golden(name, texts):
    tokenizer = load_variant(name)
    assert type(tokenizer).__name__ == EXPECTED_CLASS[name], (name, type(tokenizer))
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    with_special = [tokenizer(t)["input_ids"] for t in texts]
    random_ids = utf8_edge_sequences(tokenizer) + random_id_sequences(tokenizer, 150)
    loader, files = VARIANTS[name]
    return {
        "loader": loader,
        "files": files,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "bos_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else -1,
        "eos_id": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else -1,
        "pad_id": next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), -1),
        "added_special_ids": sorted(i for i, t in tokenizer.added_tokens_decoder.items() if t.special),
        "clean_up_tokenization_spaces": tokenizer.clean_up_tokenization_spaces,
        "ids": ids,
        "ids_with_special_tokens": with_special,
        "random_ids": random_ids,
        "decoded": [tokenizer.decode(s) for s in ids + random_ids],
        "decoded_skip_special": [tokenizer.decode(s, skip_special_tokens=True) for s in ids + random_ids],
    }


def pre_tokens(texts):
    result = {}
    for name in ("llama3", "gpt2"):
        pre_tokenizer = load_variant(name).backend_tokenizer.pre_tokenizer
        result[name] = [[piece for piece, _ in pre_tokenizer.pre_tokenize_str(t)] for t in texts]
    return result


def dataset_hashes(tokenizer):
    if not os.path.exists(DATASET):
        print(f"dataset {DATASET} absent: byte_level/dataset_hashes.txt not regenerated", file=sys.stderr)
        return
    with open(DATASET, encoding="utf-8") as f:
        rows = json.load(f)
    lines = ["# llama3 ids of: system prompt chosen rejected"]
    for row in rows:
        texts = [row[k] for k in ("system", "prompt", "chosen", "rejected")]
        lines.append(" ".join(fnv1a64(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts))
    with open(os.path.join(OUT, "dataset_hashes.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def sentencepiece_special_tokens():
    golden = {"texts": HAND_WRITTEN, "variants": {}}
    for name, tokenizer in (("chatml", load_sentencepiece_variant("chatml")), ("json/legacy", load_json_variant("legacy"))):
        assert type(tokenizer).__name__ == "LlamaTokenizerFast", type(tokenizer)
        golden["variants"][name] = [tokenizer(t)["input_ids"] for t in HAND_WRITTEN]
    write_json(os.path.join(OUT, "..", "sentencepiece_special_tokens.json"), golden, compact=True)


def main():
    write_tokenizer_files()
    texts = corpus()
    assert len(set(texts)) > 300
    write_json(os.path.join(OUT, "texts.json"), {"transformers": transformers.__version__,
                                                 "tokenizers": tokenizers.__version__, "texts": texts}, compact=True)
    differences = ignore_merges_differences(texts)
    print(f"llama3: ignore_merges changes the ids of {differences} of {len(texts)} texts", file=sys.stderr)
    assert differences > 5
    for name in VARIANTS:
        golden = variant_golden(name, texts)
        if name == "llama3":
            golden["texts_where_ignore_merges_matters"] = differences
        write_json(os.path.join(OUT, f"golden_{name}.json"), golden, compact=True)
    write_json(os.path.join(OUT, "pre_tokens.json"), pre_tokens(texts), compact=True)
    dataset_hashes(load_variant("llama3"))
    sentencepiece_special_tokens()


if __name__ == "__main__":
    main()
