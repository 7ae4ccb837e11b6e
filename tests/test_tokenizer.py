"""Tokenizer: exactly one <|endoftext|>, the instruction format, truncation that keeps the pooled token."""

import json

import pytest

from conftest import write_tokenizer
from mlx_qwen3_embed.tokenizer import Tokenizer, query_prompt, read_prompts


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same vocabulary twice: a current hub tokenizer (appends the EOS) and an old one (does not)."""
    appending, plain = tmp_path_factory.mktemp("appending"), tmp_path_factory.mktemp("plain")
    write_tokenizer(appending, append_eos=True)
    write_tokenizer(plain, append_eos=False)
    return appending, plain


def test_both_tokenizer_variants_give_the_same_ids_ending_in_one_eos(folders, texts):
    appending, plain = (Tokenizer(f) for f in folders)
    a, b = appending.encode(texts, max_length=512), plain.encode(texts, max_length=512)
    assert a == b
    for ids in a:
        assert ids[-1] == appending.eos_id
        assert appending.eos_id not in ids[:-1]


def test_ids_equal_transformers_tokenizer_of_the_hub_layout(folders, texts):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(folders[0]))
    assert Tokenizer(folders[0]).encode(texts, max_length=512) == [reference(t)["input_ids"] for t in texts]


def test_text_ending_in_the_eos_token_still_ends_in_exactly_one(folders):
    tokenizer = Tokenizer(folders[0])
    ids = tokenizer.encode(["hello<|endoftext|><|endoftext|>"], max_length=512)[0]
    assert ids == tokenizer.encode(["hello"], max_length=512)[0]


def test_truncation_keeps_the_final_eos(folders, texts):
    tokenizer = Tokenizer(folders[1])
    full = tokenizer.encode(texts[-1:], max_length=512)[0]
    cut = tokenizer.encode(texts[-1:], max_length=8)[0]
    assert len(full) > 8
    assert cut == full[:7] + [tokenizer.eos_id]


def test_truncate_false_names_the_input_and_its_token_count(folders, texts):
    tokenizer = Tokenizer(folders[0])
    n = len(tokenizer.encode(texts[-1:], max_length=512)[0])
    assert len(texts[-1]) <= 20 * tokenizer.chars_per_token < n * tokenizer.chars_per_token  # tokenized, then refused
    with pytest.raises(ValueError, match=f"input 1 has {n} tokens, more than max_length 20"):
        tokenizer.encode(["short", texts[-1]], max_length=20, truncate=False)


def test_query_prompt_has_no_space_after_query():
    assert query_prompt("Find it") == "Instruct: Find it\nQuery:"


def test_prompts_come_from_config_sentence_transformers(tmp_path):
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "Q: ", "clustering": "C: "}}))
    prompts = read_prompts(tmp_path)
    assert prompts["query"] == "Q: " and prompts["clustering"] == "C: " and prompts["document"] == ""


def test_prompts_default_to_the_retrieval_instruction_without_the_file(tmp_path):
    assert read_prompts(tmp_path)["query"] == query_prompt(
        "Given a web search query, retrieve relevant passages that answer the query")


def test_tokenizer_without_endoftext_is_refused(tmp_path):
    from tokenizers import Tokenizer as HF, models

    HF(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="no <\\|endoftext\\|> token"):
        Tokenizer(tmp_path)


def test_missing_tokenizer_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json in"):
        Tokenizer(tmp_path)


def test_lone_surrogate_raises_unicode_error_naming_the_input(folders):
    with pytest.raises(UnicodeError, match="input 1 holds a lone UTF-16 surrogate U\\+D800 at character 2"):
        Tokenizer(folders[0]).encode(["fine", "ab\ud800cd"], max_length=64)


def test_text_surely_over_max_length_is_refused_by_its_characters(folders):
    tokenizer = Tokenizer(folders[0])
    text = "word " * (8 * tokenizer.chars_per_token)  # more characters than 8 tokens can hold
    with pytest.raises(ValueError, match=f"input 0 has {len(text)} characters: at least .* tokens, more than max_length 8"):
        tokenizer.encode([text], max_length=8, truncate=False)


def test_truncation_reads_a_bounded_prefix_with_the_same_tokens(folders, texts):
    """Only the first 2 x max_length x chars_per_token characters are tokenized; the kept ids equal those of the
    whole text, as HF tokenizers' own truncation gives them."""
    from tokenizers import Tokenizer as HFTokenizer

    tokenizer = Tokenizer(folders[0])
    text = " ".join(texts) * 40
    assert len(text) > 2 * 16 * tokenizer.chars_per_token
    whole = HFTokenizer.from_file(str(folders[0] / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert tokenizer.encode([text], max_length=16) == [whole[:15] + [tokenizer.eos_id]]
