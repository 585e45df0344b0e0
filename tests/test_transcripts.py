import pytest

from annotation.transcripts import TranscriptError, parse_transcript, split_preference_pair


def test_a_multi_turn_hh_pair_splits_into_the_shared_prefix_and_two_responses():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: Why did the chicken..."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: No."
    prefix, c, r = split_preference_pair(chosen, rejected)
    assert prefix == [("user", "Hi"), ("assistant", "Hello!"), ("user", "A joke?")]
    assert (c, r) == ("Why did the chicken...", "No.")


def test_text_that_is_not_a_transcript_is_refused():
    with pytest.raises(TranscriptError):
        parse_transcript("Hi there")


def test_pairs_with_different_histories_are_refused():
    with pytest.raises(TranscriptError, match="same dialogue"):
        split_preference_pair("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: B\n\nAssistant: y")
