"""The Responses API as a translation onto chat completions.

A ``POST /v1/responses`` request becomes a :class:`ChatCompletionRequest` (what infermesh
cannot honour is refused, by name, never dropped); the chat answer becomes a ``response``
object, and a chat stream becomes the Responses stream events. Nothing is stored: a
request carries its whole conversation.
"""

from infermesh.chat.responses.answer import envelope, finished, response_from, response_id_of
from infermesh.chat.responses.request import Translation, translate
from infermesh.chat.responses.stream import ResponseStream

__all__ = [
    "ResponseStream",
    "Translation",
    "envelope",
    "finished",
    "response_from",
    "response_id_of",
    "translate",
]
