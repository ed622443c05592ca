"""Chat templates from model files and users render as llama.cpp-style formatters render them."""

from __future__ import annotations

from localcascade.engine.template import ChatTemplate

# Stops at the first system message and skips empty ones: {% break %} and {% continue %}
# (Jinja's loopcontrols) appear in published templates.
LOOPING = (
    "{% for m in messages %}{% if m.content == '' %}{% continue %}{% endif %}"
    "<{{ m.role }}>{{ m.content }}{% if m.role == 'stop-here' %}{% break %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_a_template_with_break_and_continue_renders():
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": ""},
                {"role": "stop-here", "content": "b"}, {"role": "user", "content": "never"}]
    text = ChatTemplate(LOOPING).render(messages, add_generation_prompt=True, enable_thinking=False)
    assert text == "<user>a<stop-here>b<assistant>"
