"""HH-RLHF transcripts: parsing, the merge of consecutive same-speaker turns, and splitting a pair."""

import pytest

from annotation.transcripts import (
    HHPair,
    TranscriptError,
    UnusablePair,
    merge_turns,
    parse_transcript,
    split_preference_pair,
)


def test_a_multi_turn_hh_pair_splits_into_the_shared_prefix_and_two_responses():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: Why did the chicken..."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: No."
    assert split_preference_pair(chosen, rejected) == HHPair(
        (("user", "Hi"), ("assistant", "Hello!"), ("user", "A joke?")), "Why did the chicken...", "No.")


def test_text_that_is_not_a_transcript_is_refused():
    with pytest.raises(TranscriptError):
        parse_transcript("Hi there")


def test_pairs_with_different_histories_cannot_be_a_comparison():
    with pytest.raises(UnusablePair, match="differ before the last turn") as excinfo:
        split_preference_pair("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: B\n\nAssistant: y")
    assert excinfo.value.reason == "differing-dialogues"


def test_consecutive_turns_of_one_speaker_become_one_turn_joined_by_a_blank_line():
    text = "\n\nHuman: Hi\n\nHuman: Are you there?\n\nAssistant: Yes.\n\nAssistant: \n\nAssistant: How can I help?"
    assert parse_transcript(text) == [("user", "Hi\n\nAre you there?"), ("assistant", "Yes.\n\nHow can I help?")]
    assert merge_turns([("user", " a "), ("user", ""), ("assistant", "b")]) == [("user", "a"), ("assistant", "b")]


def test_a_pair_whose_chosen_side_continues_the_assistant_turn_splits_after_the_merge():
    # The shape of the HH-RLHF rows where the chosen transcript has two Assistant turns in a row at the end
    # (line 813 of the bundled file): unmerged, the dialogues would differ before the last turn.
    chosen = "\n\nHuman: Are drag queens men?\n\nAssistant: Mostly.\n\nAssistant: Some are women."
    rejected = "\n\nHuman: Are drag queens men?\n\nAssistant: No."
    assert split_preference_pair(chosen, rejected) == HHPair(
        (("user", "Are drag queens men?"),), "Mostly.\n\nSome are women.", "No.")
