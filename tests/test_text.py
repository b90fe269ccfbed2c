import pytest

from spade_tts.text import TextError, check_english, normalize_for_wer


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("Hello, World!", "hello world"),
        ("  Many   spaces\tand\nlines ", "many spaces and lines"),
        ("Don't stop; it's fine.", "don't stop it's fine"),
        ("Don\u2019t stop, it\u2018s fine", "don't stop it's fine"),  # curly apostrophes
        ("The dogs' bowls", "the dogs bowls"),  # possessive plural: edge apostrophe dropped
        ("'Quoted,' she said.", "quoted she said"),
        ("\u201cReally?\u201d \u2014 yes\u2026", "really yes"),
        ("A well-known e-mail", "a well known e mail"),
        ("50% of A/B tests", "50 of a b tests"),
        ("\uff28\uff49 there", "hi there"),  # full-width letters fold (NFKC)
        ("?!...", ""),
    ],
)
def test_normalize_for_wer(raw, norm):
    assert normalize_for_wer(raw) == norm


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_raises(text):
    with pytest.raises(TextError, match="is empty"):
        check_english(text)


def test_no_letters_raises():
    with pytest.raises(TextError, match="has no letters: spade-tts's built-in model reads English only"):
        check_english("123 456 !!")


@pytest.mark.parametrize(
    "text, script",
    [
        ("\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002", "CJK"),
        ("\u041f\u0440\u0438\u0432\u0435\u0442, \u043a\u0430\u043a \u0434\u0435\u043b\u0430?", "Cyrillic"),
        ("\u0645\u0631\u062d\u0628\u0627 \u0628\u0643\u0645", "Arabic"),
        ("Hello \u4e16\u754c", "CJK"),  # 2 of 7 letters: over the 20 % limit
    ],
)
def test_non_english_raises(text, script):
    with pytest.raises(TextError, match=rf"target text .* is not English .*{script}\): spade-tts's built-in model reads English only; translate") as e:
        check_english(text, what="target text")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text",
    ["The quick brown fox jumps over the lazy dog.", "It's 5 o'clock.", "A caf\u00e9 in Z\u00fcrich", "Hello \u4e16 wide world"],
)
def test_english_passes(text):
    check_english(text)
