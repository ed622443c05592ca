"""Tool-call XML to calls, and answer text to what a client may see (pure, fast)."""

from localcascade.engine.tool_calls import ToolCall, parse_tool_calls
from localcascade.server.reply import AnswerFilter

CALL = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n<parameter=opts>\n{\"units\": \"C\", \"hourly\": true}\n</parameter>\n"
        "</function>\n</tool_call>")


def test_parameters_are_json_when_they_parse_else_text():
    text, calls = parse_tool_calls("Let me look.\n" + CALL)
    assert text == "Let me look."
    assert calls == [ToolCall("get_weather", {"city": "New York", "days": 3, "opts": {"units": "C", "hourly": True}})]


def test_several_calls_and_multiline_values():
    second = "<tool_call>\n<function=write>\n<parameter=text>\nline one\nline two\n</parameter>\n</function>\n</tool_call>"
    text, calls = parse_tool_calls(CALL + "\n" + second)
    assert text == ""
    assert [c.name for c in calls] == ["get_weather", "write"]
    assert calls[1].arguments == {"text": "line one\nline two"}


def test_text_without_a_well_formed_call_is_left_alone():
    for text in ("no calls here", "<tool_call>just words</tool_call>", "<tool_call>\n<function=x>\n"):
        assert parse_tool_calls(text) == (text, [])


def feed_all(f: AnswerFilter, pieces) -> str:
    return "".join(f.feed(p) for p in pieces)


def test_a_tool_call_split_over_pieces_never_reaches_the_content():
    f = AnswerFilter(parse_tools=True)
    pieces = ["Checking", " now. <tool", "_call>\n<function=get_weather>", "\n<parameter=city>\nParis\n</parameter>\n",
              "</function>\n</tool_call>"]
    shown = feed_all(f, pieces)
    rest, calls = f.finish()
    assert shown + rest == "Checking now. "
    assert f.content == "Checking now."
    assert calls == [ToolCall("get_weather", {"city": "Paris"})]


def test_text_that_only_looks_like_a_marker_start_is_released_at_the_end():
    f = AnswerFilter(parse_tools=True, stop=("END",))
    shown = feed_all(f, ["a < b and E"])
    assert shown == "a < b and "          # "E" might begin "END"
    rest, calls = f.finish()
    assert shown + rest == "a < b and E" and calls == []


def test_a_stop_string_across_pieces_ends_the_content_before_it():
    f = AnswerFilter(stop=("###",))
    shown = feed_all(f, ["one two #", "## three"])
    assert shown == "one two " and f.stopped
    assert f.finish() == ("", [])
    assert f.feed("more") == ""
