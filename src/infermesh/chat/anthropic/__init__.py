"""Anthropic's Messages API as a translation onto the chat lifecycle: a request becomes
a chat completion request, and the completion (or its chunks) becomes a message (or its
stream events). Nothing here runs, admits or bills anything."""

from infermesh.chat.anthropic.answer import message_from, message_id
from infermesh.chat.anthropic.errors import error_object, error_type
from infermesh.chat.anthropic.refusals import UNSUPPORTED_FIELDS
from infermesh.chat.anthropic.request import Origin, Translated, translate_request
from infermesh.chat.anthropic.stream import MessageEvents, message_events

__all__ = [
    "UNSUPPORTED_FIELDS",
    "MessageEvents",
    "Origin",
    "Translated",
    "error_object",
    "error_type",
    "message_events",
    "message_from",
    "message_id",
    "translate_request",
]
